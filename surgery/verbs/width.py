"""prune: Minitron's width pruning on raw tensors, from an importance file.

Every axis is "keep a subset of an index space": MLP neurons and query heads per layer, hidden channels
globally, experts per layer. The N most important units are kept in their original order (Minitron's rule:
sizes are homogeneous across layers, as stock configs require). Llama-family names (Llama, Mistral, Qwen2/3,
Qwen3-MoE, Phi-3's fused projections, OLMo-2's q/k norms); facts in ../shared/PRUNING.md.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.dtypes import columns_cuttable
from surgery.edit.actions import FolderEdit, ShardPlan, TensorAction, other_files
from surgery.errors import CheckpointError, InputError
from surgery.formats.hf_folder import CONFIG, Checkpoint, dump_json
from surgery.model.config_keys import ConfigPatch
from surgery.model.config_defaults import SIZE_KEYS, ensure_node, size, text_view
from surgery.verbs.layers import DECODER_LAYER, IMPORTANCE_FORMAT

PRUNE_RECORD = "surgery_prune.json"
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")  # qwen-moe, transformers 5, deepseek
NORM = re.compile(r".*(?:norm|layernorm)\.weight$")


def load_importance(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: importance file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{Path(path).name}: not a JSON importance file ({e})") from e
    if not isinstance(data, dict) or data.get("format") != IMPORTANCE_FORMAT:
        raise InputError(f"{Path(path).name}: not a {IMPORTANCE_FORMAT} file")
    return data


def _scores(importance: dict, key: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if key not in importance:
        raise InputError(f"{name}: no \"{key}\" scores in the importance file, needed for this prune")
    try:
        scores = np.asarray(importance[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: \"{key}\" is not an array of numbers") from e
    if scores.shape != shape or not np.all(np.isfinite(scores)):
        raise InputError(f"{name}: \"{key}\" must be {' x '.join(map(str, shape))} finite numbers, "
                         f"got shape {' x '.join(map(str, scores.shape))}")
    return scores


def top(scores: np.ndarray, n: int) -> np.ndarray:
    """The n highest scores' indices, in their original order (ties: the lower index)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[:n])


@dataclass(frozen=True, slots=True)
class Cut:
    """What prune keeps of each index space."""

    mlp: list[np.ndarray] | None = None  # per layer, kept neurons
    expert_mlp: list[list[np.ndarray]] | None = None  # per layer, per (original) expert, kept neurons
    shared_mlp: list[np.ndarray] | None = None  # per layer, kept neurons of the shared expert
    heads: list[np.ndarray] | None = None  # per layer, kept query heads
    hidden: np.ndarray | None = None  # kept hidden channels
    experts: list[np.ndarray] | None = None  # per layer, kept experts
    sizes: dict = field(default_factory=dict)  # config key -> new value


