"""Read, validate and write safetensors shards as bytes, without converting any dtype.

Format (safetensors/README): an 8-byte little-endian header length N, N bytes of JSON (an object mapping
tensor names to {dtype, shape, data_offsets} plus an optional "__metadata__" of strings), then the data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.dtypes import DTYPE_BITS, whole_bytes
from surgery.errors import CheckpointError
from surgery.formats.paths import open_regular

DTYPE_RANK = {dtype: rank for rank, dtype in enumerate(DTYPE_BITS)}
MAX_HEADER_NBYTES = 100 * 1024 * 1024  # the safetensors library refuses larger headers too
READ_BLOCK_NBYTES = 16 * 2**20  # tensor bytes are read in blocks this size: peak memory is a block, not a tensor
HEADER_ALIGN = 8  # safetensors pads the header with b" " to a multiple of 8 (tensor.rs, prepare)


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of one shard: where its bytes are (absolute file positions) and what they hold."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def row_nbytes(self, axis: int = 0) -> int:
        """Bytes of one slice along `axis` for the trailing axes; requires byte-addressable rows."""
        nbytes = whole_bytes(self.dtype, math.prod(self.shape[axis + 1 :]))
        if nbytes is None:
            raise CheckpointError(
                f"{self.path.name}: tensor '{self.name}' has {self.dtype}, a packed dtype, "
                "rows are not byte-addressable"
            )
        return nbytes


@dataclass(frozen=True, slots=True)
class ShardHeader:
    path: Path
    data_start: int
    metadata: dict[str, str] | None
    entries: tuple[TensorEntry, ...]

    def entry(self, name: str) -> TensorEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)


def expected_nbytes(dtype: str, shape: tuple[int, ...]) -> int | None:
    """numel * bits / 8, or None when the element count does not fill whole bytes."""
    return whole_bytes(dtype, math.prod(shape))


def read_header(path: Path) -> ShardHeader:
    """Parse and validate a shard header; raise CheckpointError naming the file and the problem."""
    name = path.name
    try:
        with open_regular(path) as f:
            file_nbytes = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{name}: file is {file_nbytes} bytes, too short for a safetensors header")
            (header_nbytes,) = struct.unpack("<Q", prefix)
            if header_nbytes > MAX_HEADER_NBYTES:
                raise CheckpointError(
                    f"{name}: header length {header_nbytes} is absurd (limit {MAX_HEADER_NBYTES} bytes); "
                    "not a safetensors file"
                )
            if 8 + header_nbytes > file_nbytes:
                raise CheckpointError(
                    f"{name}: header length {header_nbytes} runs past the end of the file ({file_nbytes} bytes)"
                )
            raw = f.read(header_nbytes)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read: {e.strerror or e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{name}: header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: header is not a JSON object")
    data_start = 8 + header_nbytes
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(f"{name}: __metadata__ must map strings to strings")
    entries = [_parse_entry(path, tensor_name, info, data_start) for tensor_name, info in header.items()]
    _check_layout(path, entries, file_nbytes - data_start, data_start)
    return ShardHeader(path, data_start, metadata, tuple(entries))


def _parse_entry(path: Path, tensor_name: str, info: object, data_start: int) -> TensorEntry:
    where = f"{path.name}: tensor '{tensor_name}'"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} is not a [begin, end] pair")
    nbytes = expected_nbytes(dtype, tuple(shape))
    if nbytes != offsets[1] - offsets[0]:
        raise CheckpointError(
            f"{where}: shape {shape} of {dtype} needs {nbytes} bytes but data_offsets span "
            f"{offsets[1] - offsets[0]}"
        )
    return TensorEntry(tensor_name, dtype, tuple(shape), path, data_start + offsets[0], data_start + offsets[1])


def _check_layout(path: Path, entries: list[TensorEntry], data_nbytes: int, data_start: int) -> None:
    """Offsets must tile the data section exactly: no overlap, no gap, nothing past the end, no trailer."""
    position = data_start
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin < position:
            raise CheckpointError(f"{path.name}: tensor '{entry.name}' overlaps the tensor before it")
        if entry.begin > position:
            raise CheckpointError(
                f"{path.name}: gap of {entry.begin - position} bytes before tensor '{entry.name}'"
            )
        position = entry.end
    end = data_start + data_nbytes
    if position > end:
        raise CheckpointError(
            f"{path.name}: tensor data runs to byte {position} but the file has {end} bytes (truncated?)"
        )
    if position < end:
        raise CheckpointError(f"{path.name}: {end - position} trailing bytes after the last tensor")


def read_rows(entry: TensorEntry) -> np.ndarray:
    """Read-only (rows, row_nbytes) uint8 view of a tensor; valid for any byte-aligned dtype."""
    if entry.nbytes == 0:
        return np.zeros((entry.shape[0] if entry.shape else 0, 0), np.uint8)
    mm = np.memmap(entry.path, np.uint8, mode="r", offset=entry.begin, shape=(entry.nbytes,))
    rows = entry.shape[0] if entry.shape else 1
    return mm.reshape(rows, entry.nbytes // rows)


def read_bytes(entry: TensorEntry) -> bytes:
    """The whole tensor's bytes (for small tensors only)."""
    with open(entry.path, "rb") as f:
        return os.pread(f.fileno(), entry.nbytes, entry.begin)


