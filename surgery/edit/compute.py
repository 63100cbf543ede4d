"""Folders whose tensors are computed (low-rank factors, their products), one or several outputs in one pass.

Every output tensor is an op (edit/ops.py): `Copy` or `Compute`. Ops carry a group key (the module they belong
to); this writer prepares each group's shared value once (a decomposition, a product) and hands it to every op of
that group in every output, then lets it go: one matrix and its factors in memory at a time, however many outputs
a family has.

The outputs share the source's shard layout, so their tensors come in the same group order (safetensors orders a
shard by dtype, then name; a module's tensors share its name as a prefix).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

from surgery.edit.execute import copy_range, sync_tree, writing
from surgery.edit.ops import Compute, Copy, Op, nbytes
from surgery.formats.hf_folder import dump_json
from surgery.formats.safetensors import ShardWriter, TensorEntry, TensorSpec, write_all

Progress = Callable[[int], None]


@dataclass(frozen=True)
class OutputShard:
    name: str
    metadata: dict | None
    ops: tuple[Op, ...]


@dataclass(frozen=True)
class Output:
    """One output folder: its shards (in the source's shard order), small files and copied files."""

    shards: tuple[OutputShard, ...]
    files: dict  # name -> bytes
    copied: tuple[str, ...]
    index_name: str | None  # the shard index to rebuild (None for a single shard)
    index_metadata: dict | None = None

    def ops(self) -> list[Op]:
        return [op for shard in self.shards for op in shard.ops]


def folder_output(ckpt, targets, ops_of: Callable[[object], list], files: dict, own_file: str,
                  copy_op: Callable[[TensorEntry], Op] | None = None) -> Output:
    """An output in the source's shard layout: each tensor copied (or `copy_op(entry)`), except the tensors of a
    target (anything with `tensor_names`), replaced at the first of them by `ops_of(target)`; the source's other
    files copied (weights in other formats left out), its index rebuilt."""
    from surgery.edit.actions import other_files

    owner = {name: target for target in targets for name in target.tensor_names}
    copy_op = copy_op or (lambda entry: Copy(entry.name, entry, entry.name))
    shards = []
    for shard in ckpt.shards:
        ops: list = []
        for entry in shard.entries:
            target = owner.get(entry.name)
            if target is None:
                ops.append(copy_op(entry))
            elif entry.name == target.tensor_names[0]:  # a target's ops, once
                ops += ops_of(target)
        shards.append(OutputShard(shard.path.name, shard.metadata, tuple(ops)))
    copied, _ = other_files(ckpt, files, own_file, vocabulary_changes=False)
    index = ckpt.indexes[0] if ckpt.indexes else None
    return Output(tuple(shards), files, copied, index.name if index else None, index.metadata if index else None)


def check_written(output: Output, out: Path) -> dict[str, dict]:
    """Reopen every shard (our reader and safetensors): each op's tensor present with its shape and dtype, copies'
    edges equal to their source's. Returns shard name -> its written entries, for the verb's own checks."""
    from surgery.edit.checks import reopen_shard
    from surgery.edit.compare import edge_bytes
    from surgery.errors import VerifyError

    shards = {}
    for shard in output.shards:
        written = shards[shard.name] = reopen_shard(out / shard.name)
        for op in shard.ops:
            got = written.get(op.name)
            if got is None or got.shape != tuple(op.shape) or got.dtype != op.dtype:
                raise VerifyError(f"output {shard.name}: tensor '{op.name}' is missing or has the wrong shape or dtype")
            if isinstance(op, Copy) and edge_bytes(got) != edge_bytes(op.entry):
                raise VerifyError(f"output {shard.name}: tensor '{op.name}' differs from its source")
    return shards


def write_outputs(src: Path, outputs: list[Output], targets: list[Path], prepare: Callable[[str], object],
                  progress: Progress) -> None:
    """Write each output into its target folder (which must not exist yet), the shards in lockstep."""
    for target in targets:
        target.mkdir()
    for shard_index, source_shard in enumerate(outputs[0].shards):
        with writing(source_shard.name), open(src / source_shard.name, "rb") as source:
            _write_shard(source.fileno(), [o.shards[shard_index] for o in outputs], targets, prepare, progress)
    for output, target in zip(outputs, targets):
        _write_small_files(src, output, target)
        sync_tree(target)


def _write_shard(fd_in: int, shards: list[OutputShard], targets: list[Path], prepare, progress: Progress) -> None:
    writers, groups = [], []
    for shard, target in zip(shards, targets):
        writer = ShardWriter(target / shard.name, shard.metadata)
        ops = {op.name: op for op in shard.ops}
        for op in shard.ops:
            writer.add(TensorSpec(op.name, op.dtype, op.shape))
        order = [ops[spec.name] for spec in writer.write_header()]
        writers.append(writer)
        groups.append([(key, list(members)) for key, members in groupby(order, key=lambda op: op.key)])
    keys = [key for key, _ in groups[0]]
    if any([key for key, _ in g] != keys for g in groups):
        raise RuntimeError("write_outputs: the outputs' tensors are not in the same module order")
    for position, key in enumerate(keys):
        needed = any(isinstance(op, Compute) for g in groups for op in g[position][1])
        value = prepare(key) if needed else None
        for writer, g in zip(writers, groups):
            for op in g[position][1]:
                if isinstance(op, Copy):
                    writer.write_tensor(op.name, lambda fd, e=op.entry: copy_range(fd_in, fd, e.begin, e.nbytes,
                                                                                    progress))
                else:
                    data = op.encoded(value)
                    writer.write_tensor(op.name, lambda fd, data=data: write_all(fd, data))
                    progress(len(data))
        del value
    for writer in writers:
        writer.close()


def _write_small_files(src: Path, output: Output, target: Path) -> None:
    import shutil

    if output.index_name is not None:
        ops = [(op, shard.name) for shard in output.shards for op in shard.ops]
        metadata = dict(output.index_metadata or {})
        metadata["total_size"] = sum(nbytes(op) for op, _ in ops)
        if "total_parameters" in metadata:
            metadata["total_parameters"] = sum(int(np.prod(op.shape)) for op, _ in ops)
        weight_map = {op.name: shard for op, shard in sorted(ops, key=lambda pair: pair[0].name)}
        with writing(output.index_name):
            (target / output.index_name).write_bytes(dump_json({"metadata": metadata, "weight_map": weight_map}))
    for name, content in output.files.items():
        with writing(name):
            (target / name).write_bytes(content)
    for name in output.copied:
        with writing(name):
            if (src / name).is_dir():
                shutil.copytree(src / name, target / name, symlinks=True)
            else:
                shutil.copy2(src / name, target / name)
