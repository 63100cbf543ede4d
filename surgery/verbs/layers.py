"""drop-layers for a Hugging Face folder: which decoder layers stay, the tensors renamed to their rank among
them, the configs made consistent, every other tensor copied byte for byte.

Shard files keep the source's names (`model-00002-of-00004.safetensors`); a shard left with no tensor is not
written, and the index lists the rest. Mistral's native layout (`layers.N.*` in consolidated shards,
`n_layers` in params.json) is cut the same way in the same folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.edit.actions import FolderEdit, ShardPlan, TensorAction, other_files
from surgery.errors import CheckpointError, InputError, VerifyError
from surgery.formats.hf_folder import (
    CONFIG,
    NATIVE_CONFIG,
    Checkpoint,
    ShardIndex,
    dump_json,
)
from surgery.model.config_keys import ConfigPatch
from surgery.model.config_defaults import size, text_view
from surgery.model.layer_config import patch_layer_config

LAYERS_RECORD = "surgery_drop_layers.json"
IMPORTANCE_FORMAT = "surgery-importance/1"
# decoder layer tensors: `<prefix><index>.<rest>`; vision towers and encoders have other prefixes
DECODER_LAYER = re.compile(r"^(?P<prefix>model\.layers\.|model\.language_model\.layers\.|language_model\.model\.layers\."
                           r"|model\.text_model\.layers\.|layers\.)(?P<index>\d+)\.(?P<rest>.+)$")


def parse_layer_spec(spec: str, n_layers: int, option: str) -> set[int]:
    """`1,4-5` -> {1, 4, 5}: 0-based decoder layer indices, ranges inclusive."""
    chosen: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise InputError(f"{option} {spec}: '{part}' is not a layer index or a range like 4-7")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise InputError(f"{option} {spec}: range {part} runs backwards")
        if last >= n_layers:
            raise InputError(f"{option} {spec}: layer {last} is out of range (the model has {n_layers} layers: "
                             f"0..{n_layers - 1})")
        chosen.update(range(first, last + 1))
    return chosen


def choose_kept_layers(n_layers: int, *, drop: str | None = None, keep_layers: str | None = None,
                       tail: int | None = None, importance: Path | None = None, num_layers: int | None = None
                       ) -> list[int]:
    """The kept layer indices (ascending) from exactly one way of choosing them."""
    given = [name for name, value in (("--drop", drop), ("--keep-layers", keep_layers), ("--tail", tail),
                                      ("--importance", importance)) if value is not None]
    if len(given) != 1:
        raise InputError("choose exactly one of --drop, --keep-layers, --tail, --importance"
                         + (f" (got {', '.join(given)})" if given else ""))
    if (importance is None) != (num_layers is None):
        raise InputError("--importance and --num-layers go together")
    if drop is not None:
        kept = set(range(n_layers)) - parse_layer_spec(drop, n_layers, "--drop")
    elif keep_layers is not None:
        kept = parse_layer_spec(keep_layers, n_layers, "--keep-layers")
    elif tail is not None:
        if not 0 < tail < n_layers:
            raise InputError(f"--tail {tail}: must be between 1 and {n_layers - 1} (the last layer is kept)")
        kept = set(range(n_layers)) - set(range(n_layers - 1 - tail, n_layers - 1))
    else:
        scores = load_layer_scores(importance, n_layers)
        if not 0 < num_layers <= n_layers:
            raise InputError(f"--num-layers {num_layers}: must be between 1 and {n_layers}")
        kept = set(sorted(range(n_layers), key=lambda i: (-scores[i], i))[:num_layers])
    if not kept:
        raise InputError(f"the choice drops every one of the {n_layers} layers")
    return sorted(kept)


def load_layer_scores(path: Path, n_layers: int) -> list[float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: importance file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path.name}: not a JSON importance file ({e})") from e
    if not isinstance(data, dict) or data.get("format") != IMPORTANCE_FORMAT:
        raise InputError(f"{path.name}: not a {IMPORTANCE_FORMAT} file (its \"format\" is {data.get('format')!r})"
                         if isinstance(data, dict) else f"{path.name}: not a JSON object")
    scores = data.get("layers")
    if scores is None:
        raise InputError(f"{path.name}: no \"layers\" scores (one per layer, higher = more important)")
    if not isinstance(scores, list) or len(scores) != n_layers or not all(
            isinstance(v, (int, float)) and np.isfinite(v) for v in scores):
        raise InputError(f"{path.name}: \"layers\" must be {n_layers} finite numbers, one per layer")
    return [float(v) for v in scores]


@dataclass(frozen=True, slots=True)
class LayerPlan(FolderEdit):
    n_layers: int
    kept: tuple[int, ...]
    record_name = LAYERS_RECORD

    def record(self) -> dict:
        return {"source": str(self.src), "old_num_layers": self.n_layers, "kept_layers": list(self.kept),
                "dropped_layers": [i for i in range(self.n_layers) if i not in self.kept]}

    def totals(self, ckpt_nbytes: int | None = None) -> dict[str, int]:
        actions = self.tensor_actions()
        return {"params_after": sum(int(np.prod(a.new_shape)) for a in actions),
                "bytes_after": sum(a.new_nbytes for a in actions)}

    def to_json(self) -> dict:
        return {**self.record(), "num_layers": len(self.kept), **self.totals(),
                "renamed_tensors": sum(1 for a in self.tensor_actions() if a.source),
                "shards": [s.name for s in self.shards], "rewritten_files": sorted(self.files),
                "config_patches": self.patches_json(), "notes": list(self.notes)}

    def describe(self) -> str:
        dropped = [i for i in range(self.n_layers) if i not in self.kept]
        lines = [f"source: {self.src}", f"layers: {self.n_layers} -> {len(self.kept)} (dropped {_ranges(dropped)})",
                 f"tensors: {len(self.tensor_actions())} written, "
                 f"{sum(1 for a in self.tensor_actions() if a.source)} renamed",
                 *(f"config: {p.file} {p.key}: {p.old} -> {p.new}" for p in self.config_patches)]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def rows_for(self, action: TensorAction):  # no rows are gathered by this verb
        raise AssertionError("drop-layers gathers no rows")


def _ranges(ids: list[int]) -> str:
    parts, start = [], None
    for i, value in enumerate(ids):
        if start is None:
            start = value
        if i + 1 == len(ids) or ids[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


def count_layers(ckpt: Checkpoint) -> int:
    if CONFIG in ckpt.configs:
        path, view = text_view(ckpt.configs[CONFIG])
        return size(view, "num_hidden_layers", CONFIG, "".join(f"{key}." for key in path))
    return int(ckpt.configs[NATIVE_CONFIG]["n_layers"])


def plan_drop_layers(ckpt: Checkpoint, kept: list[int]) -> LayerPlan:
    n_layers = count_layers(ckpt)
    new_index = {old: new for new, old in enumerate(kept)}
    seen: set[int] = set()
    shards, notes = [], []
    for shard in ckpt.shards:
        actions, rewritten = [], False
        for entry in shard.entries:
            match = DECODER_LAYER.match(entry.name)
            if match is None:
                actions.append(TensorAction(entry.name, shard.path.name, "copy", entry.dtype, entry.shape, entry.shape,
                                            None, None, entry=entry))
                continue
            index = int(match["index"])
            seen.add(index)
            if index >= n_layers:  # multi-token prediction layers follow the decoder layers and move with them
                target = len(kept) + index - n_layers
            elif index in new_index:
                target = new_index[index]
            else:
                rewritten = True
                continue
            name = f"{match['prefix']}{target}.{match['rest']}"
            rewritten |= name != entry.name
            actions.append(TensorAction(name, shard.path.name, "copy", entry.dtype, entry.shape, entry.shape, None,
                                        None, entry.name if name != entry.name else None, entry=entry))
        if actions:
            shards.append(ShardPlan(shard.path.name, shard.metadata, tuple(actions), rewritten))
        else:
            notes.append(f"{shard.path.name} held only dropped layers: not written")
    if not seen:
        raise CheckpointError(f"{ckpt.root.name}: no decoder layer tensors found (model.layers.N.*, "
                              "model.language_model.layers.N.*, layers.N.* ...); this architecture is not recognised")
    missing = sorted(set(range(n_layers)) - seen)
    if missing:
        raise CheckpointError(f"{ckpt.root.name}: the config has {n_layers} layers but no tensor of layer {missing[0]}")
    files, patches = {}, []
    for name, config in ckpt.configs.items():
        if name == NATIVE_CONFIG:
            new_config = {**config, "n_layers": len(kept)}
            patches.append(ConfigPatch(name, "n_layers", config.get("n_layers"), len(kept)))
        else:
            new_config, config_patches, config_notes = patch_layer_config(name, config, kept)
            patches += config_patches
            notes += config_notes
        files[name] = dump_json(new_config)
    kept_shards = {s.name for s in shards}
    indexes = tuple(ShardIndex(i.name, i.metadata, tuple(n for n in i.shards if n in kept_shards))
                    for i in ckpt.indexes)
    copied, skipped = other_files(ckpt, files, LAYERS_RECORD, vocabulary_changes=False)
    return LayerPlan(src=ckpt.root, shards=tuple(shards), indexes=indexes, files=files, copied=copied, skipped=skipped,
                     config_patches=tuple(patches), notes=tuple(notes), n_layers=n_layers, kept=tuple(kept))


def check_layers_output(plan: LayerPlan, out: Path) -> None:
    """Reopen the written shards with our reader and with safetensors; every tensor equals its source's edges."""
    from surgery.edit.checks import reopen_shard
    from surgery.edit.compare import edge_bytes

    for shard in plan.shards:
        written = reopen_shard(out / shard.name)
        for action in shard.actions:
            entry = written.get(action.name)
            src = action.entry
            if entry is None or entry.shape != src.shape or entry.dtype != src.dtype or edge_bytes(entry) != edge_bytes(src):
                raise VerifyError(f"output {shard.name}: tensor '{action.name}' differs from its source "
                                  f"'{action.source_name}'")
