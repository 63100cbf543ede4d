"""verify_cut: prove a drop-layers or prune output (folder or GGUF) against its source, byte for byte.

The cut is replayed on SRC from the record in OUT (plan_drop_layers, plan_cut, over the same Sources the verbs
use), and every planned tensor is compared whole by the checker the in-run checks sample (edit/checks.slice_problem),
independently of the streaming executor that wrote it: the kept rows and columns of each source tensor equal the
output's, copied tensors are equal, the output holds no other tensor, and its configs equal the replayed ones (so
every size equals its tensors; for a GGUF file, every key and value of every part). The first tensor that differs
is named. Memory stays flat: a block of rows at a time.
"""

from __future__ import annotations

import json

import numpy as np

from surgery.edit.checks import slice_problem
from surgery.edit.gguf_edit import GgufEdit
from surgery.edit.sources import open_source
from surgery.formats.hf_folder import load_json
from surgery.reports.comparison import Finding
from surgery.verbs import drop_layers, prune

# kind -> (record file beside a folder output, record key in a GGUF output)
CUTS = {"drop-layers": (drop_layers.LAYERS_RECORD, drop_layers.RECORD_KEY),
        "prune": (prune.PRUNE_RECORD, prune.RECORD_KEY)}


def cut_kind(out) -> str | None:
    """Which cut wrote OUT (its record says), or None."""
    source = open_source(out)
    return next((kind for kind, (file, key) in CUTS.items() if source.stored_record(file, key) is not None), None)


def verify_cut(src, out) -> list[Finding]:
    old, new = open_source(src), open_source(out)
    kind = cut_kind(out)
    file, key = CUTS[kind]
    try:
        record = json.loads(new.stored_record(file, key))
        if kind == "drop-layers":
            plan = drop_layers.plan_drop_layers(old, list(record["kept_layers"]))
        else:
            plan = prune.plan_cut(old, prune.cut_from_record(record, out.name))
    except (TypeError, ValueError, KeyError) as e:
        return [Finding("record", False, f"{file if new.container == 'folder' else key} is not a {kind} record ({e})")]
    problem = slice_problem(plan.slices(), {t.name: t for _, t in new.tensors()}, sample=False)
    n_cut = sum(1 for p in plan.slices() if p.rows is not None or p.cols is not None)
    n_renamed = sum(1 for p in plan.slices() if p.renamed)
    tensors = Finding("tensors", problem is None, problem or (
        f"{len(plan.slices())} tensors equal their source slices ({n_cut} cut, {n_renamed} renamed, the rest whole)"))
    if isinstance(plan, GgufEdit):
        return [tensors, _check_gguf_metadata(plan, list(new.parts), key, record)]
    return [tensors, _check_files(plan, out, file, record)]


def _check_files(plan, out, record_name: str, record: dict) -> Finding:
    """Configs equal the replayed ones, the record equals the replayed record, copied files are there and equal."""
    for name, content in plan.files.items():
        if load_json(out / name) != json.loads(content):
            return Finding("configs", False, f"{name} differs from the replayed cut's")
    replayed = {k: v for k, v in plan.record().items() if k != "source"}
    if {k: v for k, v in record.items() if k != "source"} != replayed:
        return Finding("configs", False, f"{record_name} differs from the replayed cut's")
    for name in plan.copied:
        source, copy = plan.src / name, out / name
        if source.is_file() and (not copy.is_file() or copy.read_bytes() != source.read_bytes()):
            return Finding("configs", False, f"{name} is not the source's")
    return Finding("configs", True, f"{', '.join(sorted(plan.files))} equal the replayed cut's (every size equals "
                   f"its tensors); {record_name} and {len(plan.copied)} copied files match")


def _check_gguf_metadata(plan, new: list, record_key: str, record: dict) -> Finding:
    """Every part's keys, types and values equal the replayed plan's (sizes, block count, per-block arrays)."""
    for index, part in enumerate(new):
        want = {kv.key: kv for kv in plan.part_kvs(index) if kv.key != record_key}
        have = {key: kv for key, kv in part.kvs.items() if key != record_key}
        if set(want) != set(have):
            different = sorted(set(want) ^ set(have))
            return Finding("metadata", False, f"part {index + 1}: keys differ from the replayed cut's ({different[0]})")
        for key, kv in want.items():
            if (kv.type, kv.subtype) != (have[key].type, have[key].subtype) or not _same_value(kv.value,
                                                                                                have[key].value):
                return Finding("metadata", False, f"part {index + 1}: {key} is {have[key].value!r}, the cut makes "
                               f"{kv.value!r}")
    replayed = {k: v for k, v in plan.record().items() if k != "source"}
    if {k: v for k, v in record.items() if k != "source"} != replayed:
        return Finding("metadata", False, f"{record_key} differs from the replayed cut's")
    return Finding("metadata", True, f"every key of {len(new)} part(s) equals the replayed cut's (sizes, block count)")


def _same_value(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b
