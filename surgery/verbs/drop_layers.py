"""drop-layers: which decoder layers stay, each kept layer's tensors renamed to its rank among them, the metadata
made consistent, every other tensor copied byte for byte. One module for folders and GGUF files: the decision and
the renaming are here, over a Source (edit/sources.py); the names are model/names', the metadata patches the
Source's (config files through model/layer_config; GGUF block_count, per-block arrays, the dense-prefix count).

Folders keep the source's shard names (`model-00002-of-00004.safetensors`); a shard left with no tensor is not
written, and the index lists the rest. Mistral's native layout (`layers.N.*`, `n_layers` in params.json) is cut the
same way. Multi-token-prediction layers, stored after the decoder layers, move with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from surgery.edit.actions import FolderEdit
from surgery.edit.gguf_edit import GgufEdit
from surgery.edit.sources import TensorOp, missing_layer
from surgery.errors import InputError
from surgery.formats.gguf import GgufFile, KeyValue
from surgery.mining.importance_file import load_layer_scores
from surgery.model.keys import Record
from surgery.model.names import FOLDER, GGUF, layer_name

LAYERS_RECORD = "surgery_drop_layers.json"  # the record beside a folder output
RECORD_KEY = Record.DROP_LAYERS  # the record in a GGUF output's metadata


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
        scores = load_layer_scores(Path(importance), n_layers)
        if not 0 < num_layers <= n_layers:
            raise InputError(f"--num-layers {num_layers}: must be between 1 and {n_layers}")
        kept = set(sorted(range(n_layers), key=lambda i: (-scores[i], i))[:num_layers])
    if not kept:
        raise InputError(f"the choice drops every one of the {n_layers} layers")
    return sorted(kept)


def ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts, start = [], None
    for i, value in enumerate(ids):
        if start is None:
            start = value
        if i + 1 == len(ids) or ids[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


class LayerDecision:
    """What a drop-layers plan says, whatever the container: its record, summary and description."""

    __slots__ = ()

    def record(self) -> dict:
        return {"source": str(self.src), "old_num_layers": self.n_layers, "kept_layers": list(self.kept),
                "dropped_layers": [i for i in range(self.n_layers) if i not in self.kept]}

    def to_json(self) -> dict:
        return {**self.record(), "num_layers": len(self.kept), **self.totals(),
                "renamed_tensors": self.renamed(), **self.container_json(), "notes": list(self.notes)}

    def describe(self) -> str:
        dropped = [i for i in range(self.n_layers) if i not in self.kept]
        return "\n".join([f"source: {self.src}",
                          f"layers: {self.n_layers} -> {len(self.kept)} (dropped {ranges(dropped)})",
                          f"tensors: {self.n_tensors()} written, {self.renamed()} renamed",
                          *self.container_lines(), *(f"note: {n}" for n in self.notes)])


@dataclass(frozen=True, slots=True)
class LayerPlan(LayerDecision, FolderEdit):
    n_layers: int
    kept: tuple[int, ...]
    record_name = LAYERS_RECORD

    def totals(self) -> dict[str, int]:
        actions = self.tensor_actions()
        return {"params_after": sum(int(np.prod(a.new_shape)) for a in actions),
                "bytes_after": sum(a.new_nbytes for a in actions)}

    def renamed(self) -> int:
        return sum(1 for a in self.tensor_actions() if a.source)

    def n_tensors(self) -> int:
        return len(self.tensor_actions())

    def container_json(self) -> dict:
        return {"shards": [s.name for s in self.shards], "rewritten_files": sorted(self.files),
                **FolderEdit.container_json(self)}


@dataclass(frozen=True, slots=True)
class GgufLayerPlan(LayerDecision, GgufEdit):
    src: Path
    parts: tuple[GgufFile, ...]
    n_layers: int
    kept: tuple[int, ...]
    actions: tuple
    kvs: tuple[tuple[KeyValue, ...], ...]  # per part
    notes: tuple[str, ...]
    row_source = None
    record_key: ClassVar[str] = RECORD_KEY

    def renamed(self) -> int:
        return sum(1 for a in self.actions if a.new_name)

    def n_tensors(self) -> int:
        return len(self.actions)




def plan_drop_layers(source, kept: list[int]) -> LayerPlan | GgufLayerPlan:
    """Keep the decoder layers `kept` (ascending) of a Source; every decision from the headers alone."""
    n_layers = source.n_layers()
    new_index = {old: new for new, old in enumerate(kept)}
    ops, seen = [], set()
    for place, tensor in source.tensors():
        layer = layer_name(tensor.name, source.container)
        if layer is None:
            ops.append(TensorOp(place, tensor, tensor.name))
            continue
        seen.add(layer.index)
        if layer.index >= n_layers:  # multi-token prediction layers follow the decoder layers and move with them
            ops.append(TensorOp(place, tensor, layer.at(len(kept) + layer.index - n_layers)))
        elif layer.index in new_index:
            ops.append(TensorOp(place, tensor, layer.at(new_index[layer.index])))
    missing_layer(source, seen, source.n_blocks())
    fields = source.finish(ops, source.layer_metadata(kept), LAYERS_RECORD)
    return PLANS[source.container](**fields, n_layers=n_layers, kept=tuple(kept))


PLANS = {FOLDER: LayerPlan, GGUF: GgufLayerPlan}
