"""The user's keep list: ids.txt parsed and checked, and the old_to_new map built from the final kept set."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.errors import InputError

_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class KeepList:
    """Sorted unique ids the user asked for, and what parsing noticed on the way."""

    path: Path
    ids: tuple[int, ...]
    duplicates: int

    @classmethod
    def load(cls, path: Path, n_vocab: int) -> KeepList:
        """Parse integers (several per line allowed, separated by spaces or commas; `#` starts a comment)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise InputError(f"{path}: keep list not found") from e
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read keep list: {e}") from e
        seen: set[int] = set()
        duplicates = 0
        for line_no, line in enumerate(text.splitlines(), start=1):
            for word in line.split("#", 1)[0].replace(",", " ").split():
                if not _INT.fullmatch(word):
                    raise InputError(f"{path.name}:{line_no}: '{word}' is not an integer token id")
                old_id = int(word)
                if old_id < 0:
                    raise InputError(f"{path.name}:{line_no}: id {old_id} is negative")
                if old_id >= n_vocab:
                    raise InputError(
                        f"{path.name}:{line_no}: id {old_id} is out of range (vocab has {n_vocab} ids: 0..{n_vocab - 1})"
                    )
                if old_id in seen:
                    duplicates += 1
                seen.add(old_id)
        if not seen:
            raise InputError(f"{path.name}: keep list has no ids")
        return cls(path, tuple(sorted(seen)), duplicates)

    @classmethod
    def of(cls, ids, n_vocab: int) -> KeepList:
        """The same checks for ids given in Python (an iterable of ints)."""
        seen: set[int] = set()
        duplicates = 0
        for old_id in ids:
            if isinstance(old_id, bool) or not isinstance(old_id, (int, np.integer)):
                raise InputError(f"keep ids: {old_id!r} is not an integer token id")
            old_id = int(old_id)
            if old_id < 0:
                raise InputError(f"keep ids: id {old_id} is negative")
            if old_id >= n_vocab:
                raise InputError(f"keep ids: id {old_id} is out of range (vocab has {n_vocab} ids: 0..{n_vocab - 1})")
            duplicates += old_id in seen
            seen.add(old_id)
        if not seen:
            raise InputError("keep ids: no ids")
        return cls(Path("keep ids"), tuple(sorted(seen)), duplicates)


def build_old_to_new(kept_ids: np.ndarray, n_rows: int) -> np.ndarray:
    """int64 array of length n_rows: new id for each kept old id (in original order), -1 for dropped ids."""
    old_to_new = np.full(n_rows, -1, dtype=np.int64)
    old_to_new[kept_ids] = np.arange(len(kept_ids), dtype=np.int64)
    return old_to_new
