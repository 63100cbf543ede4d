"""factor: PLRD / SVD low-rank factorization on raw tensors; a family of ranks from one decomposition per matrix.

Each target W [m, n] becomes up [m, r] · down [r, n] = U_r S_r V_rᵀ (√S on each side), the best rank-r
approximation (Eckart-Young). With --scaling, W·D is decomposed instead (D: each input channel's activation RMS
from `surgery importance`) and D⁻¹ folded into `down`, which minimises the error of W·x on those activations
under a diagonal second-moment model. A source that is itself factored is decomposed from its factors
(progressive: the truncated SVD of its current product, without forming it). Rank rules: lowrank/ranks.py.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.dtypes import FLOAT_DTYPES, decode
from surgery.edit.compute import Output, check_written, folder_output
from surgery.edit.ops import Compute, Copy, nbytes
from surgery.errors import CheckpointError, InputError, VerifyError
from surgery.formats.hf_folder import CONFIG, NATIVE_CONFIG, Checkpoint, dump_json
from surgery.formats.safetensors import TensorEntry, expected_nbytes, read_rows
from surgery.lowrank.linalg import Decomposition, Engine
from surgery.lowrank.ranks import RankRule
from surgery.model.factor_targets import candidate_module, factor_names, weight_name
from surgery.model.factored_modeling import (
    CAUSAL_LM,
    MODELING_FILE,
    RECORD_KEY,
    auto_map,
    class_name,
    modeling_source,
)

SCALING_KEY = "input_rms"  # surgery importance: each target's per-input-channel activation RMS
SCALE_FLOOR = 1e-6  # channels that never fire are scaled by this fraction of the largest RMS, not by 0


@dataclass(frozen=True)
class Target:
    """One matrix to decompose: dense (`weight`) or already factored (`up` · `down`)."""

    module: str
    shard: str
    m: int
    n: int
    dtype: str
    weight: TensorEntry | None = None
    up: TensorEntry | None = None
    down: TensorEntry | None = None
    scale: np.ndarray | None = field(default=None, compare=False, repr=False)
    spectrum: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def current_rank(self) -> int | None:
        return None if self.up is None else self.up.shape[1]

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return (self.weight.name,) if self.weight is not None else (self.up.name, self.down.name)

    def nbytes_at(self, rank: int | None) -> int:
        return expected_nbytes(self.dtype, (self.params_at(rank),))

    def params_at(self, rank: int | None) -> int:
        return self.m * self.n if rank is None else rank * (self.m + self.n)

    def read(self, name: str) -> np.ndarray:
        return decode_entry({e.name: e for e in (self.weight, self.up, self.down) if e is not None}[name])


@dataclass(frozen=True)
class Member:
    """One output of the family: its rule, where it goes, each target's rank (None: dense) and its ops."""

    rule: RankRule
    out: Path
    ranks: dict  # module -> rank, or None for a target left dense; factored modules copied keep their rank
    output: Output

    @property
    def factored(self) -> dict[str, int]:
        return {module: rank for module, rank in self.ranks.items() if rank is not None}