GAP_NBYTES = 64 * 2**10  # rows closer than this are read through in one pread rather than one pread each
SPAN_NBYTES = 2**20  # at most this much is read through at once (the scratch buffer it needs)


def pread_rows(fd_in: int, base: int, row_nbytes: int, rows: np.ndarray, view: memoryview) -> None:
    """Read rows `rows` (of row_nbytes each, from file offset `base`) into `view`, in any order.

    Ascending rows less than GAP_NBYTES apart are read as one span (at most SPAN_NBYTES) and picked from it:
    a trim keeping every ninth row of an embedding costs a few large reads, not one system call per row. A span
    of consecutive rows is read straight into `view`."""
    if len(rows) == 0 or row_nbytes == 0:
        return
    rows = np.asarray(rows, np.int64)
    steps = np.diff(rows)
    gap_rows = max(1, GAP_NBYTES // row_nbytes)
    breaks = np.flatnonzero((steps < 1) | (steps > gap_rows)) + 1
    max_span = max(1, SPAN_NBYTES // row_nbytes)
    for group_start, group_end in zip(np.concatenate([[0], breaks]).tolist(),
                                      np.concatenate([breaks, [len(rows)]]).tolist()):
        start = group_start
        while start < group_end:
            first = int(rows[start])
            end = start + int(np.searchsorted(rows[start:group_end], first + max_span))
            span = int(rows[end - 1]) - first + 1
            target = view[start * row_nbytes : end * row_nbytes]
            if span == end - start:  # consecutive rows: straight into place
                _pread_into(fd_in, target, base + first * row_nbytes)
            else:
                scratch = bytearray(span * row_nbytes)
                _pread_into(fd_in, memoryview(scratch), base + first * row_nbytes)
                picked = np.frombuffer(scratch, np.uint8).reshape(span, row_nbytes)[rows[start:end] - first]
                np.frombuffer(target, np.uint8)[:] = picked.reshape(-1)
            start = end


def _pread_into(fd_in: int, target: memoryview, offset: int) -> None:
    while target:
        got = os.preadv(fd_in, [target], offset)
        if got == 0:
            raise OSError(f"unexpected end of file at byte {offset}")
        target, offset = target[got:], offset + got


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What the writer needs to know of a tensor before its bytes arrive."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        nbytes = expected_nbytes(self.dtype, self.shape)
        assert nbytes is not None, f"{self.name}: packed dtype"
        return nbytes


def canonical_order(specs: list[TensorSpec]) -> list[TensorSpec]:
    """safetensors' own order: dtype descending (by enum position), then name ascending."""
    return sorted(specs, key=lambda s: (-DTYPE_RANK[s.dtype], s.name))


def encode_header(specs: list[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length plus compact JSON header, padded with spaces as safetensors does."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text


class ShardWriter:
    """Writes one shard as a state machine: add specs, write the header, then each tensor in header order.

    Tensor bytes are never buffered here: `write_tensor` takes a callable that streams them into the file.
    """

    def __init__(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        self.path = path
        self.metadata = metadata
        self._specs: list[TensorSpec] = []
        self._order: list[TensorSpec] | None = None
        self._next = 0
        self._file = None

    def add(self, spec: TensorSpec) -> None:
        if self._order is not None:
            raise RuntimeError(f"ShardWriter: add('{spec.name}') after write_header")
        self._specs.append(spec)

    def write_header(self) -> list[TensorSpec]:
        """Write the header and return the specs in the order their bytes must follow."""
        self._order = canonical_order(self._specs)
        self._file = open(self.path, "wb", buffering=0)
        write_all(self._file.fileno(), encode_header(self._order, self.metadata))
        return self._order

    def write_tensor(self, name: str, fill) -> None:
        """`fill(fd)` must write exactly the tensor's nbytes at the file descriptor's current position."""
        assert self._order is not None and self._file is not None, "ShardWriter: write_header first"
        if self._next >= len(self._order) or self._order[self._next].name != name:
            expected = self._order[self._next].name if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"ShardWriter: expected '{expected}', got '{name}'")
        spec = self._order[self._next]
        fd = self._file.fileno()
        start = os.lseek(fd, 0, os.SEEK_CUR)
        fill(fd)
        written = os.lseek(fd, 0, os.SEEK_CUR) - start
        if written != spec.nbytes:
            raise RuntimeError(f"ShardWriter: '{name}' wrote {written} bytes, expected {spec.nbytes}")
        self._next += 1

    def close(self) -> None:
        if self._file is None:
            return
        if self._order is not None and self._next != len(self._order):
            self._file.close()
            raise RuntimeError(f"ShardWriter: closed after {self._next} of {len(self._order)} tensors")
        self._file.close()  # durability is the caller's: execute.apply_plan syncs the whole folder at the end
        self._file = None


def write_all(fd: int, data) -> None:
    """os.write may write less than asked; loop until every byte is out."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]
