"""Input paths as the containers accept them: regular files and folders only (a pipe or a device would block or
be read as something it is not), symlink loops and unreadable paths refused in one line."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from surgery.errors import CheckpointError, InputError

# a GGUF split over several files: `stem-00001-of-00003.gguf` (gguf-split's names)
SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def is_gguf(path: Path) -> bool:
    return Path(path).suffix == ".gguf" and not Path(path).is_dir()


def check_same_container(src: Path, out: Path) -> None:
    """`surgery verify` compares like with like: a folder with a folder, a GGUF file with a GGUF file."""
    if is_gguf(src) != is_gguf(out):
        kinds = ("a GGUF file" if is_gguf(src) else "a folder", "a GGUF file" if is_gguf(out) else "a folder")
        raise InputError(f"{out}: {kinds[1]}, but its source {src.name} is {kinds[0]}; verify compares an output "
                         "with the source it was cut from, in the same container")


def default_output(src: Path, tag: str) -> Path:
    """Beside the source: `ckpt/` -> `ckpt-TAG/`, `m.gguf` -> `m-TAG.gguf`, a split `m-00001-of-00003.gguf` ->
    `m-TAG-00001-of-00003.gguf`. The one naming rule of every verb."""
    src = Path(src)
    if not is_gguf(src):
        return src.parent / f"{src.resolve().name}-{tag}"
    match = SPLIT_NAME.match(src.name)
    if match:
        return src.with_name(f"{match['stem']}-{tag}-00001-of-{match['count']}.gguf")
    return src.with_name(f"{src.name.removesuffix('.gguf')}-{tag}.gguf")


def check_source(path: Path) -> None:
    """A checkpoint input: an existing regular file or folder (after symlinks). Missing paths are left to the
    reader, which names what it expected."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from e
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise CheckpointError(f"{path}: not a regular file or folder")


def open_regular(path: Path):
    """Open a regular file for reading; refuse a pipe, a device or a folder without opening it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from e
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file")
    return open(path, "rb")


def check_output_target(path: Path) -> None:
    """An output path must resolve: a symlink loop or an unreadable parent is refused before any work."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise InputError(f"{path}: cannot be used as the output: {e.strerror}") from e


def check_file_target(target: Path) -> None:
    """An output file may replace a file (with --force), never a directory, a pipe or a device."""
    if target.is_dir():
        raise InputError(f"{target}: is a directory; a GGUF output is a file", hint="name a file ending in .gguf")
    if target.exists() and not target.is_file():
        raise InputError(f"{target}: exists and is not a regular file")