@dataclass(frozen=True)
class FactorPlan:
    src: Path
    architecture: str
    targets: dict  # module -> Target, in source order
    members: tuple[Member, ...]
    engine: Engine
    scaling: str | None
    progressive: bool
    notes: tuple[str, ...] = ()

    def member_totals(self, member: Member) -> dict[str, int]:
        targets = self.targets.values()
        return {"params_before": sum(t.params_at(t.current_rank) for t in targets),
                "params_after": sum(t.params_at(member.ranks[t.module]) for t in targets),
                "bytes_before": sum(t.nbytes_at(t.current_rank) for t in targets),
                "bytes_after": sum(t.nbytes_at(member.ranks[t.module]) for t in targets),
                "checkpoint_bytes_after": sum(nbytes(op) for op in member.output.ops())}

    def totals(self) -> dict[str, int]:
        return {"bytes_after": sum(nbytes(op) for m in self.members for op in m.output.ops())}

    def member_json(self, member: Member) -> dict:
        return {"output": str(member.out), "rule": {"option": member.rule.option, "value": member.rule.value,
                                                      "rank_multiple": member.rule.multiple},
                "ranks": member.factored, "dense": [m for m, r in member.ranks.items() if r is None],
                **self.member_totals(member),
                "targets": [{"name": t.module, "shape": [t.m, t.n], "rank_before": t.current_rank,
                             "rank": member.ranks[t.module],
                             "params_before": t.params_at(t.current_rank), "params_after": t.params_at(member.ranks[t.module]),
                             "bytes_before": t.nbytes_at(t.current_rank), "bytes_after": t.nbytes_at(member.ranks[t.module])}
                            for t in self.targets.values()]}

    def to_json(self) -> dict:
        return {"source": str(self.src), "architecture": self.architecture, "engine": self.engine.name,
                "progressive": self.progressive, "scaling": self.scaling,
                "outputs": [self.member_json(m) for m in self.members], "notes": list(self.notes)}

    def describe(self) -> str:
        lines = [f"source: {self.src} ({self.architecture}, {len(self.targets)} targets"
                 + (", already factored: progressive" if self.progressive else "") + ")",
                 f"engine: {self.engine.name}" + (f"; activation-aware scaling from {self.scaling}" if self.scaling else "")]
        for member in self.members:
            t = self.member_totals(member)
            ranks = list(member.factored.values())
            lines.append(f"{member.out}: {member.rule.option} {member.rule.value:g}: {len(ranks)} factored"
                         + (f" (rank {min(ranks)}..{max(ranks)})" if ranks else "")
                         + f", {len(member.ranks) - len(ranks)} dense; target parameters "
                         f"{t['params_before']:,} -> {t['params_after']:,}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---- planning -----------------------------------------------------------------------------------------------

def refuse_gguf(src: Path) -> None:
    """factor writes Hugging Face folders only: a GGUF source is refused with the way round."""
    from surgery.formats.paths import is_gguf

    if is_gguf(src):
        raise InputError(f"{src.name}: a GGUF file; llama.cpp cannot run factored layers, so factor writes "
                         "Hugging Face folders only",
                         hint="factor the Hugging Face folder; after training, `surgery unfactor` it and convert "
                              "that to GGUF")


def plan_factor(ckpt: Checkpoint, rules: list[RankRule], outs: list[Path], *, targets: tuple[str, ...] = (),
                scaling: dict | None = None, scaling_name: str | None = None, engine: Engine | None = None,
                spectrum_progress: Callable[[int, int], None] | None = None) -> FactorPlan:
    engine = engine or Engine()
    name = ckpt.root.name
    if CONFIG not in ckpt.configs or NATIVE_CONFIG in ckpt.configs:
        raise CheckpointError(f"{name}: factor reads a Hugging Face folder (config.json, no {NATIVE_CONFIG} layout)",
                              hint=f"factor a copy without the {NATIVE_CONFIG} / consolidated files")
    config = ckpt.configs[CONFIG]
    if "quantization_config" in config:
        raise CheckpointError(f"{name}: a quantized checkpoint ({config['quantization_config'].get('quant_method', '?')})"
                              ": its packed weights cannot be decomposed; factor before quantizing")
    record = config.get(RECORD_KEY)
    progressive = record is not None
    if progressive:
        architecture, current = factored_record(record, name)
    else:
        if "auto_map" in config:
            raise CheckpointError(f"{name}: config.json has an auto_map (custom modeling code); factor subclasses "
                                  "the architecture's transformers class and cannot extend custom code")
        architectures = config.get("architectures")
        if not (isinstance(architectures, list) and len(architectures) == 1 and isinstance(architectures[0], str)
                and CAUSAL_LM.match(architectures[0])):
            raise CheckpointError(f"{name}: config.json architectures is {architectures!r}; factor writes a "
                                  "*ForCausalLM model (one architecture)")
        architecture, current = architectures[0], {}
    found = find_targets(ckpt, current, name)
    chosen = _choose(found, targets)
    for target in chosen.values():
        if target.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{target.shard}: '{target.tensor_names[0]}' has {target.dtype}; factor decomposes "
                                  f"{', '.join(FLOAT_DTYPES)} weights only (not quantized or packed dtypes)")
    if scaling is not None:
        chosen = {m: _with_scale(t, scaling, scaling_name) for m, t in chosen.items()}
    if any(rule.needs_spectrum for rule in rules):
        chosen = _with_spectra(chosen, engine, spectrum_progress)
    members = []
    for rule, out in zip(rules, outs):
        ranks = {module: _rank(t, rule) for module, t in chosen.items()}
        if not progressive and not any(r is not None for r in ranks.values()):
            raise InputError(f"{rule.option} {rule.value:g}: no target would hold fewer parameters as two factors; "
                             "nothing to factor",
                             hint="factors are smaller only when r < m·n / (m + n), at most half of min(m, n): "
                                  "--rank-ratio above 0.5 never saves; choose a smaller value")
        members.append(Member(rule, out, ranks, _output(ckpt, config, architecture, chosen, ranks, current, rule,
                                                       scaling_name)))
    notes = []
    if progressive:
        kept = [m for m, t in chosen.items() if t.current_rank is not None and all(
            member.ranks[m] == t.current_rank for member in members)]
        if kept:
            notes.append(f"{len(kept)} factored targets already at or below the asked rank are copied unchanged")
    return FactorPlan(ckpt.root, architecture, chosen, tuple(members), engine, scaling_name, progressive, tuple(notes))


