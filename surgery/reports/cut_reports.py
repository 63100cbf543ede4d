"""verify_cut / verify_gguf_cut: prove a drop-layers or prune output (folder or GGUF) against its source, byte
for byte.

The cut is replayed on SRC from the record in OUT (plan_drop_layers, plan_cut), and every planned tensor is
compared whole through numpy views of the raw bytes, independently of the streaming executor that wrote it: the
kept rows and columns of each source tensor equal the output's, copied tensors are equal, the output holds no
other tensor, and its configs equal the replayed ones (so every size equals its tensors; for a GGUF file, every key and value
of every part). The first tensor that differs is named. Memory stays flat: a block of rows at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from surgery.formats.hf_folder import Checkpoint, load_json
from surgery.formats.safetensors import READ_BLOCK_NBYTES, read_rows
from surgery.reports.comparison import Finding
from surgery.verbs.layers import LAYERS_RECORD, plan_drop_layers
from surgery.verbs.width import PRUNE_RECORD, cut_from_record, plan_cut

CUT_RECORDS = (LAYERS_RECORD, PRUNE_RECORD)


def cut_record(out) -> str | None:
    """The record of a drop-layers or prune output folder, or None."""
    return next((name for name in CUT_RECORDS if (out / name).is_file()), None)


def verify_cut(src, out) -> list[Finding]:
    old, new = Checkpoint.open(src), Checkpoint.open(out)
    name = cut_record(out)
    record = load_json(out / name)
    if name == LAYERS_RECORD:
        plan = plan_drop_layers(old, list(record["kept_layers"]))
    else:
        plan = plan_cut(old, cut_from_record(record, out.name))
    return [_check_tensors(plan, new), _check_files(plan, out, name, record)]


def _check_tensors(plan, new: Checkpoint) -> Finding:
    planned = [Planned(a.name, a.entry, a.rows, a.cols, (a.dtype, tuple(a.new_shape)), a.source is not None)
               for a in plan.tensor_actions()]
    return check_slices(planned, new.tensors(), lambda got: (got.dtype, tuple(got.shape)))


@dataclass(frozen=True)
class Planned:
    """One output tensor of a replayed cut: its source, the kept rows and columns, its dtype and shape."""

    name: str
    source: object  # a safetensors entry or a GGUF tensor
    rows: np.ndarray | None
    cols: np.ndarray | None
    layout: tuple  # what `layout(got)` must return
    renamed: bool


def check_slices(planned: list[Planned], written: dict, layout) -> Finding:
    """No tensor missing or extra; each with its layout and the bytes of its source slice; the first that differs."""
    names = {p.name for p in planned}
    extra, missing = sorted(set(written) - names), sorted(names - set(written))
    if extra or missing:
        return Finding("tensors", False, "output tensors differ from the replayed cut: "
                       + (f"unexpected {extra[0]}" if extra else f"missing {missing[0]}"))
    for p in planned:
        got = written[p.name]
        if layout(got) != p.layout:
            return Finding("tensors", False, f"'{p.name}' is {layout(got)}, the cut makes {p.layout}")
        bad = first_different_row(p.source, got, p.rows, p.cols)
        if bad is not None:
            return Finding("tensors", False, f"'{p.name}' differs from its source '{p.source.name}' (output row {bad})")
    n_cut = sum(1 for p in planned if p.rows is not None or p.cols is not None)
    return Finding("tensors", True, f"{len(planned)} tensors equal their source slices ({n_cut} cut, "
                   f"{sum(1 for p in planned if p.renamed)} renamed, the rest whole)")


def first_different_row(src, got, rows: np.ndarray | None, cols: np.ndarray | None) -> int | None:
    """The first output row whose bytes differ from source rows[row] (its columns `cols`), whole tensors read in
    blocks through memory maps."""
    source, output = read_rows(src), read_rows(got)
    if not src.shape:
        return None if np.array_equal(source, output) else 0
    n_rows = src.shape[0]
    rows = np.arange(n_rows) if rows is None else np.asarray(rows)
    per_block = max(1, READ_BLOCK_NBYTES // max(source.shape[1], 1))
    for start in range(0, len(rows), per_block):
        want = source[rows[start : start + per_block]]
        if cols is not None:
            want = want.reshape(len(want), src.shape[1], -1)[:, cols].reshape(len(want), -1)
        have = output[start : start + len(want)]
        if not np.array_equal(want, have):
            return start + int(np.argmax(np.any(want != have, axis=1)))
    return None


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


# ---- GGUF ---------------------------------------------------------------------------------------------------

def gguf_cut_record(out) -> str | None:
    """The metadata key of a drop-layers or prune record in a GGUF output, or None."""
    from surgery.verbs.layers_gguf import RECORD_KEY as LAYERS_KEY
    from surgery.verbs.vocab_gguf import open_gguf
    from surgery.verbs.width_gguf import RECORD_KEY as PRUNE_KEY

    first = open_gguf(out)[0]
    return next((key for key in (LAYERS_KEY, PRUNE_KEY) if first.get(key) is not None), None)


def verify_gguf_cut(src, out) -> list[Finding]:
    from surgery.verbs.layers_gguf import RECORD_KEY as LAYERS_KEY
    from surgery.verbs.layers_gguf import plan_gguf_drop_layers
    from surgery.verbs.vocab_gguf import open_gguf
    from surgery.verbs.width_gguf import plan_gguf_cut

    old, new = open_gguf(src), open_gguf(out)
    key = gguf_cut_record(out)
    try:
        record = json.loads(new[0].get(key))
    except (TypeError, ValueError) as e:
        return [Finding("metadata", False, f"{key} is not a JSON record ({e})")]
    if key == LAYERS_KEY:
        plan = plan_gguf_drop_layers(old, list(record["kept_layers"]))
    else:
        plan = plan_gguf_cut(old, cut_from_record(record, out.name))
    written = {t.name: t for part in new for t in part.tensors}
    findings = [_check_gguf_tensors(plan, written)]
    findings.append(_check_gguf_metadata(plan, new, key, record))
    return findings


def _check_gguf_tensors(plan, written: dict) -> Finding:
    planned = [Planned(a.name, a.tensor, a.rows, a.cols, (a.tensor.dtype, tuple(a.new_ne)), a.new_name is not None)
               for a in plan.actions]
    return check_slices(planned, written, lambda got: (got.dtype, tuple(got.ne)))


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
