"""The importance file (`surgery importance` writes it; drop-layers, prune and factor --scaling read it):
its schema name and its loaders. No torch: reading scores needs none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from surgery.errors import InputError

IMPORTANCE_FORMAT = "surgery-importance/1"


def load_importance(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: importance file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{Path(path).name}: not a JSON importance file ({e})") from e
    if not isinstance(data, dict) or data.get("format") != IMPORTANCE_FORMAT:
        raise InputError(f"{Path(path).name}: not a {IMPORTANCE_FORMAT} file"
                         + (f" (its \"format\" is {data.get('format')!r})" if isinstance(data, dict) else
                            " (not a JSON object)"))
    return data


def load_layer_scores(path: Path, n_layers: int) -> list[float]:
    """The per-layer scores (higher = more important), one finite number per layer."""
    data = load_importance(path)
    scores = data.get("layers")
    if scores is None:
        raise InputError(f"{path.name}: no \"layers\" scores (one per layer, higher = more important)")
    if not isinstance(scores, list) or len(scores) != n_layers or not all(
            isinstance(v, (int, float)) and np.isfinite(v) for v in scores):
        raise InputError(f"{path.name}: \"layers\" must be {n_layers} finite numbers, one per layer")
    return [float(v) for v in scores]
