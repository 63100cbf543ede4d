"""The byte comparisons every check uses: a written tensor against its source, every row or a sample of them.

The in-run checks (edit/checks.py, before an output is moved into place) sample; `surgery verify`
(reports/) reads everything. Both call these, on safetensors entries and GGUF tensors alike (anything with
path, begin, end, nbytes, shape and row_nbytes).
"""

from __future__ import annotations

import os

import numpy as np

from surgery.formats.base import TensorSource
from surgery.formats.safetensors import READ_BLOCK_NBYTES, pread_rows, read_rows

EDGE_NBYTES = 4096


def first_bad_row(a: TensorSource, b: TensorSource, axis: int, old_ids: np.ndarray, positions: np.ndarray | None = None) -> int | None:
    """The first new row (of `positions`, else of every row) whose bytes differ from source row old_ids[row]."""
    row_nbytes = a.row_nbytes(axis)
    outer = int(np.prod(a.shape[:axis]))
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        for outer_index in range(outer):
            base_a = a.begin + outer_index * a.shape[axis] * row_nbytes
            base_b = b.begin + outer_index * len(old_ids) * row_nbytes
            if positions is not None:
                for row in positions.tolist():
                    want = os.pread(fa.fileno(), row_nbytes, base_a + int(old_ids[row]) * row_nbytes)
                    if os.pread(fb.fileno(), row_nbytes, base_b + row * row_nbytes) != want:
                        return row
                continue
            per_block = max(1, READ_BLOCK_NBYTES // max(row_nbytes, 1))
            for start in range(0, len(old_ids), per_block):
                block = old_ids[start : start + per_block]
                want = bytearray(len(block) * row_nbytes)
                pread_rows(fa.fileno(), base_a, row_nbytes, block, memoryview(want))
                got = os.pread(fb.fileno(), len(want), base_b + start * row_nbytes)
                if got != want:
                    diff = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(want, np.uint8))
                    return start + int(diff[0]) // row_nbytes
    return None


def same_bytes(a: TensorSource, b: TensorSource, *, full: bool = True) -> bool:
    """Whether two tensors hold the same bytes: all of them, or (full=False) their first and last 4 KiB."""
    if not full:
        return edge_bytes(a) == edge_bytes(b)
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        for offset in range(0, a.nbytes, READ_BLOCK_NBYTES):
            size = min(READ_BLOCK_NBYTES, a.nbytes - offset)
            if os.pread(fa.fileno(), size, a.begin + offset) != os.pread(fb.fileno(), size, b.begin + offset):
                return False
    return True


def edge_bytes(entry: TensorSource) -> bytes:
    """First and last 4 KiB of a tensor."""
    n = min(EDGE_NBYTES, entry.nbytes)
    with open(entry.path, "rb") as f:
        return os.pread(f.fileno(), n, entry.begin) + os.pread(f.fileno(), n, entry.end - n)


def first_different_row(src: TensorSource, got: TensorSource, rows: np.ndarray | None, cols: np.ndarray | None,
                        positions: np.ndarray | None = None) -> int | None:
    """The first output row (of `positions`, else of every row) whose bytes differ from source row rows[row]
    (its columns `cols`; every row and column when None). Sampled positions are read row by row with pread;
    every row, in blocks through memory maps. Memory stays flat either way."""
    if not src.shape:
        return None if read_rows(src).tobytes() == read_rows(got).tobytes() else 0
    rows = np.arange(src.shape[0]) if rows is None else np.asarray(rows)
    if positions is not None:
        if cols is None:  # whole rows: the row comparison every check uses
            return first_bad_row(src, got, 0, rows, positions)
        return _first_different_sampled(src, got, rows, cols, positions)
    source, output = read_rows(src), read_rows(got)
    positions = np.arange(len(rows))
    per_block = max(1, READ_BLOCK_NBYTES // max(source.shape[1], 1))
    for start in range(0, len(positions), per_block):
        at = positions[start : start + per_block]
        want = source[rows[at]]
        if cols is not None:
            want = want.reshape(len(want), src.shape[1], -1)[:, cols].reshape(len(want), -1)
        have = output[at]
        if want.shape != have.shape:
            return int(at[0])
        if not np.array_equal(want, have):
            return int(at[int(np.argmax(np.any(want != have, axis=1)))])
    return None


def _first_different_sampled(src: TensorSource, got: TensorSource, rows: np.ndarray, cols: np.ndarray,
                             positions: np.ndarray) -> int | None:
    """Sampled rows of a tensor cut in both axes: each source row read, its kept columns taken, compared."""
    src_row, got_row = src.row_nbytes(0), got.row_nbytes(0)
    with open(src.path, "rb") as fa, open(got.path, "rb") as fb:
        for position in positions.tolist():
            want = os.pread(fa.fileno(), src_row, src.begin + int(rows[position]) * src_row)
            want = np.frombuffer(want, np.uint8).reshape(src.shape[1], -1)[cols].tobytes()
            if os.pread(fb.fileno(), got_row, got.begin + position * got_row) != want:
                return position
    return None
