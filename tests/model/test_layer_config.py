"""Per-layer config fields after a drop: types derived as transformers derives them, then written out."""

from __future__ import annotations

import pytest

from surgery.model.layer_config import original_layer_types, patch_layer_config

transformers = pytest.importorskip("transformers")

OLD_STYLE = [  # configs as older checkpoints store them: the rule, no layer_types
    ("Gemma3TextConfig", {"model_type": "gemma3_text", "num_hidden_layers": 7, "sliding_window_pattern": 3}),
    ("Gemma2Config", {"model_type": "gemma2", "num_hidden_layers": 5}),
    ("Qwen2Config", {"model_type": "qwen2", "num_hidden_layers": 5, "use_sliding_window": True,
                     "max_window_layers": 2, "sliding_window": 4}),
]


@pytest.mark.parametrize("config_class,config", OLD_STYLE, ids=lambda v: v if isinstance(v, str) else "")
def test_derived_types_agree_with_transformers(config_class, config):
    fields = {k: v for k, v in config.items() if k != "model_type"}
    expected = getattr(transformers, config_class)(**fields).layer_types
    assert original_layer_types(config, config["num_hidden_layers"]) == expected


def test_types_are_written_out_when_the_rule_no_longer_fits():
    config = dict(OLD_STYLE[0][1])
    new, patches, _ = patch_layer_config("config.json", config, [0, 1, 2, 3])  # pattern 3: S S F S still fits
    assert "layer_types" not in new and new["num_hidden_layers"] == 4
    new, patches, _ = patch_layer_config("config.json", config, [0, 2, 3])  # S F S: the rule would say S S F
    assert new["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert {p.key for p in patches} == {"num_hidden_layers", "layer_types"}


def test_qwen2_max_window_layers_and_nested_text_config():
    config = {"model_type": "llava", "text_config": dict(OLD_STYLE[2][1])}
    new, patches, _ = patch_layer_config("config.json", config, [0, 3, 4])
    text = new["text_config"]
    assert text["num_hidden_layers"] == 3 and text["max_window_layers"] == 1
    assert text["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
    assert all(p.key.startswith("text_config.") for p in patches)


def test_first_k_dense_replace_and_unknown_per_layer_lists():
    from surgery.errors import CheckpointError

    config = {"num_hidden_layers": 4, "first_k_dense_replace": 2, "no_rope_layers": [1, 0, 1, 1]}
    new, _, _ = patch_layer_config("config.json", config, [1, 2, 3])
    assert new["first_k_dense_replace"] == 1 and new["no_rope_layers"] == [0, 1, 1]
    with pytest.raises(CheckpointError) as info:
        patch_layer_config("config.json", {**config, "mystery": [1, 2, 3, 4]}, [1, 2, 3])
    assert str(info.value) == ("config.json: mystery has one entry per layer (4) and is not a field surgery knows "
                               "how to cut; refusing rather than guessing")
