"""Vocab sizes and token ids in config.json and generation_config.json."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.errors import CheckpointError
from surgery.model.config_keys import named_token_ids, patch_config, vocab_size_keys
from surgery.verbs.keep_list import build_old_to_new

N = 100
OLD_TO_NEW = build_old_to_new(np.array([0, 1, 2, 10, 50, 99]), N)  # 10 -> 3, 50 -> 4, 99 -> 5
SIZES = {"vocab_size": (N, 6), "padded_vocab_size": (N, 6)}


def test_nested_vocab_sizes_and_ids_are_patched():
    config = {"vocab_size": N, "bos_token_id": 1, "eos_token_id": [2, 99], "pad_token_id": None,
              "image_token_index": 50, "text_config": {"vocab_size": N, "eos_token_id": 10},
              "vision_config": {"vocab_size": 7, "hidden_size": 4}}
    new, patches = patch_config("config.json", config, OLD_TO_NEW, SIZES)
    assert new["vocab_size"] == 6 and new["text_config"]["vocab_size"] == 6
    assert new["vision_config"]["vocab_size"] == 7  # another vocabulary: not ours
    assert new["eos_token_id"] == [2, 5] and new["image_token_index"] == 4 and new["text_config"]["eos_token_id"] == 3
    assert new["pad_token_id"] is None and config["eos_token_id"] == [2, 99]  # the input is not mutated
    assert {p.key for p in patches} == {"vocab_size", "text_config.vocab_size", "eos_token_id", "image_token_index",
                                        "text_config.eos_token_id"}


def test_generation_config_lists():
    generation = {"eos_token_id": [2, 10], "suppress_tokens": [3, 10, 50], "begin_suppress_tokens": [4],
                  "forced_decoder_ids": [[1, 50], [2, None]], "bad_words_ids": [[10, 50], [10, 3]],
                  "force_words_ids": [[[10], [3]]], "sequence_bias": [[[10, 50], -1.0], [[5], 2.0]],
                  "lang_to_id": {"<|en|>": 50, "<|fr|>": 51}, "alignment_heads": [[1, 50]],
                  "max_initial_timestamp_index": 50}
    new, _ = patch_config("generation_config.json", generation, OLD_TO_NEW, SIZES)
    assert new["eos_token_id"] == [2, 3]
    assert new["suppress_tokens"] == [3, 4] and new["begin_suppress_tokens"] == []
    assert new["forced_decoder_ids"] == [[1, 4], [2, None]]
    assert new["bad_words_ids"] == [[3, 4]] and new["force_words_ids"] == [[[3]]]
    assert new["sequence_bias"] == [[[3, 4], -1.0]]
    assert new["lang_to_id"] == {"<|en|>": 4}
    assert new["alignment_heads"] == [[1, 50]] and new["max_initial_timestamp_index"] == 50


def test_named_ids_are_what_trim_keeps():
    config = {"bos_token_id": 1, "eos_token_id": [2, 98], "decoder_start_token_id": 0, "pad_token_id": -1,
              "text_config": {"image_token_id": 77}, "forced_decoder_ids": [[1, 60]]}
    assert named_token_ids(config, N) == {"bos_token_id": [1], "eos_token_id": [2, 98], "decoder_start_token_id": [0],
                                          "text_config.image_token_id": [77], "forced_decoder_ids": [60]}


def test_vocab_size_disagreement_is_an_error():
    assert vocab_size_keys({"vocab_size": N, "text_config": {"vocab_size": N}}, N) == ["vocab_size", "text_config.vocab_size"]
    with pytest.raises(CheckpointError) as info:
        vocab_size_keys({"vocab_size": 120}, N)
    assert str(info.value) == "config.json: vocab_size is 120 but the embedding has 100 rows"
