"""Reading a source's tensor files into the page cache while a plan is computed.

A trim spends most of a second on the CPU before it writes a byte (the tokenizer read, the merge closure, the
rewritten files), while the disk waits; the copy that follows then reads the source from the disk and writes the
output to it at once. A thread that reads the files meanwhile (one reused 1 MiB buffer: nothing stays resident)
lets the copy read from memory. It stops when the plan is done, so it never competes with the copy, and a
checkpoint larger than memory is read only as far as the plan's time allows.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from surgery.errors import CheckpointError
from surgery.formats.gguf import split_paths
from surgery.formats.paths import is_gguf

READ_NBYTES = 2**20


@contextlib.contextmanager
def prefetched(paths: Iterable[Path]) -> Iterator[None]:
    """Read `paths` (regular files only; others are skipped, unreadable ones too) in a background thread until
    the block ends."""
    stop = threading.Event()
    reader = threading.Thread(target=_read, args=(list(paths), stop), name="surgery-prefetch", daemon=True)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join()


def _read(paths: list[Path], stop: threading.Event) -> None:
    buffer = bytearray(READ_NBYTES)
    for path in paths:
        if stop.is_set():
            return
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe would block open(), a device never end
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            offset = 0
            while not stop.is_set():
                nbytes = os.preadv(fd, [buffer], offset)
                if nbytes <= 0:
                    break
                offset += nbytes
        except OSError:
            pass  # a hint only: the plan and the copy read the file themselves and report its errors
        finally:
            os.close(fd)


def tensor_files(src: Path) -> list[Path]:
    """The files a cut of `src` copies from: a folder's safetensors shards, or a GGUF file's parts (split_paths;
    a name it refuses is left for the plan to refuse, and only the file itself is read)."""
    src = Path(src)
    if not is_gguf(src):
        return sorted(src.glob("*.safetensors")) if src.is_dir() else []
    try:
        return split_paths(src)
    except CheckpointError:
        return [src]
