"""Config after dropping decoder layers: every per-layer field kept consistent with the ORIGINAL type of each
kept layer. Pure functions over dicts (facts in ../shared/PRUNING.md, checked in transformers' config classes).

- `num_hidden_layers`; `layer_types` sliced, or written out when the config derived the types from a rule that
  no longer describes the kept layers: Gemma-2 / gpt-oss alternate from layer 0; Gemma-3 uses
  `sliding_window_pattern` (layer i is full when (i+1) % pattern == 0); Qwen2/3 slide when
  `use_sliding_window` and i >= `max_window_layers` (recomputed as well).
- Qwen2/3-MoE: `mlp_only_layers` renumbered; `decoder_sparse_step` set to 1 with the dense layers listed when the
  step no longer describes the kept layers.
- DeepSeek-V3 / GLM-4.5: `first_k_dense_replace` = the kept layers below it (dense layers stay a prefix).
- Known per-layer lists (`no_rope_layers`, list-valued sizes) are sliced; an unknown list with one entry per
  layer is refused.
"""

from __future__ import annotations

import copy

from surgery.errors import CheckpointError
from surgery.model.config_defaults import TEXT_DEFAULTS, ensure_node, size, text_view
from surgery.model.config_keys import ConfigPatch

PER_LAYER_LISTS = ("layer_types", "no_rope_layers", "intermediate_size", "num_attention_heads",
                   "num_key_value_heads", "sliding_window_pattern_list", "swa_layers")
ALTERNATING = ("gemma2", "gpt_oss", "cohere2")  # sliding on even layers, full on odd ones, when not listed


def original_layer_types(text: dict, n_layers: int) -> list[str] | None:
    """The attention type of every layer as the config defines it, listed or derived; None when uniform."""
    if isinstance(text.get("layer_types"), list):
        return list(text["layer_types"])
    model_type = text.get("model_type", "")
    if model_type in ALTERNATING:
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    pattern = text.get("sliding_window_pattern", TEXT_DEFAULTS.get(model_type, {}).get("sliding_window_pattern"))
    if model_type.startswith("gemma3") and isinstance(pattern, int) and pattern > 0:
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
    if text.get("use_sliding_window") and isinstance(text.get("max_window_layers"), int):
        return ["sliding_attention" if i >= text["max_window_layers"] else "full_attention" for i in range(n_layers)]
    return None


def patch_layer_config(file: str, config: dict, kept: list[int]) -> tuple[dict, list[ConfigPatch], list[str]]:
    """The config for a model of the kept layers (original indices, ascending); the changes; notes."""
    new_config = copy.deepcopy(config)
    path, view = text_view(config)
    text = ensure_node(new_config, path)
    prefix = "".join(f"{key}." for key in path)
    n_layers = size(view, "num_hidden_layers", file, prefix)
    patches: list[ConfigPatch] = []
    notes: list[str] = []

    def set_key(key: str, value) -> None:
        old = text.get(key)
        if old != value:
            text[key] = value
            patches.append(ConfigPatch(file, prefix + key, old, value))

    types = original_layer_types(view, n_layers)
    set_key("num_hidden_layers", len(kept))
    if types is not None:
        new_types = [types[i] for i in kept]
        derived = original_layer_types({**view, "layer_types": None, "num_hidden_layers": len(kept)}, len(kept))
        if "layer_types" in text or derived != new_types:
            set_key("layer_types", new_types)
        if isinstance(text.get("max_window_layers"), int):
            set_key("max_window_layers", sum(1 for i in kept if i < text["max_window_layers"]))
    for key in PER_LAYER_LISTS:
        value = text.get(key)
        if key != "layer_types" and isinstance(value, list) and len(value) == n_layers:
            set_key(key, [value[i] for i in kept])
    rank = {old: new for new, old in enumerate(kept)}
    if isinstance(text.get("mlp_only_layers"), list) or isinstance(text.get("decoder_sparse_step"), int):
        _patch_sparse_layers(text, kept, rank, set_key)
    if isinstance(text.get("first_k_dense_replace"), int):
        set_key("first_k_dense_replace", sum(1 for i in kept if i < text["first_k_dense_replace"]))
    for key, value in text.items():
        if isinstance(value, list) and len(value) == n_layers and key not in PER_LAYER_LISTS and key != "mlp_only_layers":
            raise CheckpointError(f"{file}: {prefix}{key} has one entry per layer ({n_layers}) and is not a field "
                                  "surgery knows how to cut; refusing rather than guessing")
    return new_config, patches, notes


def _patch_sparse_layers(text: dict, kept: list[int], rank: dict[int, int], set_key) -> None:
    """Qwen-MoE: layer i is sparse iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0."""
    step = text.get("decoder_sparse_step") or 1
    dense_only = set(text.get("mlp_only_layers") or [])
    sparse = [i not in dense_only and (i + 1) % step == 0 for i in kept]
    new_dense = [rank[i] for i in sorted(dense_only) if i in rank]
    if all(s == (new not in new_dense and (new + 1) % step == 0) for new, s in enumerate(sparse)):
        set_key("mlp_only_layers", new_dense)
        return
    # the step no longer describes the kept layers: every layer may be sparse, the dense ones listed
    set_key("decoder_sparse_step", 1)
    set_key("mlp_only_layers", [new for new, s in enumerate(sparse) if not s])
