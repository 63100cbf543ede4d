"""What every GGUF plan shares: the parts opened together, one action per output tensor, the per-part metadata
(with the plan's record in the first part), the output part names and totals, and the checks on the output path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.errors import CheckpointError, InputError
from surgery.formats.gguf import (
    STRING,
    GgufFile,
    GgufTensor,
    KeyValue,
    read_gguf,
    split_name,
    split_paths,
    tensor_nbytes,
)
from surgery.formats.paths import check_file_target, check_output_target
from surgery.model.keys import Split


@dataclass(frozen=True, slots=True)
class GgufAction:
    part: int
    tensor: GgufTensor
    new_ne: tuple[int, ...]
    role: str | None  # None: copied
    axis: int = 0
    new_name: str | None = None  # renamed (drop-layers)
    rows: np.ndarray | None = field(default=None, compare=False)  # prune: kept rows (outermost axis)
    cols: np.ndarray | None = field(default=None, compare=False)  # prune: kept columns (ne0)

    @property
    def name(self) -> str:
        return self.new_name or self.tensor.name

    @property
    def new_nbytes(self) -> int:
        return tensor_nbytes(self.tensor.ggml_type, self.new_ne, self.name)


def open_gguf(src: Path) -> list[GgufFile]:
    """Every part of a (possibly split) GGUF file, each numbered as llama.cpp demands (split.no = its index,
    split.count = the parts), no tensor name twice across them."""
    paths = split_paths(src)
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"{src.name}: {len(missing)} of {len(paths)} split parts missing: {listed}")
    parts = [read_gguf(p) for p in paths]
    if len(parts) > 1:
        for index, part in enumerate(parts):
            if part.get(Split.COUNT) != len(parts):
                raise CheckpointError(f"{part.path.name}: {Split.COUNT} is {part.get(Split.COUNT)}, but "
                                      f"{len(parts)} parts")
            if part.get(Split.NO) != index:
                raise CheckpointError(f"{part.path.name}: {Split.NO} is {part.get(Split.NO)}; part {index + 1} of "
                                      f"{len(parts)} must say {index}")
    seen: dict[str, str] = {}
    for part in parts:
        for tensor in part.tensors:
            if tensor.name in seen:
                raise CheckpointError(f"{part.path.name}: tensor '{tensor.name}' is also in {seen[tensor.name]}")
            seen[tensor.name] = part.path.name
    return parts


class GgufEdit:
    """What every GGUF plan shares: per-part metadata (the plan's record added to the first part), the output
    part names, the totals. A plan has `parts`, `actions`, `kvs` (the new metadata of each part), `record_key`
    and `record()`."""

    __slots__ = ()

    def part_kvs(self, index: int) -> list[KeyValue]:
        kvs = list(self.kvs[index])
        if index == 0:
            kvs.append(KeyValue(self.record_key, STRING, json.dumps(self.record(), separators=(",", ":"))))
        return kvs

    def output_paths(self, out: Path) -> list[Path]:
        if len(self.parts) == 1:
            return [out]
        return [split_name(out, no, len(self.parts)) for no in range(1, len(self.parts) + 1)]

    def container_json(self) -> dict:  # a plan's summary: nothing beyond the key-values its record states
        return {}

    def container_lines(self) -> list[str]:
        return []

    def output_json(self, written: list[Path]) -> list[str]:
        """The output as `--json` names it: every part."""
        return [str(p) for p in written]

    def slices(self) -> list:
        """Every written tensor as the checker sees it (edit/checks.Planned): a vocabulary tensor's rows are the
        plan's row_source (its outermost axis is the vocabulary), a cut tensor's its kept rows and columns."""
        from surgery.edit.checks import Planned

        return [Planned(a.name, a.tensor, self.row_source if a.role else a.rows, a.cols,
                        (a.tensor.dtype, tuple(reversed(a.new_ne))), a.new_name is not None) for a in self.actions]

    def check_output(self, targets: list[Path]) -> None:
        from surgery.edit.checks import check_gguf_slices

        check_gguf_slices(self, targets)

    def totals(self) -> dict[str, int]:
        return {
            "params_before": sum(int(np.prod(a.tensor.ne)) for a in self.actions),
            "params_after": sum(int(np.prod(a.new_ne)) for a in self.actions),
            "bytes_before": sum(a.tensor.nbytes for a in self.actions),
            "bytes_after": sum(a.new_nbytes for a in self.actions),
        }


def check_gguf_output_path(src: Path, out: Path, force: bool) -> None:
    if not out.name.endswith(".gguf"):
        raise InputError(f"{out}: a GGUF output must end in .gguf")
    check_output_target(out)
    if out.resolve() == src.resolve():
        raise InputError(f"{out}: output must not be the source (the source is never written to)")
    check_file_target(out)
    if out.exists() and not force:
        raise InputError(f"{out}: already exists", hint="pass --force to replace it")
