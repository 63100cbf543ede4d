"""drop-layers for a GGUF file: `blk.{i}.*` renamed to the rank of i among the kept layers, `{arch}.block_count`
patched, every per-layer metadata array (one entry per block: head counts, feed-forward lengths, sliding-window
patterns ...) sliced, `{arch}.leading_dense_block_count` recomputed; multi-token-prediction blocks, stored after
the decoder blocks (`{arch}.nextn_predict_layers`), move with them. Tensor bytes are copied unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from surgery.edit.compare import edge_bytes
from surgery.errors import CheckpointError, VerifyError
from surgery.formats.gguf import (
    ARRAY,
    SPLIT_TENSORS,
    GgufFile,
    KeyValue,
    read_gguf,
)
from surgery.verbs.vocab_gguf import GgufAction, GgufEdit

BLOCK = re.compile(r"^blk\.(?P<index>\d+)\.(?P<rest>.+)$")
RECORD_KEY = "surgery.drop_layers_record"


def _arch(gguf: GgufFile) -> str:
    arch = gguf.get("general.architecture")
    if not arch:
        raise CheckpointError(f"{gguf.path.name}: no general.architecture in its metadata")
    return str(arch)


def gguf_block_count(gguf: GgufFile, parts: list[GgufFile] | None = None) -> int:
    """The decoder layers: block_count without the multi-token-prediction blocks stored after them. Both counts
    must be integers, and block_count must name the blocks the tensors hold (`blk.0` .. `blk.{n-1}`)."""
    arch = _arch(gguf)
    count_key, nextn_key = f"{arch}.block_count", f"{arch}.nextn_predict_layers"
    count = gguf.integer(count_key)
    if count is None:
        raise CheckpointError(f"{gguf.path.name}: no {count_key} in its metadata")
    nextn = gguf.integer(nextn_key) or 0
    blocks = {int(m["index"]) for part in (parts or [gguf]) for t in part.tensors if (m := BLOCK.match(t.name))}
    if count != (max(blocks) + 1 if blocks else 0) or not 0 <= nextn <= count:
        raise CheckpointError(f"{gguf.path.name}: {count_key} is {count}{f' ({nextn_key} {nextn})' if nextn else ''}"
                              f", but the tensors hold {len(blocks)} blocks"
                              + (f" (blk.{min(blocks)} to blk.{max(blocks)})" if blocks else ""))
    return count - nextn


@dataclass(frozen=True, slots=True)
class GgufLayerPlan(GgufEdit):
    src: Path
    parts: tuple[GgufFile, ...]
    n_layers: int
    kept: tuple[int, ...]
    actions: tuple[GgufAction, ...]
    kvs: tuple[tuple[KeyValue, ...], ...]  # per part
    notes: tuple[str, ...]
    row_source = None
    record_key: ClassVar[str] = RECORD_KEY

    def record(self) -> dict:
        return {"source": str(self.src), "old_num_layers": self.n_layers, "kept_layers": list(self.kept),
                "dropped_layers": [i for i in range(self.n_layers) if i not in self.kept]}

    def to_json(self) -> dict:
        return {**self.record(), "num_layers": len(self.kept), **self.totals(),
                "renamed_tensors": sum(1 for a in self.actions if a.new_name), "notes": list(self.notes)}

    def describe(self) -> str:
        dropped = [i for i in range(self.n_layers) if i not in self.kept]
        return "\n".join([f"source: {self.src}", f"layers: {self.n_layers} -> {len(self.kept)} (dropped {dropped})",
                          f"tensors: {len(self.actions)} written, {sum(1 for a in self.actions if a.new_name)} renamed",
                          *(f"note: {n}" for n in self.notes)])

    def check_output(self, targets: list[Path]) -> None:
        """Reopen the parts: every tensor under its new name with its source's type, shape and edge bytes."""
        try:
            written = {t.name: t for target in targets for t in read_gguf(target).tensors}
        except CheckpointError as e:
            raise VerifyError(f"output {e}") from e
        if len(written) != len(self.actions):
            raise VerifyError(f"output: {len(written)} tensors written, expected {len(self.actions)}")
        for action in self.actions:
            got = written.get(action.name)
            if got is None or got.ne != action.tensor.ne or got.ggml_type != action.tensor.ggml_type or (
                    edge_bytes(got) != edge_bytes(action.tensor)):
                raise VerifyError(f"output: tensor '{action.name}' differs from its source '{action.tensor.name}'")


def plan_gguf_drop_layers(parts: list[GgufFile], kept: list[int]) -> GgufLayerPlan:
    first = parts[0]
    arch = _arch(first)
    n_layers = gguf_block_count(first, parts)
    n_blocks = int(first.get(f"{arch}.block_count"))
    blocks = kept + list(range(n_layers, n_blocks))  # the kept decoder blocks, then the MTP blocks
    new_index = {old: new for new, old in enumerate(blocks)}
    actions, seen = [], set()
    for index, part in enumerate(parts):
        for tensor in part.tensors:
            match = BLOCK.match(tensor.name)
            if match is None:
                actions.append(GgufAction(index, tensor, tensor.ne, None))
                continue
            block = int(match["index"])
            seen.add(block)
            if block not in new_index:
                continue
            name = f"blk.{new_index[block]}.{match['rest']}"
            actions.append(GgufAction(index, tensor, tensor.ne, None, new_name=name if name != tensor.name else None))
    missing = sorted(set(range(n_blocks)) - seen)
    if missing:
        raise CheckpointError(f"{first.path.name}: {arch}.block_count is {n_blocks} but no tensor of blk.{missing[0]}")
    notes = []
    kvs = []
    for index, part in enumerate(parts):
        part_kvs = []
        for kv in part.kvs.values():
            kv = KeyValue(kv.key, kv.type, kv.value, kv.subtype)
            if kv.key == f"{arch}.block_count":
                kv.value = len(blocks)
            elif kv.key == f"{arch}.leading_dense_block_count":
                kv.value = sum(1 for i in kept if i < int(kv.value))
            elif kv.key == SPLIT_TENSORS:
                kv.value = len(actions)
            elif kv.key.startswith(f"{arch}.") and kv.type == ARRAY and len(kv.value) == n_blocks:
                kv.value = [kv.value[i] for i in blocks] if isinstance(kv.value, list) else kv.value[blocks]
                if index == 0:
                    notes.append(f"{kv.key}: one entry per block, sliced")
            part_kvs.append(kv)
        kvs.append(tuple(part_kvs))
    return GgufLayerPlan(first.path, tuple(parts), n_layers, tuple(kept), tuple(actions), tuple(kvs), tuple(notes))
