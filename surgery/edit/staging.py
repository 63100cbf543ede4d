"""Outputs are written beside their target under a partial name and renamed into place only when checked.

A partial name is `.NAME.partial-PID-XXXX`: never mistaken for output, and removed by the next run once its
process no longer runs.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from surgery.errors import InputError
from surgery.formats.paths import check_file_target, check_output_target

LOG = logging.getLogger("surgery")
PARTIAL = ".partial-"
Progress = Callable[[int], None]  # called with the number of bytes just written


def partial_path(target: Path) -> Path:
    return target.parent / f".{target.name}{PARTIAL}{os.getpid()}-{os.urandom(4).hex()}"


def remove_stale_partials(target: Path) -> None:
    """Leftovers of a run that was killed: their pid no longer runs. They never carry the output's name."""
    for stale in target.parent.glob(f".{target.name}{PARTIAL}*"):
        pid_text = stale.name.rsplit(PARTIAL, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            LOG.info("removing %s, left by an interrupted run", stale.name)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_folder_output(src: Path, out: Path, force: bool) -> None:
    check_output_target(out)
    src_resolved, dst = src.resolve(), out.resolve()
    if dst == src_resolved or src_resolved in dst.parents:
        raise InputError(f"{out}: output must not be CKPT or inside it (CKPT is never written to)")
    if dst in src_resolved.parents:
        raise InputError(f"{out}: output must not contain CKPT")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists", hint="pass --force to replace it")


def write_folder(plan, out: Path, link_unchanged: bool, progress: Progress) -> None:
    """Write into a sibling partial folder, check it (the plan's check_written raises on a failure), then move it
    to OUT; on any failure the partial folder is removed and the error raised."""
    from surgery.edit.execute import apply_plan

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = partial_path(out)
    try:
        apply_plan(plan, tmp, link_unchanged=link_unchanged, progress=progress)
        plan.check_written(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, out)


def write_folders(outs: list[Path], write: Callable[[list[Path]], None], check: Callable[[list[Path]], None]) -> None:
    """Several outputs of one run: `write(partials)` fills a sibling partial folder per output, `check(partials)`
    raises on a failure; only when every output passed are they moved into place (an existing OUT, with --force,
    is moved aside first). On any failure every partial folder is removed and the error raised."""
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out)
    partials = [partial_path(out) for out in outs]
    try:
        write(partials)
        check(partials)
    except BaseException:
        for tmp in partials:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for tmp, out in zip(partials, outs):
        _replace(tmp, out)


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():  # --force: the old OUT is moved aside first, then removed
        aside = out.parent / f".{out.name}.replaced-{os.urandom(4).hex()}"
        out.rename(aside)
        tmp.rename(out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        tmp.rename(out)


def write_gguf_verified(plan, out: Path, progress) -> list[Path]:
    """Write every part beside its target under a partial name, check them, then rename them into place.

    A run that is killed leaves only `.NAME.partial-PID-XXXX` files, which the next run removes.
    """
    from surgery.edit.execute import write_gguf_plan

    targets = plan.output_paths(out)
    for target in targets:
        check_file_target(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(target)
    partials = [partial_path(target) for target in targets]
    try:
        write_gguf_plan(plan, partials, progress)
        plan.check_output(partials)
        for partial, target in zip(partials, targets):
            os.replace(partial, target)
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise
    return targets


def check_output_path(src: Path, out: Path, force: bool) -> None:
    """Before any work: OUT is a place this run may write (a folder, or a .gguf file for a GGUF source)."""
    from surgery.edit.gguf_edit import check_gguf_output_path
    from surgery.formats.paths import is_gguf

    if is_gguf(src):
        check_gguf_output_path(src, out, force)
    else:
        check_folder_output(src, out, force)


def write_plan(plan, out: Path, progress, *, link_unchanged: bool = False) -> list[Path]:
    """Stage, write, check and commit one plan of either container; the written paths. A folder plan is checked
    by its check_files (during the copy) and check_written; a GGUF plan by its check_output."""
    from surgery.edit.gguf_edit import GgufEdit

    if isinstance(plan, GgufEdit):
        return write_gguf_verified(plan, out, progress)
    write_folder(plan, out, link_unchanged, progress)
    return [out]