def decide_cut(text: dict, importance: dict, name: str, *, intermediate_size: int | None = None,
               num_attention_heads: int | None = None, hidden_size: int | None = None,
               num_experts: int | None = None, moe_intermediate_size: int | None = None,
               shared_expert_intermediate_size: int | None = None) -> Cut:
    n_layers = text["num_hidden_layers"]
    mlp = heads = hidden = experts = expert_mlp = shared_mlp = None
    sizes: dict = {}

    def check(option: str, new: int | None, old: int) -> None:
        if new is not None and not 0 < new < old:
            raise InputError(f"{option} {new}: must be positive and smaller than the current {old}")

    if intermediate_size is not None:
        old = text["intermediate_size"]
        check("--intermediate-size", intermediate_size, old)
        scores = _scores(importance, "mlp", (n_layers, old), name)
        mlp = [top(scores[i], intermediate_size) for i in range(n_layers)]
        sizes["intermediate_size"] = intermediate_size
    if num_attention_heads is not None:
        n_heads = text["num_attention_heads"]
        n_kv = text.get("num_key_value_heads") or n_heads
        check("--num-attention-heads", num_attention_heads, n_heads)
        if num_attention_heads % n_kv:
            raise InputError(f"--num-attention-heads {num_attention_heads}: must be a multiple of the "
                             f"{n_kv} key/value heads (the same number of query heads is kept in each group)")
        scores = _scores(importance, "heads", (n_layers, n_heads), name)
        group, per_group = n_heads // n_kv, num_attention_heads // n_kv
        heads = [np.sort(np.concatenate([g * group + top(scores[i, g * group:(g + 1) * group], per_group)
                                         for g in range(n_kv)])) for i in range(n_layers)]
        sizes["num_attention_heads"] = num_attention_heads
    if hidden_size is not None:
        old = text["hidden_size"]
        check("--hidden-size", hidden_size, old)
        hidden = top(_scores(importance, "hidden", (old,), name), hidden_size)
        sizes["hidden_size"] = hidden_size
    if num_experts is not None:
        key = next((k for k in EXPERT_COUNT_KEYS if isinstance(text.get(k), int)), None)
        if key is None:
            raise InputError("--num-experts: this model has no experts (num_experts / n_routed_experts)")
        old = text[key]
        check("--num-experts", num_experts, old)
        per_token = text.get("num_experts_per_tok") or 1
        if num_experts < per_token:
            raise InputError(f"--num-experts {num_experts}: below num_experts_per_tok ({per_token})")
        scores = _scores(importance, "experts", (n_layers, old), name)
        experts = [top(scores[i], num_experts) for i in range(n_layers)]
        sizes[key] = num_experts
    if moe_intermediate_size is not None:
        if text.get("n_shared_experts"):
            raise InputError("--moe-intermediate-size: the shared experts of this model (n_shared_experts) take "
                             "their size from moe_intermediate_size; pruning them together is not supported")
        old = text.get("moe_intermediate_size")
        key = next((k for k in EXPERT_COUNT_KEYS if isinstance(text.get(k), int)), None)
        if not isinstance(old, int) or key is None:
            raise InputError("--moe-intermediate-size: this model has no experts (moe_intermediate_size)")
        check("--moe-intermediate-size", moe_intermediate_size, old)
        scores = _scores(importance, "experts_mlp", (n_layers, text[key], old), name)
        expert_mlp = [[top(scores[i, j], moe_intermediate_size) for j in range(text[key])] for i in range(n_layers)]
        sizes["moe_intermediate_size"] = moe_intermediate_size
    if shared_expert_intermediate_size is not None:
        old = text.get("shared_expert_intermediate_size")
        if not isinstance(old, int):
            raise InputError("--shared-expert-intermediate-size: this model has no shared expert "
                             "(shared_expert_intermediate_size)")
        check("--shared-expert-intermediate-size", shared_expert_intermediate_size, old)
        scores = _scores(importance, "shared_expert_mlp", (n_layers, old), name)
        shared_mlp = [top(scores[i], shared_expert_intermediate_size) for i in range(n_layers)]
        sizes["shared_expert_intermediate_size"] = shared_expert_intermediate_size
    if not sizes:
        raise InputError("choose at least one of --intermediate-size, --num-attention-heads, --hidden-size, "
                         "--num-experts, --moe-intermediate-size, --shared-expert-intermediate-size")
    if num_attention_heads is not None or hidden_size is not None:
        sizes["head_dim"] = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return Cut(mlp, expert_mlp, shared_mlp, heads, hidden, experts, sizes)


def head_rows(heads: np.ndarray, head_dim: int) -> np.ndarray:
    """The rows of the kept query heads in a q projection (head_dim rows each)."""
    return (heads[:, None] * head_dim + np.arange(head_dim)[None, :]).ravel()


def fused_qkv_rows(q_rows: np.ndarray, n_heads: int, n_kv: int, head_dim: int) -> np.ndarray:
    """A fused [Q | K | V] projection (Phi-3 qkv_proj, GGUF attn_qkv): the kept Q rows, every K and V row."""
    return np.concatenate([q_rows, np.arange(n_heads * head_dim, (n_heads + 2 * n_kv) * head_dim)])


def _mlp_take(rest: str, neurons: np.ndarray, rows, cols):
    """gate_proj/up_proj rows and down_proj columns of one MLP (an expert or the shared expert)."""
    if rest in ("gate_proj.weight", "up_proj.weight", "gate_proj.bias", "up_proj.bias"):
        return neurons, cols
    if rest == "down_proj.weight":
        return rows, neurons
    return rows, cols