def factored_record(record, name: str) -> tuple[str, dict[str, int]]:
    if not (isinstance(record, dict) and isinstance(record.get("architecture"), str)
            and CAUSAL_LM.match(record["architecture"]) and isinstance(record.get("ranks"), dict)
            and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
                    for k, v in record["ranks"].items())):
        raise CheckpointError(f"{name}: config.json {RECORD_KEY} is not a factor record "
                              "({\"architecture\": \"...ForCausalLM\", \"ranks\": {module: rank}})")
    return record["architecture"], dict(record["ranks"])


def find_targets(ckpt: Checkpoint, current: dict[str, int], name: str) -> dict[str, Target]:
    """Every candidate in source order: dense linear weights, and the factored modules the record lists."""
    found: dict[str, Target] = {}
    tensors = ckpt.tensors()
    shard_of = {entry.name: shard.path.name for shard in ckpt.shards for entry in shard.entries}
    for shard in ckpt.shards:
        for entry in shard.entries:
            module = candidate_module(entry.name, entry.shape)
            if module is not None and module not in current:
                m, n = entry.shape
                found[module] = Target(module, shard.path.name, m, n, entry.dtype, weight=entry)
    for module, rank in current.items():
        up_name, down_name = factor_names(module)
        up, down = tensors.get(up_name), tensors.get(down_name)
        if (up is None or down is None or len(up.shape) != 2 or len(down.shape) != 2 or up.shape[1] != rank
                or down.shape[0] != rank or up.dtype != down.dtype or shard_of[up_name] != shard_of[down_name]):
            raise CheckpointError(f"{name}: factored module '{module}' (rank {rank}) needs {up_name} [m, {rank}] and "
                                  f"{down_name} [{rank}, n] of one dtype in one shard")
        if weight_name(module) in tensors:
            raise CheckpointError(f"{name}: '{module}' has both a dense weight and factors")
        found[module] = Target(module, shard_of[up_name], up.shape[0], down.shape[1], up.dtype, up=up, down=down)
    order = {entry.name: i for i, entry in enumerate(e for s in ckpt.shards for e in s.entries)}
    return dict(sorted(found.items(), key=lambda item: order[item[1].tensor_names[0]]))


