"""What every container gives the rest of surgery: its tensor files, each tensor a typed byte range.

A safetensors folder (formats/hf_folder.Checkpoint, entries formats/safetensors.TensorEntry) and a GGUF file
(formats/gguf: parts of GgufFile, tensors GgufTensor) both meet these protocols, so the executor, the byte
comparisons and the reports work on either without knowing which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class TensorSource(Protocol):
    """One tensor: where its bytes are in which file, its numpy-order shape, and the bytes of one slice."""

    name: str
    path: Path
    begin: int

    @property
    def end(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...

    def row_nbytes(self, axis: int = 0) -> int: ...


class Container(Protocol):
    """A checkpoint's tensor files (shards or GGUF parts), each with its tensors in file order."""

    def tensor_files(self) -> list[tuple[Path, list[TensorSource]]]: ...