def tensor_take(name: str, shape: tuple[int, ...], cut: Cut, text: dict) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                                 str | None]:
    """(rows, cols, new name) for one tensor; (None, None, name) when it is copied as it is."""
    rows = cols = None
    new_name = name
    hidden = cut.hidden
    match = DECODER_LAYER.match(name)
    layer = int(match["index"]) if match else None
    rest = match["rest"] if match else name
    head_dim = cut.sizes.get("head_dim") or text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    n_heads, n_kv = text["num_attention_heads"], text.get("num_key_value_heads") or text["num_attention_heads"]
    intermediate = text.get("intermediate_size")
    expert = re.match(r"mlp\.experts\.(\d+)\.(.+)$", rest)
    if expert is not None and cut.experts is not None:
        kept = cut.experts[layer].tolist()
        if int(expert[1]) not in kept:
            return None, None, None  # the expert is dropped
        new_name = name.replace(f"mlp.experts.{expert[1]}.", f"mlp.experts.{kept.index(int(expert[1]))}.", 1)
    if layer is not None and cut.experts is not None and rest in ("mlp.gate.weight", "mlp.gate.e_score_correction_bias"):
        rows = cut.experts[layer]
    if layer is not None and expert is not None and cut.expert_mlp is not None:
        rows, cols = _mlp_take(expert[2], cut.expert_mlp[layer][int(expert[1])], rows, cols)
    if layer is not None and cut.shared_mlp is not None and rest.startswith("mlp.shared_expert."):
        rows, cols = _mlp_take(rest.removeprefix("mlp.shared_expert."), cut.shared_mlp[layer], rows, cols)
    if layer is not None and cut.mlp is not None and expert is None:
        neurons = cut.mlp[layer]
        if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.bias"):
            rows = neurons
        elif rest == "mlp.gate_up_proj.weight":
            rows = np.concatenate([neurons, intermediate + neurons])
        elif rest == "mlp.down_proj.weight":
            cols = neurons
    if layer is not None and cut.heads is not None:
        q_rows = head_rows(cut.heads[layer], head_dim)
        if rest in ("self_attn.q_proj.weight", "self_attn.q_proj.bias"):
            rows = q_rows
        elif rest == "self_attn.qkv_proj.weight":
            rows = fused_qkv_rows(q_rows, n_heads, n_kv, head_dim)
        elif rest == "self_attn.o_proj.weight":
            cols = q_rows
        elif rest == "self_attn.q_norm.weight" and shape[0] == n_heads * head_dim:  # OLMo-2
            rows = q_rows
    if hidden is not None:
        projections_in = ("q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj", "gate",
                          "shared_expert_gate")
        if NORM.match(rest) and shape == (text["hidden_size"],) and not rest.endswith(("q_norm.weight",
                                                                                         "k_norm.weight")):
            rows = hidden
        elif rest.endswith(("o_proj.weight", "down_proj.weight")):
            rows = hidden
        elif rest.endswith(("o_proj.bias", "down_proj.bias")):
            rows = hidden
        elif rest.endswith(".weight") and rest.rsplit(".", 2)[-2] in projections_in and len(shape) == 2:
            cols = hidden
        elif rest in ("embed_tokens.weight", "lm_head.weight") or name.endswith(("embed_tokens.weight",
                                                                                    "lm_head.weight")):
            cols = hidden
    return rows, cols, new_name