def _choose(found: dict[str, Target], globs: tuple[str, ...]) -> dict[str, Target]:
    if not found:
        raise CheckpointError("no 2-D linear weights inside decoder layers (q/k/v/o, gate/up/down projections) "
                              "to factor")
    if not globs:
        return found
    for glob in globs:
        if not any(fnmatch.fnmatchcase(module, glob) for module in found):
            raise InputError(f"--targets {glob}: matches none of the {len(found)} candidates "
                             f"(e.g. {next(iter(found))})", hint="globs match module names without '.weight'")
    return {m: t for m, t in found.items() if any(fnmatch.fnmatchcase(m, g) for g in globs)}


def _with_scale(target: Target, scaling: dict, scaling_name: str | None) -> Target:
    stats = scaling.get(SCALING_KEY)
    where = scaling_name or "the importance file"
    if not isinstance(stats, dict):
        raise InputError(f"{where}: no \"{SCALING_KEY}\" statistics (written by surgery importance from this version "
                         "on)", hint="run surgery importance again on this checkpoint")
    values = stats.get(target.module)
    if values is None:
        raise InputError(f"{where}: no \"{SCALING_KEY}\" entry for '{target.module}'",
                         hint="the importance file must come from this checkpoint")
    try:
        scale = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: \"{SCALING_KEY}\" of '{target.module}' is not an array of numbers") from None
    if scale.shape != (target.n,) or not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise InputError(f"{where}: \"{SCALING_KEY}\" of '{target.module}' must be {target.n} finite non-negative "
                         f"numbers, got shape {list(scale.shape)}")
    top = float(scale.max()) if scale.size else 0.0
    scale = np.maximum(scale, SCALE_FLOOR * top) if top > 0 else np.ones_like(scale)
    return Target(**{**_fields(target), "scale": scale})


def _fields(target: Target) -> dict:
    return {f: getattr(target, f) for f in Target.__dataclass_fields__}


def _with_spectra(chosen: dict[str, Target], engine: Engine, progress) -> dict[str, Target]:
    """Every singular value of each target (--energy needs them before any header is written)."""
    result = {}
    for done, (module, target) in enumerate(chosen.items()):
        if target.weight is not None:
            spectrum = engine.singular_values(target.read(target.weight.name), target.scale)
        else:
            spectrum = engine.decompose_product(target.read(target.up.name), target.read(target.down.name),
                                                target.scale).s
        result[module] = Target(**{**_fields(target), "spectrum": spectrum})
        if progress:
            progress(done + 1, len(chosen))
    return result


def _rank(target: Target, rule: RankRule) -> int | None:
    """The target's rank in this member, or None when it stays dense."""
    rank = rule.rank(target.m, target.n, target.spectrum)
    if target.current_rank is not None:
        return min(rank, target.current_rank)  # a factored target is never made larger (nor dense)
    return rank if rule.factored(target.m, target.n, rank) else None


def _output(ckpt: Checkpoint, config: dict, architecture: str, chosen: dict[str, Target], ranks: dict,
            current: dict[str, int], rule: RankRule, scaling_name: str | None) -> Output:
    new_config = copy.deepcopy(config)
    factored = {**current, **{m: r for m, r in ranks.items() if r is not None}}
    factored = {m: factored[m] for m in sorted(factored)}
    if not current:
        new_config["architectures"] = [class_name(architecture)]
        new_config["auto_map"] = auto_map(architecture)
    new_config[RECORD_KEY] = {"architecture": architecture, "ranks": factored,
                              "rule": {"option": rule.option, "value": rule.value, "rank_multiple": rule.multiple},
                              "scaling": scaling_name,
                              "source_architectures": config["architectures"] if not current
                              else config[RECORD_KEY].get("source_architectures", [architecture])}
    files = {CONFIG: dump_json(new_config), MODELING_FILE: modeling_source(architecture)}
    return folder_output(ckpt, chosen.values(), lambda target: _target_ops(target, ranks[target.module]), files,
                         MODELING_FILE)


