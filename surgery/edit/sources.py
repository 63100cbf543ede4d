"""A Source per container: what a verb needs from a checkpoint without knowing its container.

- `tensors()`: every tensor with its place (shard name or part index), in the source's order.
- `container`, `arch`: the keys into model/names (tensor names) and model/keys (GGUF metadata).
- `dims()`: the model's sizes named as in a Hugging Face config (num_hidden_layers, hidden_size,
  intermediate_size, num_attention_heads, num_key_value_heads, head_dim, num_experts ...), from config.json or
  from the GGUF metadata.
- `n_layers()`: the decoder layers (multi-token-prediction layers stored after them not counted).
- metadata patches for a verb: `layer_metadata(kept)` and `size_metadata(sizes, dims, heads_cut)` (a Metadata).
- `stored_record(file, key)`: a record a verb stored in this output (a file beside a folder's tensors, a key in
  a GGUF file's metadata), for `surgery verify`.
- `finish(ops, metadata, record_name)`: the fields of the container's edit (shards and files, or parts and
  key-values) from tensor ops `TensorOp(place, tensor, new_name, rows, cols)`, a dropped tensor having no op.

The verbs (drop_layers, prune) decide in these terms only; the differences between containers live here, in
formats/ and in model/.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.dtypes import columns_cuttable
from surgery.edit.actions import ShardPlan, TensorAction, other_files
from surgery.edit.gguf_edit import GgufAction, open_gguf
from surgery.errors import CheckpointError, InputError
from surgery.formats.gguf import ARRAY, UINT32, GgufFile, KeyValue
from surgery.formats.hf_folder import CONFIG, NATIVE_CONFIG, Checkpoint, ShardIndex, dump_json
from surgery.model.config_defaults import SIZE_KEYS, ensure_node, size, text_view
from surgery.model.config_keys import ConfigPatch
from surgery.model.keys import LLM, Attention, General, Split, arch_key
from surgery.model.layer_config import patch_layer_config
from surgery.model.names import FOLDER, GGUF, LAYER_EXAMPLES, gguf_block, layer_name


@dataclass(frozen=True, slots=True)
class TensorOp:
    """One output tensor: its source tensor and place, its name, the kept rows (outermost axis) and columns."""

    place: object  # shard name (folder) or part index (GGUF)
    tensor: object  # formats TensorEntry or GgufTensor
    new_name: str
    rows: np.ndarray | None = field(default=None, compare=False)
    cols: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Metadata:
    """A verb's metadata changes: rewritten files and config patches (folders) or each part's key-values (GGUF)."""

    files: dict = field(default_factory=dict)
    patches: tuple = ()
    kvs: tuple = ()
    notes: tuple[str, ...] = ()


def open_source(path: Path):
    """The Source of a folder or a GGUF file (split or not)."""
    from surgery.formats.paths import is_gguf

    return GgufSource(tuple(open_gguf(path))) if is_gguf(path) else FolderSource(Checkpoint.open(path))


def new_shape(op: TensorOp) -> tuple[int, ...]:
    """The output shape (numpy order) of an op; its columns checked cuttable."""
    shape = list(op.tensor.shape)
    if op.rows is not None:
        shape[0] = len(op.rows)
    if op.cols is not None:
        if not columns_cuttable(getattr(op.tensor, "ggml_type", op.tensor.dtype)):  # a GGUF type, or a dtype
            raise InputError(f"{op.tensor.path.name}: cutting columns of '{op.tensor.name}' ({op.tensor.dtype}) would "
                             "cut inside its quantized blocks; prune the unquantized model, then quantize")
        if len(shape) != 2:
            raise CheckpointError(f"{op.tensor.path.name}: '{op.tensor.name}' has shape {list(op.tensor.shape)}; "
                                  "columns can only be cut from a matrix")
        shape[1] = len(op.cols)
    return tuple(shape)


# ---- folders ------------------------------------------------------------------------------------------------


class FolderSource:
    container = FOLDER
    merged_experts = False  # each expert's tensors stored apart (mlp.experts.N.*)

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.path = checkpoint.root
        config = checkpoint.configs.get(CONFIG) or {}
        self.arch = str(text_view(config)[1].get("model_type", "")) if config else ""

    @property
    def name(self) -> str:
        return self.path.name

    def tensors(self) -> list[tuple[str, object]]:
        return [(shard.path.name, entry) for shard in self.checkpoint.shards for entry in shard.entries]

    def n_layers(self) -> int:
        if CONFIG in self.checkpoint.configs:
            path, view = text_view(self.checkpoint.configs[CONFIG])
            return size(view, "num_hidden_layers", CONFIG, "".join(f"{key}." for key in path))
        n_layers = self.checkpoint.configs[NATIVE_CONFIG].get("n_layers")
        if type(n_layers) is not int or n_layers < 1:
            raise CheckpointError(f"{self.name}: {NATIVE_CONFIG} has no layer count (n_layers is {n_layers!r}, "
                                  "not a positive integer)")
        return n_layers

    def dims(self) -> dict:
        """The text config with every size a cut reads, from the config or its family's defaults (refused when
        neither settles it)."""
        if CONFIG not in self.checkpoint.configs:
            raise CheckpointError(f"{self.name}: prune needs config.json")
        config = self.checkpoint.configs[CONFIG]
        if "quantization_config" in config:
            raise CheckpointError(f"{self.name}: a quantized checkpoint "
                                  f"({config['quantization_config'].get('quant_method', '?')}): its packed weights "
                                  "cannot be cut; prune before quantizing")
        path, text = text_view(config)
        prefix = "".join(f"{key}." for key in path)
        text = {**text, **{key: size(text, key, CONFIG, prefix) for key in SIZE_KEYS if key != "vocab_size"
                           and (key != "intermediate_size" or key in text)}}
        text.setdefault("num_key_value_heads", text["num_attention_heads"])
        text["head_dim"] = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        return text

    def n_blocks(self) -> int:
        return self.n_layers()

    def stored_record(self, file_name: str, key: str) -> str | None:
        """A surgery record stored in this output: the file beside the tensors."""
        path = self.path / file_name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def layer_metadata(self, kept: list[int]) -> Metadata:
        """The configs after keeping the decoder layers `kept`."""
        files, patches, notes = {}, [], []
        for name, config in self.checkpoint.configs.items():
            if name == NATIVE_CONFIG:
                new_config = {**config, "n_layers": len(kept)}
                patches.append(ConfigPatch(name, "n_layers", config.get("n_layers"), len(kept)))
            else:
                new_config, config_patches, config_notes = patch_layer_config(name, config, kept)
                patches += config_patches
                notes += config_notes
            files[name] = dump_json(new_config)
        return Metadata(files, tuple(patches), notes=tuple(notes))

    def size_metadata(self, sizes: dict, dims: dict, heads_cut: bool) -> Metadata:
        """config.json after a cut to `sizes` (config keys -> new values)."""
        config = self.checkpoint.configs[CONFIG]
        path, _ = text_view(config)
        prefix = "".join(f"{key}." for key in path)
        new_config = copy.deepcopy(config)
        node = ensure_node(new_config, path)
        written = dict(sizes)
        if heads_cut:  # a derived kv-head count (= the old head count) must not follow the new one
            written.setdefault("num_key_value_heads", dims["num_key_value_heads"])
        patches = []
        for key, value in written.items():
            if node.get(key) != value:
                patches.append(ConfigPatch(CONFIG, prefix + key, node.get(key), value))
                node[key] = value
        notes = []
        if sizes.get("hidden_size") is not None and dims.get("model_type", "").startswith("gemma"):
            notes.append("gemma scales embeddings by sqrt(hidden_size), which now uses the new hidden_size")
        return Metadata({CONFIG: dump_json(new_config)}, tuple(patches), notes=tuple(notes))

    def finish(self, ops: list[TensorOp], metadata: Metadata, record_name: str) -> dict:
        """The fields of a FolderEdit: shards (a shard left with no tensor is not written: noted), the indexes
        listing the shards written, the files rewritten, copied and left out, the config patches, the notes."""
        by_shard: dict[str, list[TensorOp]] = {}
        for op in ops:
            by_shard.setdefault(op.place, []).append(op)
        shards, notes = [], []
        for shard in self.checkpoint.shards:
            shard_ops = by_shard.get(shard.path.name, [])
            if not shard_ops:
                notes.append(f"{shard.path.name} held only removed tensors: not written")
                continue
            actions = tuple(_folder_action(op) for op in shard_ops)
            rewritten = len(actions) != len(shard.entries) or any(
                a.source is not None or a.action != "copy" for a in actions)
            shards.append(ShardPlan(shard.path.name, shard.metadata, actions, rewritten))
        kept_shards = {s.name for s in shards}
        indexes = tuple(ShardIndex(i.name, i.metadata, tuple(n for n in i.shards if n in kept_shards))
                        for i in self.checkpoint.indexes)
        copied, skipped = other_files(self.checkpoint, metadata.files, record_name, vocabulary_changes=False)
        return dict(src=self.path, shards=tuple(shards), indexes=indexes, files=metadata.files, copied=copied,
                    skipped=skipped, config_patches=metadata.patches, notes=tuple(notes) + metadata.notes)


def _folder_action(op: TensorOp) -> TensorAction:
    entry = op.tensor
    source = entry.name if op.new_name != entry.name else None
    if op.rows is None and op.cols is None:
        return TensorAction(op.new_name, op.place, "copy", entry.dtype, entry.shape, entry.shape, None, None, source,
                            entry=entry)
    if not columns_cuttable(entry.dtype):
        raise CheckpointError(f"{op.place}: '{entry.name}' has {entry.dtype}, a packed dtype: a slice would cut "
                              "inside a byte")
    return TensorAction(op.new_name, op.place, "take", entry.dtype, entry.shape, new_shape(op), None, None, source,
                        op.rows, op.cols, entry=entry)


# ---- GGUF files ---------------------------------------------------------------------------------------------


class GgufSource:
    container = GGUF
    merged_experts = True  # ffn_*_exps: every expert of a layer in one tensor

    def __init__(self, parts: tuple[GgufFile, ...]) -> None:
        self.parts = parts
        self.path = parts[0].path
        arch = parts[0].get(General.ARCHITECTURE)
        if not arch:
            raise CheckpointError(f"{self.path.name}: no {General.ARCHITECTURE} in its metadata")
        self.arch = str(arch)

    @property
    def name(self) -> str:
        return self.path.name

    def key(self, template: str) -> str:
        return arch_key(template, self.arch)

    def tensors(self) -> list[tuple[int, object]]:
        return [(index, tensor) for index, part in enumerate(self.parts) for tensor in part.tensors]

    def stored_record(self, file_name: str, key: str) -> str | None:
        """A surgery record stored in this output: the key in its first part's metadata."""
        value = self.parts[0].get(key)
        return None if value is None else str(value)

    def n_blocks(self) -> int:
        """Every block the tensors hold: the decoder layers, then any multi-token-prediction blocks."""
        first, count_key = self.parts[0], self.key(LLM.BLOCK_COUNT)
        count = first.integer(count_key)
        if count is None:
            raise CheckpointError(f"{first.path.name}: no {count_key} in its metadata")
        return count

    def n_layers(self) -> int:
        """The decoder layers: block_count without the multi-token-prediction blocks stored after them. Both counts
        must be integers, and block_count must name the blocks the tensors hold (`blk.0` .. `blk.{n-1}`)."""
        first, count_key, nextn_key = self.parts[0], self.key(LLM.BLOCK_COUNT), self.key(LLM.NEXTN_PREDICT_LAYERS)
        count = self.n_blocks()
        nextn = first.integer(nextn_key) or 0
        blocks = {layer.index for _, t in self.tensors() if (layer := layer_name(t.name, GGUF))}
        if count != (max(blocks) + 1 if blocks else 0) or not 0 <= nextn <= count:
            raise CheckpointError(f"{first.path.name}: {count_key} is {count}"
                                  f"{f' ({nextn_key} {nextn})' if nextn else ''}, but the tensors hold {len(blocks)} "
                                  "blocks" + (f" ({gguf_block(min(blocks))} to {gguf_block(max(blocks))})"
                                              if blocks else ""))
        return count - nextn

    def dims(self) -> dict:
        """The sizes a cut needs, named as in a Hugging Face config."""
        first = self.parts[0]
        n_heads, hidden = first.integer(self.key(Attention.HEAD_COUNT)), first.integer(self.key(LLM.EMBEDDING_LENGTH))
        if not n_heads or not hidden:
            raise CheckpointError(f"{first.path.name}: no {self.key(Attention.HEAD_COUNT)} or "
                                  f"{self.key(LLM.EMBEDDING_LENGTH)} in its metadata")
        dims = {"model_type": self.arch, "num_hidden_layers": first.integer(self.key(LLM.BLOCK_COUNT)),
                "hidden_size": hidden, "intermediate_size": first.integer(self.key(LLM.FEED_FORWARD_LENGTH)),
                "num_attention_heads": n_heads,
                "num_key_value_heads": first.integer(self.key(Attention.HEAD_COUNT_KV)) or n_heads,
                "head_dim": first.integer(self.key(Attention.KEY_LENGTH)) or hidden // n_heads}
        if first.integer(self.key(LLM.EXPERT_COUNT)):
            dims["num_experts"] = first.integer(self.key(LLM.EXPERT_COUNT))
            dims["num_experts_per_tok"] = first.integer(self.key(LLM.EXPERT_USED_COUNT)) or 1
        return dims

    def layer_metadata(self, kept: list[int]) -> Metadata:
        """Each part's key-values after keeping the decoder layers `kept`: block_count, the dense-prefix count,
        every per-block array sliced; multi-token-prediction blocks move with the kept ones."""
        n_layers, n_blocks = self.n_layers(), self.n_blocks()
        blocks = kept + list(range(n_layers, n_blocks))
        notes, kvs = [], []
        for index, part in enumerate(self.parts):
            part_kvs = []
            for kv in part.kvs.values():
                kv = KeyValue(kv.key, kv.type, kv.value, kv.subtype)
                if kv.key == self.key(LLM.BLOCK_COUNT):
                    kv.value = len(blocks)
                elif kv.key == self.key(LLM.LEADING_DENSE_BLOCK_COUNT):
                    kv.value = sum(1 for i in kept if i < int(kv.value))
                elif kv.key.startswith(self.key(LLM.PREFIX)) and kv.type == ARRAY and len(kv.value) == n_blocks:
                    kv.value = [kv.value[i] for i in blocks] if isinstance(kv.value, list) else kv.value[blocks]
                    if index == 0:
                        notes.append(f"{kv.key}: one entry per block, sliced")
                part_kvs.append(kv)
            kvs.append(tuple(part_kvs))
        return Metadata(kvs=tuple(kvs), notes=tuple(notes))

    def size_metadata(self, sizes: dict, dims: dict, heads_cut: bool) -> Metadata:
        """Each part's key-values after a cut to `sizes`: the sizes (scalars or per-layer arrays), and the
        key/value lengths written out when heads or hidden channels are cut (llama.cpp otherwise derives them as
        n_embd / n_head)."""
        values = {self.key(LLM.EMBEDDING_LENGTH): sizes.get("hidden_size"),
                  self.key(LLM.FEED_FORWARD_LENGTH): sizes.get("intermediate_size"),
                  self.key(Attention.HEAD_COUNT): sizes.get("num_attention_heads"),
                  self.key(LLM.EXPERT_COUNT): sizes.get("num_experts")}
        kvs = []
        for kv in self.parts[0].kvs.values():
            kv = KeyValue(kv.key, kv.type, kv.value, kv.subtype)
            if values.get(kv.key) is not None:
                kv.value = (np.full(len(kv.value), values[kv.key], kv.value.dtype) if kv.type == ARRAY
                            else values[kv.key])
            kvs.append(kv)
        if "head_dim" in sizes:
            present = {kv.key for kv in kvs}
            kvs += [KeyValue(self.key(key), UINT32, sizes["head_dim"]) for key in (Attention.KEY_LENGTH,
                                                                                 Attention.VALUE_LENGTH)
                    if self.key(key) not in present]
        return Metadata(kvs=(tuple(kvs), *(tuple(part.kvs.values()) for part in self.parts[1:])))

    def finish(self, ops: list[TensorOp], metadata: Metadata, record_name: str = "") -> dict:
        """The fields of a GGUF plan: one action per op, each part's key-values (the tensor count of a split
        model recounted), the notes."""
        actions = []
        for op in ops:
            tensor = op.tensor
            actions.append(GgufAction(op.place, tensor, tuple(reversed(new_shape(op))), None,
                                      new_name=op.new_name if op.new_name != tensor.name else None,
                                      rows=op.rows, cols=op.cols))
        kvs = tuple(tuple(KeyValue(kv.key, kv.type, len(actions), kv.subtype) if kv.key == Split.TENSORS else kv
                          for kv in part_kvs) for part_kvs in metadata.kvs)
        return dict(src=self.path, parts=self.parts, actions=tuple(actions), kvs=kvs, notes=metadata.notes)


def missing_layer(source, seen: set[int], n_blocks: int) -> None:
    """Refuse a source whose config counts more layers than its tensors hold."""
    if not seen:
        raise CheckpointError(f"{source.name}: no decoder layer tensors found ({LAYER_EXAMPLES[source.container]} "
                              "...); this architecture is not recognised")
    missing = sorted(set(range(n_blocks)) - seen)
    if missing:
        if source.container == GGUF:
            raise CheckpointError(f"{source.name}: {source.key(LLM.BLOCK_COUNT)} is {n_blocks} but no tensor of "
                                  f"{gguf_block(missing[0])}")
        raise CheckpointError(f"{source.name}: the config has {n_blocks} layers but no tensor of layer {missing[0]}")