@dataclass(frozen=True, slots=True)
class PrunePlan(FolderEdit):
    cut: Cut
    record_name = PRUNE_RECORD

    def record(self) -> dict:
        as_lists = lambda units: None if units is None else [u.tolist() for u in units]  # noqa: E731
        return {"source": str(self.src), "sizes": self.cut.sizes, "kept_mlp": as_lists(self.cut.mlp),
                "kept_expert_mlp": None if self.cut.expert_mlp is None else [as_lists(e) for e in self.cut.expert_mlp],
                "kept_shared_expert_mlp": as_lists(self.cut.shared_mlp),
                "kept_heads": as_lists(self.cut.heads), "kept_experts": as_lists(self.cut.experts),
                "kept_hidden": None if self.cut.hidden is None else self.cut.hidden.tolist()}

    def totals(self) -> dict[str, int]:
        actions = self.tensor_actions()
        return {"params_before": sum(int(np.prod(a.old_shape)) for a in actions),
                "params_after": sum(int(np.prod(a.new_shape)) for a in actions),
                "bytes_before": sum(a.old_nbytes for a in actions), "bytes_after": sum(a.new_nbytes for a in actions)}

    def to_json(self) -> dict:
        return {"source": str(self.src), "sizes": self.cut.sizes, **self.totals(),
                "tensors": [{"name": a.name, "old_shape": list(a.old_shape), "new_shape": list(a.new_shape)}
                            for a in self.tensor_actions() if a.action == "take"],
                "config_patches": self.patches_json(), "notes": list(self.notes)}

    def describe(self) -> str:
        t = self.totals()
        return "\n".join([f"source: {self.src}",
                          "sizes: " + ", ".join(f"{k} = {v}" for k, v in self.cut.sizes.items()),
                          f"tensors cut: {sum(1 for a in self.tensor_actions() if a.action == 'take')}",
                          f"parameters: {t['params_before']:,} -> {t['params_after']:,}",
                          *(f"config: {p.file} {p.key}: {p.old} -> {p.new}" for p in self.config_patches),
                          *(f"note: {n}" for n in self.notes)])

    def rows_for(self, action):
        raise AssertionError("prune takes rows and columns, not vocabulary rows")


def plan_prune(ckpt: Checkpoint, importance: dict, importance_name: str, **sizes) -> PrunePlan:
    text = _sizes_view(ckpt)
    return plan_cut(ckpt, decide_cut(text, importance, importance_name, **sizes))


def _sizes_view(ckpt: Checkpoint) -> dict:
    """The text config with every size the cut reads, from the config or its family's defaults (refused when
    neither settles it)."""
    if CONFIG not in ckpt.configs:
        raise CheckpointError(f"{ckpt.root.name}: prune needs config.json")
    config = ckpt.configs[CONFIG]
    path, text = text_view(config)
    prefix = "".join(f"{key}." for key in path)
    text = {**text, **{key: size(text, key, CONFIG, prefix) for key in SIZE_KEYS if key != "vocab_size"
                       and (key != "intermediate_size" or key in text)}}
    if "quantization_config" in config:
        raise CheckpointError(f"{ckpt.root.name}: a quantized checkpoint ({config['quantization_config'].get('quant_method', '?')}"
                              "): its packed weights cannot be cut; prune before quantizing")
    return text


