"""The byte comparisons every check uses: a written tensor against its source, every row or a sample of them.

The in-run checks (edit/checks.py, before an output is moved into place) sample; `surgery verify`
(reports/) reads everything. Both call these, on safetensors entries and GGUF tensors alike (anything with
path, begin, end, nbytes, shape and row_nbytes).
"""

from __future__ import annotations

import os

import numpy as np

from surgery.formats.base import TensorSource
from surgery.formats.safetensors import READ_BLOCK_NBYTES, pread_rows

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
