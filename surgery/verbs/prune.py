"""prune: Minitron's width pruning on raw tensors, from an importance file, for folders and GGUF files.

Every axis is "keep a subset of an index space": MLP neurons and query heads per layer, hidden channels
globally, experts per layer. The N most important units are kept in their original order (Minitron's rule:
sizes are homogeneous across layers, as stock configs require). Which axis of which tensor is which space is
model/names' prune table (Llama, Mistral, Qwen2/3, Qwen3-MoE, Phi-3's fused projections, OLMo-2's q/k norms, and
their GGUF names); facts in ../shared/PRUNING.md. A GGUF file is cut where no quantized block is: rows of any type
are whole blocks, a column cut of a quantized row is refused (F32, F16 and BF16 columns are single elements);
its experts are stored merged (`ffn_*_exps`, experts outermost), so expert pruning takes whole expert slabs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from surgery.edit.actions import FolderEdit
from surgery.edit.gguf_edit import GgufEdit
from surgery.edit.sources import Metadata, TensorOp
from surgery.errors import CheckpointError, InputError
from surgery.formats.gguf import GgufFile, KeyValue
from surgery.model.keys import Record
from surgery.model.names import DENSE_MLP, FOLDER, GGUF, NO_HIDDEN_CUT, place, units

PRUNE_RECORD = "surgery_prune.json"  # the record beside a folder output
RECORD_KEY = Record.PRUNE  # the record in a GGUF output's metadata
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")  # qwen-moe, transformers 5, deepseek


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


class PruneDecision:
    """What a prune plan says, whatever the container: its record, summary and description."""

    __slots__ = ()

    def record(self) -> dict:
        as_lists = lambda units: None if units is None else [u.tolist() for u in units]  # noqa: E731
        cut = self.cut
        return {"source": str(self.src), "sizes": cut.sizes, "kept_mlp": as_lists(cut.mlp),
                "kept_expert_mlp": None if cut.expert_mlp is None else [as_lists(e) for e in cut.expert_mlp],
                "kept_shared_expert_mlp": as_lists(cut.shared_mlp),
                "kept_heads": as_lists(cut.heads), "kept_experts": as_lists(cut.experts),
                "kept_hidden": None if cut.hidden is None else cut.hidden.tolist()}

    def to_json(self) -> dict:
        return {"source": str(self.src), "sizes": self.cut.sizes, **self.totals(),
                "tensors": [{"name": name, "old_shape": list(old), "new_shape": list(new)}
                            for name, old, new in self.cut_tensors()],
                **self.container_json(), "notes": list(self.notes)}

    def describe(self) -> str:
        t = self.totals()
        return "\n".join([f"source: {self.src}",
                          "sizes: " + ", ".join(f"{k} = {v}" for k, v in self.cut.sizes.items()),
                          f"tensors cut: {len(self.cut_tensors())}",
                          f"parameters: {t['params_before']:,} -> {t['params_after']:,}",
                          *self.container_lines(), *(f"note: {n}" for n in self.notes)])


@dataclass(frozen=True, slots=True)
class PrunePlan(PruneDecision, FolderEdit):
    cut: Cut
    record_name = PRUNE_RECORD

    def totals(self) -> dict[str, int]:
        actions = self.tensor_actions()
        return {"params_before": sum(int(np.prod(a.old_shape)) for a in actions),
                "params_after": sum(int(np.prod(a.new_shape)) for a in actions),
                "bytes_before": sum(a.old_nbytes for a in actions), "bytes_after": sum(a.new_nbytes for a in actions)}

    def cut_tensors(self) -> list[tuple[str, tuple, tuple]]:
        return [(a.name, a.old_shape, a.new_shape) for a in self.tensor_actions() if a.action == "take"]


@dataclass(frozen=True, slots=True)
class GgufPrunePlan(PruneDecision, GgufEdit):
    src: Path
    parts: tuple[GgufFile, ...]
    cut: Cut
    actions: tuple
    kvs: tuple[tuple[KeyValue, ...], ...]  # per part
    notes: tuple[str, ...] = ()
    row_source = None
    record_key: ClassVar[str] = RECORD_KEY

    def cut_tensors(self) -> list[tuple[str, tuple, tuple]]:
        return [(a.name, a.tensor.shape, tuple(reversed(a.new_ne))) for a in self.actions
                if a.rows is not None or a.cols is not None]




PLANS = {FOLDER: PrunePlan, GGUF: GgufPrunePlan}


def plan_prune(source, importance: dict, importance_name: str, **sizes) -> PrunePlan | GgufPrunePlan:
    """Decide the cut from the importance scores, then plan it."""
    source.n_layers()  # an integer layer count naming the layers the tensors hold
    dims = source.dims()
    if source.merged_experts and (sizes.get("moe_intermediate_size") or sizes.get("shared_expert_intermediate_size")):
        raise InputError(f"{source.name}: pruning expert neurons of a GGUF file is not supported (its experts "
                         "are merged); prune the Hugging Face checkpoint, then convert")
    return plan_cut(source, decide_cut(dims, importance, importance_name, **sizes))


def plan_cut(source, cut: Cut) -> PrunePlan | GgufPrunePlan:
    """The plan of a decided cut (also replayed from a record by `surgery verify`): every tensor's rows and
    columns by the prune table, the metadata patches, the files."""
    dims = source.dims()
    tensors = source.tensors()
    if cut.mlp is not None and not any(DENSE_MLP[source.container].match(t.name) for _, t in tensors):
        raise InputError("--intermediate-size: this model has no dense MLP; for experts use --moe-intermediate-size")
    ops = []
    for where, tensor in tensors:
        placed = place(tensor.name, source.container, source.arch)
        if placed is None:
            ops.append(TensorOp(where, tensor, tensor.name))
            continue
        name = tensor.name
        if placed.expert is not None and cut.experts is not None:  # one expert's own tensors (folders)
            kept = cut.experts[placed.layer.index].tolist()
            if placed.expert not in kept:
                continue  # the expert is dropped
            name = name.replace(f".experts.{placed.expert}.", f".experts.{kept.index(placed.expert)}.", 1)
        if placed.line.cols == NO_HIDDEN_CUT and cut.hidden is not None:
            raise CheckpointError(f"'{tensor.name}': hidden channels of merged experts are not supported")
        rows = units(placed.line.rows, cut, placed, tensor.shape, dims)
        cols = units(placed.line.cols, cut, placed, tensor.shape, dims)
        ops.append(TensorOp(where, tensor, name, rows, cols))
    metadata = source.size_metadata(cut.sizes, dims, cut.heads is not None)
    if cut.hidden is not None:
        metadata = Metadata(metadata.files, metadata.patches, metadata.kvs, (
            "hidden channels were cut: outputs change (RMSNorm statistics); heal by distillation",
            *metadata.notes))
    return PLANS[source.container](**source.finish(ops, metadata, PRUNE_RECORD), cut=cut)
