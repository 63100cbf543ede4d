"""The family defaults table agrees with the config classes of the installed transformers, and a config that
leaves a size to its default is read with the default and written explicitly."""

from __future__ import annotations

import pytest

from surgery.errors import CheckpointError
from surgery.model.config_defaults import (
    COMPOSITE_TEXT,
    TEXT_DEFAULTS,
    size,
    text_path,
    text_view,
    unset_vocab_size,
)

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("model_type", sorted(TEXT_DEFAULTS))
def test_every_default_is_the_config_class_default(model_type):
    config = transformers.AutoConfig.for_model(model_type)
    for key, value in TEXT_DEFAULTS[model_type].items():
        if key == "sliding_window_pattern":
            assert config._sliding_window_pattern == value
            layer_types = ["full_attention" if (i + 1) % value == 0 else "sliding_attention"
                           for i in range(config.num_hidden_layers)]
            assert config.layer_types == layer_types
        elif value is None:  # derived by the class: kv heads = heads, head_dim = hidden // heads
            derived = {"num_key_value_heads": config.num_attention_heads,
                       "head_dim": config.hidden_size // config.num_attention_heads}[key]
            assert getattr(config, key, None) in (None, derived), key
        else:
            assert getattr(config, key) == value, key
    view = text_view({"model_type": model_type})[1]
    for key in ("num_key_value_heads", "head_dim"):
        actual = getattr(config, key, None) or (config.num_attention_heads if key == "num_key_value_heads"
                                                 else config.hidden_size // config.num_attention_heads)
        assert size(view, key) == actual


@pytest.mark.parametrize("model_type", sorted(COMPOSITE_TEXT))
def test_composite_configs_keep_their_text_config_where_the_table_says(model_type):
    key, text_type = COMPOSITE_TEXT[model_type]
    config = transformers.AutoConfig.for_model(model_type)
    assert getattr(config, key).model_type == text_type


def test_gemma3_multimodal_without_vocab_size():
    config = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "hidden_size": 2560}}
    assert text_path(config) == ("text_config",)
    assert unset_vocab_size(config, 262208) == "text_config.vocab_size"
    with pytest.raises(CheckpointError) as info:
        unset_vocab_size(config, 1000)
    assert str(info.value) == ("config.json: text_config.vocab_size is not set, so transformers takes the gemma3_text "
                               "default 262208, but the embedding has 1000 rows")
    with pytest.raises(CheckpointError) as info:
        unset_vocab_size({"model_type": "newfamily"}, 1000)
    assert str(info.value) == ("config.json: vocab_size is not set and surgery does not know the default of "
                               "model_type 'newfamily'")
    assert info.value.hint == "write vocab_size (1000, the embedding rows) into config.json"


def test_llava_text_config_reads_llama_defaults():
    config = {"model_type": "llava", "text_config": {"model_type": "llama", "vocab_size": 32064}}
    path, view = text_view(config)
    assert path == ("text_config",)
    assert [size(view, k) for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")] \
        == [32, 32, 32, 128]
    with pytest.raises(CheckpointError, match="text_config.num_hidden_layers is not set and surgery does not know"):
        size(text_view({"model_type": "llava", "text_config": {"model_type": "other"}})[1], "num_hidden_layers",
             prefix="text_config.")
