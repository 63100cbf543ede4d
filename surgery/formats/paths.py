"""Input paths as the containers accept them: regular files and folders only (a pipe or a device would block or
be read as something it is not), symlink loops and unreadable paths refused in one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from surgery.errors import CheckpointError, InputError


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
