"""apply_plan: the single pass over tensor bytes, into a directory that is not yet the output."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from surgery.edit.actions import ShardPlan, TensorAction
from surgery.errors import OutputFullError
from surgery.formats.base import TensorSource
from surgery.formats.gguf import data_offsets, encode_header
from surgery.formats.hf_folder import dump_json
from surgery.formats.safetensors import (
    READ_BLOCK_NBYTES,
    ShardWriter,
    TensorSpec,
    pread_rows,
    write_all,
)

LOG = logging.getLogger(__name__)
COPY_CHUNK = 64 * 1024 * 1024
SHARD_WORKERS = int(os.environ.get("SURGERY_SHARD_WORKERS", "2"))

Progress = Callable[[int], None]  # called with the number of bytes just written


FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@contextlib.contextmanager
def writing(name: str):
    """A full disk, quota or file-size limit while writing `name` becomes one clear error naming the file."""
    try:
        yield
    except OSError as e:
        if e.errno not in FULL_ERRNOS:
            raise
        what = "the file-size limit" if e.errno == errno.EFBIG else "a full disk or quota"
        raise OutputFullError(f"writing {name}: stopped by {what} ({e.strerror}); nothing was written, "
                              "the output folder was not created") from e


def apply_plan(plan, out: Path, *, link_unchanged: bool = False, progress: Progress | None = None) -> None:
    """Write the plan's folder into `out` (which must not exist yet).

    The shards are written by worker threads while this thread writes the small files and runs the plan's
    `check_files` on them: the copies are syscalls that release the GIL, so the checks cost no wall time.
    """
    progress = progress or (lambda nbytes: None)
    out.mkdir()
    with ThreadPoolExecutor(max_workers=SHARD_WORKERS) as pool:
        # shards are independent files; two streams keep the disk busier than one (cp -r copies one at a time)
        writes = [pool.submit(_write_one, plan, shard, out, link_unchanged, progress) for shard in plan.shards]
        try:
            for name, write in _small_files(plan, out):
                with writing(name):
                    write()
            plan.check_files(out)
        finally:
            for done in writes:  # a shard's error first: a full disk explains a failed check
                done.result()
    sync_tree(out)


def _small_files(plan, out: Path):
    """(name, write) for the index, the rewritten files, the copied files and the trim record."""
    for index in plan.indexes:
        yield index.name, lambda index=index: _write_index(plan, index, out / index.name)
    for name, content in plan.files.items():
        yield name, lambda name=name, content=content: (out / name).write_bytes(content)
    for name in plan.copied:
        source = plan.src / name
        if source.is_dir():
            yield name, lambda source=source, name=name: shutil.copytree(source, out / name, symlinks=True)
        else:
            yield name, lambda source=source, name=name: shutil.copy2(source, out / name)
    yield plan.record_name, lambda: (out / plan.record_name).write_bytes(dump_json(plan.record()))


def sync_tree(root: Path) -> None:
    """fsync every file and folder once everything is written, so the kernel could write back meanwhile.

    The output is renamed into place only after this: a crash never leaves a finished-looking folder whose
    data is not on disk.
    """
    for path in sorted(root.rglob("*"), key=lambda p: p.is_dir()):
        if not path.is_symlink():  # a link copied from a subfolder: its target is not ours to sync
            _fsync(path)
    _fsync(root)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_one(plan, shard: ShardPlan, out: Path, link_unchanged: bool, progress: Progress) -> None:
    src = plan.src / shard.name
    with writing(shard.name):
        if shard.changed:
            _write_shard(plan, shard, src, out / shard.name, progress)
        else:
            _copy_unchanged(src, out / shard.name, link_unchanged, progress)


def _copy_unchanged(src: Path, dst: Path, link: bool, progress: Progress) -> None:
    """A shard with no vocab tensor is the same file: copy it whole (or hardlink it on request)."""
    if link:
        try:
            # resolve first: in a Hugging Face cache snapshot every file is a symlink into blobs/, and
            # link() would copy the (relative, now dangling) symlink rather than the file
            os.link(src.resolve(), dst)
            progress(src.stat().st_size)
            return
        except OSError as e:  # other filesystem, or links not allowed: fall back to a copy
            LOG.info("hardlink of %s failed (%s); copying", src.name, e.strerror)
    with open(src, "rb") as source, open(dst, "wb") as target:
        copy_range(source.fileno(), target.fileno(), 0, os.fstat(source.fileno()).st_size, progress)


def _write_shard(plan, shard: ShardPlan, src: Path, dst: Path, progress: Progress) -> None:
    """Every action carries its source entry (the plan read the header once); no header is read again."""
    actions = {a.name: a for a in shard.actions}
    writer = ShardWriter(dst, shard.metadata)
    for action in shard.actions:
        writer.add(TensorSpec(action.name, action.dtype, action.new_shape))
    with open(src, "rb") as source:
        fd_in = source.fileno()
        for spec in writer.write_header():
            action = actions[spec.name]
            entry = action.entry
            if action.action == "take":
                writer.write_tensor(spec.name, lambda fd_out, e=entry, a=action: take_rows_cols(fd_in, fd_out, e, a.rows,
                                                                                               a.cols))
                progress(action.new_nbytes)
            elif action.action == "copy":
                writer.write_tensor(spec.name, lambda fd_out, e=entry: copy_range(fd_in, fd_out, e.begin, e.nbytes,
                                                                                   progress))
            else:
                writer.write_tensor(spec.name, lambda fd_out, e=entry, a=action: gather_rows(fd_in, fd_out, e, a,
                                                                                         plan.rows_for(a)))
                progress(action.new_nbytes)
    writer.close()


def copy_range(fd_in: int, fd_out: int, begin: int, nbytes: int, progress: Progress) -> None:
    """Kernel-side copy where the OS allows it (copy_file_range), else read and write in chunks."""
    offset, remaining = begin, nbytes
    while remaining:
        try:
            copied = os.copy_file_range(fd_in, fd_out, min(remaining, COPY_CHUNK), offset)
        except OSError:
            copied = 0
        if copied == 0:
            chunk = os.pread(fd_in, min(remaining, COPY_CHUNK), offset)
            write_all(fd_out, chunk)
            copied = len(chunk)
        offset += copied
        remaining -= copied
        progress(copied)


def take_rows_cols(fd_in: int, fd_out: int, entry: TensorSource, rows: np.ndarray | None, cols: np.ndarray | None
                   ) -> None:
    """Rows (axis 0) and columns (axis 1) of a matrix or vector, read a block of rows at a time: the kept rows
    with one pread per run, the kept columns taken from that block in memory (whole elements, any dtype)."""
    n_rows = entry.shape[0]
    row_nbytes = entry.row_nbytes(0)
    rows = np.arange(n_rows) if rows is None else rows
    per_block = max(1, READ_BLOCK_NBYTES // max(row_nbytes, 1))
    for start in range(0, len(rows), per_block):
        block = rows[start : start + per_block]
        buffer = bytearray(len(block) * row_nbytes)
        pread_rows(fd_in, entry.begin, row_nbytes, block, memoryview(buffer))
        if cols is None:
            write_all(fd_out, buffer)
        else:
            cells = np.frombuffer(buffer, np.uint8).reshape(len(block), entry.shape[1], -1)
            write_all(fd_out, np.ascontiguousarray(cells[:, cols, :]))


def gather_rows(fd_in: int, fd_out: int, entry: TensorSource, action: TensorAction, row_source: np.ndarray) -> None:
    """Take rows `row_source` along the vocab axis, reading only the runs of kept rows, one block at a time."""
    axis = action.axis
    outer = int(np.prod(entry.shape[:axis]))
    n_rows = entry.shape[axis]
    row_nbytes = entry.row_nbytes(axis)
    for outer_index in range(outer):
        base = entry.begin + outer_index * n_rows * row_nbytes
        rows_per_block = max(1, READ_BLOCK_NBYTES // max(row_nbytes, 1))
        buffer = bytearray(min(len(row_source), rows_per_block) * row_nbytes)
        for start in range(0, len(row_source), rows_per_block):
            block = row_source[start : start + rows_per_block]
            view = memoryview(buffer)[: len(block) * row_nbytes]
            pread_rows(fd_in, base, row_nbytes, block, view)
            write_all(fd_out, view)


def _write_index(plan, index, path: Path) -> None:
    """The index keeps its metadata, with total_size (and total_parameters if present) recomputed."""
    actions = [action for shard in plan.shards if shard.name in index.shards for action in shard.actions]
    metadata = dict(index.metadata or {})
    metadata["total_size"] = sum(a.new_nbytes for a in actions)
    if "total_parameters" in metadata:
        metadata["total_parameters"] = sum(int(np.prod(a.new_shape)) for a in actions)
    weight_map = {a.name: a.shard for a in sorted(actions, key=lambda a: a.name)}
    path.write_bytes(dump_json({"metadata": metadata, "weight_map": weight_map}))


def write_gguf_plan(plan, targets: list[Path], progress) -> None:
    """Write every part into `targets` (partial names), each tensor at its aligned offset, then fsync.

    `plan` gives `parts`, `part_kvs(index)`, `actions` (GgufAction) and, for gathered rows, `row_source`."""
    for index, (part, target) in enumerate(zip(plan.parts, targets)):
        kvs = plan.part_kvs(index)
        actions = [a for a in plan.actions if a.part == index]
        offsets = data_offsets([a.new_nbytes for a in actions], part.alignment)
        header = encode_header(part.version, kvs, [(a.name, a.new_ne, a.tensor.ggml_type, o)
                                                   for a, o in zip(actions, offsets)], part.alignment)
        with writing(target.name), open(part.path, "rb") as source, open(target, "wb") as out:
            fd_in, fd_out = source.fileno(), out.fileno()
            write_all(fd_out, header)
            for action in actions:
                if action.role:
                    gather_rows(fd_in, fd_out, action.tensor, action, plan.row_source)
                    progress(action.new_nbytes)
                elif action.rows is not None or action.cols is not None:
                    take_rows_cols(fd_in, fd_out, action.tensor, action.rows, action.cols)
                    progress(action.new_nbytes)
                else:
                    copy_range(fd_in, fd_out, action.tensor.begin, action.tensor.nbytes, progress)
                write_all(fd_out, b"\0" * (-action.new_nbytes % part.alignment))
            os.fsync(fd_out)
