"""Ops that compute tensors: what an output tensor is, when it is not a byte range moved by the streaming
executor (edit/execute.py: copy, gather, take).

- `Copy`: a source tensor's bytes, unchanged.
- `Compute`: decoded F32/F16/BF16 values in, encoded bytes out (dtypes.decode / dtypes.encode). Its `value` maps
  its group's prepared value (a decomposition, a product of factors) to this tensor's float values.

Memory budget, as the writer (edit/compute.py) runs them: one group at a time, so the peak is the largest
group's prepared value (one decoded matrix [m, n] in float32, or float64 up to 2**20 elements, with its factors:
about (m*n + r*(m + n)) * 8 bytes) plus one encoded output tensor; nothing grows with the model.
`factor` (SVD into two factors), `unfactor` (their product) and `distill`'s output are written with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from surgery.dtypes import encode
from surgery.formats.safetensors import TensorEntry, expected_nbytes


@dataclass(frozen=True)
class Copy:
    name: str
    entry: TensorEntry
    key: str

    @property
    def dtype(self) -> str:
        return self.entry.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.entry.shape


@dataclass(frozen=True)
class Compute:
    name: str
    dtype: str
    shape: tuple[int, ...]
    key: str
    value: Callable[[object], np.ndarray]  # the group's prepared value -> this tensor's float values

    def encoded(self, prepared: object) -> bytes:
        """Decoded values in (from the group's prepared value), encoded bytes out."""
        return encode(self.value(prepared), self.dtype)


Op = Copy | Compute


def nbytes(op: Op) -> int:
    return expected_nbytes(op.dtype, op.shape)