def _target_ops(target: Target, rank: int | None) -> list:
    if rank is None:  # left dense
        return [Copy(target.weight.name, target.weight, target.module)]
    if target.current_rank == rank:  # already factored at this rank
        return [Copy(target.up.name, target.up, target.module), Copy(target.down.name, target.down, target.module)]
    up_name, down_name = factor_names(target.module)
    return [Compute(up_name, target.dtype, (target.m, rank), target.module, lambda d, r=rank: d.factors(r)[0]),
            Compute(down_name, target.dtype, (rank, target.n), target.module, lambda d, r=rank: d.factors(r)[1])]


# ---- computing ----------------------------------------------------------------------------------------------

def decompose(plan: FactorPlan, module: str) -> Decomposition:
    """The one decomposition of a target that every member's factors are cut from."""
    target = plan.targets[module]
    if target.weight is None:
        return plan.engine.decompose_product(target.read(target.up.name), target.read(target.down.name), target.scale)
    ranks = [m.ranks[module] for m in plan.members if m.ranks[module] is not None]
    exact = any(m.rule.full_rank for m in plan.members)
    return plan.engine.decompose(target.read(target.weight.name), None if exact else max(ranks), target.scale)


# ---- checking -----------------------------------------------------------------------------------------------

def check_factor_output(plan: FactorPlan, member: Member, out: Path) -> None:
    """Every shard reopened (edit/compute.check_written: shapes, dtypes, copies), and each new
    pair of factors satisfies W·D²·downᵀ = up·diag(s) with s the squared row norms of down·D, row by row (true of
    a truncated SVD of W·D, false for a wrong row or column of either factor)."""
    written = check_written(member.output, out)
    for module, rank in member.ranks.items():
        target = plan.targets[module]
        if rank is None or target.current_rank == rank:  # dense, or factors copied (checked as copies)
            continue
        up_name, down_name = factor_names(module)
        entries = written[target.shard]
        bad = _bad_factor_row(plan, target, decode_entry(entries[up_name]), decode_entry(entries[down_name]))
        if bad is not None:
            raise VerifyError(f"output {target.shard}: the factors of '{module}' are not a truncated SVD of its "
                              f"source (row {bad})")


def decode_entry(entry: TensorEntry) -> np.ndarray:
    """A float tensor's values (float32), read through a memory map of its bytes."""
    return decode(read_rows(entry).reshape(-1), entry.dtype, entry.shape)


def _bad_factor_row(plan: FactorPlan, target: Target, up: np.ndarray, down: np.ndarray) -> int | None:
    scale = np.ones(target.n) if target.scale is None else target.scale
    down_scaled = down.astype(np.float64) * scale[None, :]
    s = (down_scaled ** 2).sum(1)
    probe = (down_scaled * scale[None, :]).T  # D²·downᵀ: [n, r]
    if target.weight is not None:
        lhs = plan.engine.product(target.read(target.weight.name), probe.astype(np.float32))
    else:
        inner = plan.engine.product(target.read(target.down.name), probe.astype(np.float32))
        lhs = plan.engine.product(target.read(target.up.name), inner)
    rhs = up.astype(np.float64) * s[None, :]
    tolerance = 1e-2 if target.dtype == "F32" else 5e-2
    error = np.linalg.norm(lhs - rhs, axis=1)
    size = np.linalg.norm(lhs, axis=1) + np.linalg.norm(rhs, axis=1)
    floor = tolerance * float(size.mean()) if size.size else 0.0
    bad = np.nonzero(error > tolerance * size + floor)[0]
    return int(bad[0]) if bad.size else None


def family_outputs(out: Path, rules: list[RankRule]) -> list[Path]:
    """One rule writes OUT; several write OUT-r0.75, OUT-r0.5, ... beside it."""
    if len(rules) == 1:
        return [out]
    return [out.parent / f"{out.name}-{rule.tag}" for rule in rules]

