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

from surgery.edit.compute import Output, check_written, folder_output
from surgery.edit.ops import Compute, Copy, nbytes
from surgery.errors import CheckpointError, InputError, VerifyError
from surgery.formats.hf_folder import CONFIG, Checkpoint, dump_json
from surgery.lowrank.linalg import Engine
from surgery.model.factor_targets import factor_names, weight_name
from surgery.model.factored_modeling import AUTO_CLASS, MODELING_FILE, RECORD_KEY, auto_map
from surgery.verbs.factor import Target, factored_record, find_targets, decode_entry


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


def refuse_gguf(src: Path) -> None:
    """unfactor reads the folders that factor writes; a GGUF file never holds factors."""
    from surgery.formats.paths import is_gguf

    if is_gguf(src):
        raise InputError(f"{src.name}: a GGUF file; unfactor reads the folders that surgery factor writes")


def plan_unfactor(ckpt: Checkpoint, engine: Engine | None = None) -> UnfactorPlan:
    name = ckpt.root.name
    config = ckpt.configs.get(CONFIG)
    if config is None or RECORD_KEY not in config:
        raise CheckpointError(f"{name}: config.json has no {RECORD_KEY} record; not written by surgery factor")
    record = config[RECORD_KEY]
    architecture, ranks = factored_record(record, name)
    found = find_targets(ckpt, ranks, name)
    targets = {m: found[m] for m in ranks}
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
    output = folder_output(ckpt, targets.values(), lambda t: [Compute(weight_name(t.module), t.dtype, (t.m, t.n),
                                                                      t.module, lambda product: product)],
                           {CONFIG: dump_json(new_config)}, MODELING_FILE)
    return UnfactorPlan(ckpt.root, architecture, targets, output, engine or Engine())


def multiply(plan: UnfactorPlan, module: str) -> np.ndarray:
    target: Target = plan.targets[module]
    return plan.engine.product(target.read(target.up.name), target.read(target.down.name))


def check_unfactor_output(plan: UnfactorPlan, out: Path) -> None:
    """Every tensor as planned; copied ones' edges equal their source's; every row of each product equal to the
    product of its factors (recomputed) within the dtype's rounding."""
    written = check_written(plan.output, out)
    for shard in plan.output.shards:
        for op in shard.ops:
            if isinstance(op, Copy):
                continue
            want = multiply(plan, op.key)
            have = decode_entry(written[shard.name][op.name])
            tolerance = 1e-5 if op.dtype == "F32" else 1e-2
            error = np.abs(have - want).max(axis=1)
            bound = tolerance * (np.abs(want).max(axis=1) + np.abs(want).max() * 1e-3)
            bad = np.nonzero(error > bound)[0]
            if bad.size:
                raise VerifyError(f"output {shard.name}: row {int(bad[0])} of '{op.name}' is not the product of "
                                  f"{' and '.join(factor_names(op.key))}")
