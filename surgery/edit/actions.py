"""Tensor actions and shard plans, the vocabulary every verb's plan is written in; what else OUT holds.

A TensorAction names one output tensor, its source entry and its operation: "copy" (bytes unchanged, maybe
under a new name), "gather" (vocabulary rows through the plan's row source) or "take" (kept rows and columns).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.errors import CheckpointError
from surgery.formats.hf_folder import OTHER_WEIGHT_SUFFIXES, Checkpoint
from surgery.formats.safetensors import TensorEntry, expected_nbytes

# vocabularies in formats surgery does not rewrite: never copied stale beside a trimmed model
UNREWRITTEN_TOKENIZER_FILES = ("*.tiktoken", "tiktoken.model", "tekken*.json")


@dataclass(frozen=True, slots=True)
class TensorAction:
    name: str
    shard: str
    action: str  # "gather" (vocab axis indexed by row_source), "take" (rows/cols) or "copy" (bytes unchanged)
    dtype: str
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    axis: int | None
    role: str | None
    source: str | None = None  # the source tensor's name when it is renamed (drop-layers)
    rows: np.ndarray | None = field(default=None, compare=False)  # "take": kept rows (axis 0), None for all
    cols: np.ndarray | None = field(default=None, compare=False)  # "take": kept columns (axis 1), None for all
    entry: TensorEntry | None = field(default=None, compare=False, repr=False)  # the source tensor: bytes and place

    @property
    def source_name(self) -> str:
        return self.source or self.name

    @property
    def old_nbytes(self) -> int:
        return expected_nbytes(self.dtype, self.old_shape)

    @property
    def new_nbytes(self) -> int:
        return expected_nbytes(self.dtype, self.new_shape)


@dataclass(frozen=True, slots=True)
class ShardPlan:
    name: str
    metadata: dict[str, str] | None
    actions: tuple[TensorAction, ...]
    rewritten: bool = False  # tensors renamed or left out: the file is written anew, never copied whole

    @property
    def changed(self) -> bool:
        return self.rewritten or any(a.action == "gather" for a in self.actions)


def action_totals(actions: list[TensorAction]) -> dict[str, int]:
    """Parameters and bytes before and after a trim."""
    return {
        "params_before": sum(int(np.prod(a.old_shape)) for a in actions),
        "params_after": sum(int(np.prod(a.new_shape)) for a in actions),
        "bytes_before": sum(a.old_nbytes for a in actions),
        "bytes_after": sum(a.new_nbytes for a in actions),
    }


def other_files(ckpt: Checkpoint, rewritten: dict, record_name: str, *, vocabulary_changes: bool = True
                ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The files and folders copied into OUT as they are, and those left out (other weight formats)."""
    written = set(rewritten) | {s.path.name for s in ckpt.shards} | {record_name}
    written.update(index.name for index in ckpt.indexes)
    copied, skipped = [], []
    for path in sorted(ckpt.root.iterdir()):
        if path.name in written or path.name.startswith("."):
            continue
        if vocabulary_changes and any(fnmatch.fnmatchcase(path.name, p) for p in UNREWRITTEN_TOKENIZER_FILES):
            raise CheckpointError(
                f"{path.name}: a tokenizer file surgery does not rewrite; copied, it would no longer match the "
                "trimmed vocabulary", hint=f"trim a copy of the folder without {path.name}")
        (skipped if _holds_weights(path) else copied).append(path.name)
    return tuple(copied), tuple(skipped)


def _holds_weights(path: Path) -> bool:
    """Other weight files, or a folder holding any (Llama-3's original/consolidated.00.pth): they would still
    carry the full vocabulary, so they are not copied into OUT."""
    weight_suffixes = (*OTHER_WEIGHT_SUFFIXES, ".safetensors")
    if path.is_dir():
        return any(p.suffix in weight_suffixes for p in path.rglob("*") if p.is_file())
    return path.suffix in OTHER_WEIGHT_SUFFIXES


@dataclass(frozen=True, slots=True)
class FolderEdit:
    """What every plan for a folder carries beside its own decisions: the shards to write, the indexes to rebuild,
    the files rewritten, copied and left out, the config changes and the notes. The executor and the staging
    module need nothing else (and `rows_for` when the verb gathers rows)."""

    src: Path
    shards: tuple[ShardPlan, ...]
    indexes: tuple  # formats.hf_folder.ShardIndex: index files to rebuild, with the shards each lists
    files: dict  # name -> new bytes
    copied: tuple[str, ...]  # names copied unchanged (files and folders)
    skipped: tuple[str, ...]  # other weight formats, not carried into OUT
    config_patches: tuple
    notes: tuple[str, ...]

    def tensor_actions(self) -> list[TensorAction]:
        return [action for shard in self.shards for action in shard.actions]

    def output_json(self, written: list[Path]) -> str:
        """The output as `--json` names it: the folder."""
        return str(written[0])

    def check_files(self, out: Path) -> list[str]:
        """The in-run checks that read no shard (configs, tokenizer files): the executor runs them while the
        shards are still being copied. A verb whose files need more than the configs' sizes overrides it."""
        return []

    def check_written(self, out: Path) -> None:
        """The in-run check of the written folder, before it is moved into place: every tensor, sampled."""
        from surgery.edit.checks import check_folder_slices

        check_folder_slices(self, out)

    def slices(self) -> list:
        """Every written tensor as the checker sees it (edit/checks.Planned): taken or copied, or gathered along
        its first axis (by the plan's rows_for). A gather along another axis (a trim's [1, vocab] bias) is checked
        by the trim's own checks, not here."""
        from surgery.edit.checks import Planned

        planned = []
        for a in self.tensor_actions():
            rows = a.rows
            if a.action == "gather":
                if a.axis != 0:
                    continue
                rows = self.rows_for(a)
            planned.append(Planned(a.name, a.entry, rows, a.cols, (a.dtype, tuple(a.new_shape)), a.source is not None))
        return planned

    def rows_for(self, action):  # only a trim gathers rows (by its row source); every other verb takes or copies
        raise AssertionError(f"{type(self).__name__} gathers no rows")

    def container_json(self) -> dict:  # a plan's summary: its config patches
        return {"config_patches": self.patches_json()}

    def container_lines(self) -> list[str]:
        return [f"config: {p.file} {p.key}: {p.old} -> {p.new}" for p in self.config_patches]

    def patches_json(self) -> list[dict]:
        return [{"file": p.file, "key": p.key, "old": p.old, "new": p.new} for p in self.config_patches]