def cut_from_record(record: dict, name: str) -> Cut:
    """The Cut a prune record (surgery_prune.json) describes, to replay it (`surgery verify`)."""
    try:
        units = lambda key: None if record.get(key) is None else [np.asarray(u, np.int64) for u in record[key]]  # noqa: E731
        expert_mlp = record.get("kept_expert_mlp")
        return Cut(mlp=units("kept_mlp"), heads=units("kept_heads"), experts=units("kept_experts"),
                   shared_mlp=units("kept_shared_expert_mlp"),
                   expert_mlp=None if expert_mlp is None else [[np.asarray(e, np.int64) for e in layer]
                                                              for layer in expert_mlp],
                   hidden=None if record.get("kept_hidden") is None else np.asarray(record["kept_hidden"], np.int64),
                   sizes=dict(record["sizes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{name}: {PRUNE_RECORD} is not a prune record ({e})") from e


def plan_cut(ckpt: Checkpoint, cut: Cut) -> PrunePlan:
    """The plan of a decided cut: every tensor's rows and columns, the config patches, the files."""
    text = _sizes_view(ckpt)
    config = ckpt.configs[CONFIG]
    path, _ = text_view(config)
    prefix = "".join(f"{key}." for key in path)
    if cut.mlp is not None and not any(e.name.endswith(("mlp.down_proj.weight", "mlp.gate_up_proj.weight"))
                                       for shard in ckpt.shards for e in shard.entries):
        raise InputError("--intermediate-size: this model has no dense MLP; for experts use --moe-intermediate-size")
    shards = []
    for shard in ckpt.shards:
        actions, rewritten = [], False
        for entry in shard.entries:
            rows, cols, new_name = tensor_take(entry.name, entry.shape, cut, text)
            if new_name is None:
                rewritten = True
                continue
            source = entry.name if new_name != entry.name else None
            rewritten |= source is not None
            if rows is None and cols is None:
                actions.append(TensorAction(new_name, shard.path.name, "copy", entry.dtype, entry.shape, entry.shape,
                                            None, None, source, entry=entry))
                continue
            if not columns_cuttable(entry.dtype):
                raise CheckpointError(f"{shard.path.name}: '{entry.name}' has {entry.dtype}, a packed dtype: a slice "
                                      "would cut inside a byte")
            new_shape = list(entry.shape)
            if rows is not None:
                new_shape[0] = len(rows)
            if cols is not None:
                if len(entry.shape) != 2:
                    raise CheckpointError(f"{shard.path.name}: '{entry.name}' has shape {list(entry.shape)}; columns "
                                          "can only be cut from a matrix")
                new_shape[1] = len(cols)
            actions.append(TensorAction(new_name, shard.path.name, "take", entry.dtype, entry.shape, tuple(new_shape),
                                        None, None, source, rows, cols, entry=entry))
        shards.append(ShardPlan(shard.path.name, shard.metadata, tuple(actions), True))
    new_config = copy.deepcopy(config)
    node = ensure_node(new_config, path)
    patches = []
    written = dict(cut.sizes)
    if cut.heads is not None:  # a derived kv-head count (= the old head count) must not follow the new one
        written.setdefault("num_key_value_heads", text["num_key_value_heads"])
    for key, value in written.items():
        if node.get(key) != value:
            patches.append(ConfigPatch(CONFIG, prefix + key, node.get(key), value))
            node[key] = value
    files = {CONFIG: dump_json(new_config)}
    notes = []
    if cut.hidden is not None:
        notes.append("hidden channels were cut: outputs change (RMSNorm statistics); heal by distillation")
        if text.get("model_type", "").startswith("gemma"):
            notes.append("gemma scales embeddings by sqrt(hidden_size), which now uses the new hidden_size")
    copied, skipped = other_files(ckpt, files, PRUNE_RECORD, vocabulary_changes=False)
    return PrunePlan(src=ckpt.root, shards=tuple(shards), indexes=ckpt.indexes, files=files, copied=copied,
                     skipped=skipped, config_patches=tuple(patches), notes=tuple(notes), cut=cut)


def check_prune_output(plan: PrunePlan, out: Path) -> None:
    """Reopen the shards (our reader and safetensors): shapes as planned, sampled rows of every cut tensor equal
    their source rows' kept columns, copied tensors' edges equal their source's."""
    import os

    from surgery.edit.checks import reopen_shard
    from surgery.edit.compare import edge_bytes
    from surgery.errors import VerifyError

    for shard in plan.shards:
        written = reopen_shard(out / shard.name)
        for action in shard.actions:
            got, src = written.get(action.name), action.entry
            if got is None or got.shape != action.new_shape or got.dtype != src.dtype:
                raise VerifyError(f"output {shard.name}: tensor '{action.name}' is missing or has the wrong shape")
            if action.action == "copy":
                if edge_bytes(got) != edge_bytes(src):
                    raise VerifyError(f"output {shard.name}: tensor '{action.name}' differs from its source")
                continue
            rows = np.arange(src.shape[0]) if action.rows is None else action.rows
            for new_row in sorted({0, len(rows) // 2, len(rows) - 1}):
                with open(src.path, "rb") as f:
                    want = os.pread(f.fileno(), src.row_nbytes(0), src.begin + int(rows[new_row]) * src.row_nbytes(0))
                if action.cols is not None:
                    want = np.frombuffer(want, np.uint8).reshape(src.shape[1], -1)[action.cols].tobytes()
                with open(got.path, "rb") as f:
                    have = os.pread(f.fileno(), got.row_nbytes(0), got.begin + new_row * got.row_nbytes(0))
                if have != want:
                    raise VerifyError(f"output {shard.name}: row {new_row} of '{action.name}' differs from its source")
