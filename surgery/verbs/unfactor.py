"""unfactor: multiply a factored checkpoint's factors back into the source architecture's dense weights.

The output is the plain architecture again: the source's config (architectures restored; no auto_map, no
surgery_factor), the source's tensor names and dtypes, no modeling file; ready for llama.cpp conversion, GGUF trims
and quantization.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.edit.actions import other_files
from surgery.edit.compute import Compute, Copy, Output, OutputShard, nbytes
from surgery.errors import CheckpointError, VerifyError
from surgery.formats.hf_folder import CONFIG, Checkpoint, dump_json
from surgery.lowrank.linalg import Engine
from surgery.model.factor_targets import factor_names, weight_name
from surgery.model.factored_modeling import AUTO_CLASS, MODELING_FILE, RECORD_KEY, auto_map
from surgery.verbs.factor import Target, _factored_record, _find_targets, decode_entry


@dataclass(frozen=True)
class UnfactorPlan:
    src: Path
    architecture: str
    targets: dict  # module -> Target (factored)
    output: Output
    engine: Engine

    def totals(self) -> dict[str, int]:
        return {"params_before": sum(t.params_at(t.current_rank) for t in self.targets.values()),
                "params_after": sum(t.params_at(None) for t in self.targets.values()),
                "bytes_after": sum(nbytes(op) for op in self.output.ops())}

    def to_json(self) -> dict:
        return {"source": str(self.src), "architecture": self.architecture, **self.totals(),
                "modules": {m: t.current_rank for m, t in self.targets.items()}}

    def describe(self) -> str:
        t = self.totals()
        return "\n".join([f"source: {self.src} ({len(self.targets)} factored modules)",
                          f"writes: a plain {self.architecture}; target parameters {t['params_before']:,} -> "
                          f"{t['params_after']:,}"])


def plan_unfactor(ckpt: Checkpoint, engine: Engine | None = None) -> UnfactorPlan:
    name = ckpt.root.name
    config = ckpt.configs.get(CONFIG)
    if config is None or RECORD_KEY not in config:
        raise CheckpointError(f"{name}: config.json has no {RECORD_KEY} record; not written by surgery factor")
    record = config[RECORD_KEY]
    architecture, ranks = _factored_record(record, name)
    found = _find_targets(ckpt, ranks, name)
    targets = {m: found[m] for m in ranks}
    owner = {n: t for t in targets.values() for n in t.tensor_names}
    shards = []
    for shard in ckpt.shards:
        ops = []
        for entry in shard.entries:
            target = owner.get(entry.name)
            if target is None:
                ops.append(Copy(entry.name, entry, entry.name))
            elif entry.name == target.tensor_names[0]:
                ops.append(Compute(weight_name(target.module), target.dtype, (target.m, target.n), target.module,
                                   lambda product: product))
        shards.append(OutputShard(shard.path.name, shard.metadata, tuple(ops)))
    new_config = copy.deepcopy(config)
    del new_config[RECORD_KEY]
    ours = auto_map(architecture)
    if isinstance(new_config.get("auto_map"), dict):
        new_config["auto_map"] = {k: v for k, v in new_config["auto_map"].items()
                                  if not (k == AUTO_CLASS and v == ours[AUTO_CLASS])}
        if not new_config["auto_map"]:
            del new_config["auto_map"]
    sources = record.get("source_architectures")
    new_config["architectures"] = sources if isinstance(sources, list) else [architecture]
    files = {CONFIG: dump_json(new_config)}
    copied, _ = other_files(ckpt, files, MODELING_FILE, vocabulary_changes=False)
    index = ckpt.indexes[0] if ckpt.indexes else None
    output = Output(tuple(shards), files, copied, index.name if index else None, index.metadata if index else None)
    return UnfactorPlan(ckpt.root, architecture, targets, output, engine or Engine())


def multiply(plan: UnfactorPlan, module: str) -> np.ndarray:
    target: Target = plan.targets[module]
    return plan.engine.product(target.read(target.up.name), target.read(target.down.name))


def check_unfactor_output(plan: UnfactorPlan, out: Path) -> None:
    """Every tensor as planned; copied ones' edges equal their source's; every row of each product equal to the
    product of its factors (recomputed) within the dtype's rounding."""
    from surgery.edit.checks import reopen_shard
    from surgery.edit.compare import edge_bytes

    for shard in plan.output.shards:
        written = reopen_shard(out / shard.name)
        for op in shard.ops:
            got = written.get(op.name)
            if got is None or got.shape != tuple(op.shape) or got.dtype != op.dtype:
                raise VerifyError(f"output {shard.name}: tensor '{op.name}' is missing or has the wrong shape or dtype")
            if isinstance(op, Copy):
                if edge_bytes(got) != edge_bytes(op.entry):
                    raise VerifyError(f"output {shard.name}: tensor '{op.name}' differs from its source")
                continue
            want = multiply(plan, op.key)
            have = decode_entry(got)
            tolerance = 1e-5 if op.dtype == "F32" else 1e-2
            error = np.abs(have - want).max(axis=1)
            bound = tolerance * (np.abs(want).max(axis=1) + np.abs(want).max() * 1e-3)
            bad = np.nonzero(error > bound)[0]
            if bad.size:
                raise VerifyError(f"output {shard.name}: row {int(bad[0])} of '{op.name}' is not the product of "
                                  f"{' and '.join(factor_names(op.key))}")
