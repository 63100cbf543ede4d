"""The name table, confirmed by shape, for every family it names; fallbacks and user-named tensors."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgery.errors import CheckpointError, InputError
from surgery.formats.hf_folder import Checkpoint
from surgery.formats.safetensors import ShardHeader, TensorEntry
from surgery.model.vocab_tensors import find_vocab_tensors

V, H = 1000, 8


def checkpoint(tensors: dict[str, tuple[int, ...]], config: dict | None = None) -> Checkpoint:
    entries, offset = [], 0
    for name, shape in tensors.items():
        nbytes = 4
        for d in shape:
            nbytes *= d
        entries.append(TensorEntry(name, "F32", shape, Path("model.safetensors"), offset, offset + nbytes))
        offset += nbytes
    shard = ShardHeader(Path("model.safetensors"), 0, None, tuple(entries))
    return Checkpoint(Path("ckpt"), {"config.json": config or {"vocab_size": V}}, (shard,))


FAMILIES = {
    "llama-untied": ({"model.embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "model.norm.weight": (H,)},
                     {"model.embed_tokens.weight": "embed", "lm_head.weight": "head"}),
    "qwen-tied": ({"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)},
                  {"model.embed_tokens.weight": "embed"}),
    "gpt2": ({"transformer.wte.weight": (V, H), "transformer.wpe.weight": (64, H)}, {"transformer.wte.weight": "embed"}),
    "gpt-neox": ({"gpt_neox.embed_in.weight": (V, H), "embed_out.weight": (V, H)},
                 {"gpt_neox.embed_in.weight": "embed", "embed_out.weight": "head"}),
    "bert-mlm": ({"bert.embeddings.word_embeddings.weight": (V, H), "bert.embeddings.position_embeddings.weight": (64, H),
                  "cls.predictions.bias": (V,), "cls.predictions.transform.dense.weight": (H, H)},
                 {"bert.embeddings.word_embeddings.weight": "embed", "cls.predictions.bias": "bias"}),
    "sentence-transformers": ({"embeddings.word_embeddings.weight": (V, H)},
                              {"embeddings.word_embeddings.weight": "embed"}),
    "xlm-r-mlm": ({"roberta.embeddings.word_embeddings.weight": (V, H), "lm_head.bias": (V,),
                   "lm_head.dense.weight": (H, H), "lm_head.dense.bias": (H,)},
                  {"roberta.embeddings.word_embeddings.weight": "embed", "lm_head.bias": "bias"}),
    "t5": ({"shared.weight": (V, H), "encoder.embed_tokens.weight": (V, H), "decoder.embed_tokens.weight": (V, H),
            "lm_head.weight": (V, H)},
           {"shared.weight": "embed", "encoder.embed_tokens.weight": "embed", "decoder.embed_tokens.weight": "embed",
            "lm_head.weight": "head"}),
    "bart": ({"model.shared.weight": (V, H), "final_logits_bias": (1, V), "model.encoder.embed_positions.weight": (66, H)},
             {"model.shared.weight": "embed", "final_logits_bias": "bias"}),
    "whisper": ({"model.decoder.embed_tokens.weight": (V, H), "model.decoder.embed_positions.weight": (448, H),
                 "model.encoder.conv1.weight": (H, 80, 3)}, {"model.decoder.embed_tokens.weight": "embed"}),
    "llava": ({"language_model.model.embed_tokens.weight": (V, H), "language_model.lm_head.weight": (V, H),
               "vision_tower.vision_model.embeddings.position_embedding.weight": (50, H)},
              {"language_model.model.embed_tokens.weight": "embed", "language_model.lm_head.weight": "head"}),
    "gemma3-multimodal": ({"model.language_model.embed_tokens.weight": (V, H),
                           "model.vision_tower.vision_model.embeddings.patch_embedding.weight": (H, 3, 14, 14)},
                          {"model.language_model.embed_tokens.weight": "embed"}),
    "bloom": ({"transformer.word_embeddings.weight": (V, H)}, {"transformer.word_embeddings.weight": "embed"}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_roles(family):
    tensors, roles = FAMILIES[family]
    found = find_vocab_tensors(checkpoint(tensors))
    assert {t.entry.name: t.role.value for t in found.tensors} == roles
    assert found.n_rows == V
    assert found.tied == ("head" not in roles.values())


def test_bias_axis_is_one_for_final_logits_bias():
    found = find_vocab_tensors(checkpoint(FAMILIES["bart"][0]))
    assert found.by_name()["final_logits_bias"].axis == 1


def test_name_match_with_wrong_shape_is_not_trimmed():
    found = find_vocab_tensors(checkpoint({"model.embed_tokens.weight": (V, H), "lm_head.weight": (V + 5, H)}))
    assert [t.entry.name for t in found.tensors] == ["model.embed_tokens.weight"]
    assert "copied unchanged" in found.notes[0]


def test_unknown_names_are_refused_with_the_flags_that_take_them():
    """No guessing by shape: a model whose MLP size equals its vocab size would lose rows of its matrices."""
    with pytest.raises(CheckpointError) as info:
        find_vocab_tensors(checkpoint({"weird.tok_emb": (V, H), "weird.out": (V, H), "x": (H, H)}))
    assert str(info.value) == ("ckpt: no known vocabulary tensor name; tensors with 1000 rows: "
                               "'weird.out' [1000, 8], 'weird.tok_emb' [1000, 8]")
    assert "--vocab-tensor weird.out:0 --vocab-tensor weird.tok_emb:0" in info.value.hint


def test_unknown_names_taken_with_the_printed_flags():
    ckpt = checkpoint({"weird.tok_emb": (V, H), "weird.out": (V, H), "x": (H, H)})
    found = find_vocab_tensors(ckpt, ("weird.tok_emb:0", "weird.out:0"))
    assert [(t.entry.name, t.role.value) for t in found.tensors] == [("weird.tok_emb", "embed"), ("weird.out", "head")]


MTP = {"model.embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "model.layers.0.mlp.up_proj.weight": (32, H),
       "model.layers.1.embed_tokens.weight": (V, H), "model.layers.1.shared_head.head.weight": (V, H),
       "model.layers.1.shared_head.norm.weight": (H,), "model.layers.1.eh_proj.weight": (H, 2 * H)}


def test_multi_token_prediction_embedding_and_head_are_vocab_tensors():
    found = find_vocab_tensors(checkpoint(MTP, {"vocab_size": V, "num_hidden_layers": 1}))
    assert {t.entry.name: t.role.value for t in found.tensors} == {
        "model.embed_tokens.weight": "embed", "lm_head.weight": "head",
        "model.layers.1.embed_tokens.weight": "embed", "model.layers.1.shared_head.head.weight": "head"}


def test_mistral_native_names():
    found = find_vocab_tensors(checkpoint({"tok_embeddings.weight": (V, H), "output.weight": (V, H),
                                           "layers.0.attention.wq.weight": (H, H), "norm.weight": (H,)}))
    assert {t.entry.name: t.role.value for t in found.tensors} == {"tok_embeddings.weight": "embed",
                                                                 "output.weight": "head"}


def test_gemma3n_per_layer_table_is_a_prefix_table():
    found = find_vocab_tensors(checkpoint({"model.language_model.embed_tokens.weight": (V, H),
                                           "model.language_model.embed_tokens_per_layer.weight": (V - 100, 2 * H)}))
    table = found.by_name()["model.language_model.embed_tokens_per_layer.weight"]
    assert table.prefix and table.n_rows == V - 100 and found.n_rows == V


def test_a_stray_tensor_with_the_vocab_length_is_refused_naming_both_flags():
    """An unknown vocab-sized tensor (an MTP head under a new name) must not be copied at full size."""
    tensors = {"model.embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "mtp.new_head.weight": (V, H)}
    with pytest.raises(CheckpointError) as info:
        find_vocab_tensors(checkpoint(tensors))
    assert str(info.value) == ("1 tensor(s) outside the vocabulary tensors have an axis of the vocabulary's length "
                               "1000: 'mtp.new_head.weight' [1000, 8]")
    assert "--vocab-tensor mtp.new_head.weight:0" in info.value.hint
    assert "--not-vocab-tensor 'mtp.new_head.weight'" in info.value.hint
    taken = find_vocab_tensors(checkpoint(tensors), ("mtp.new_head.weight:0",))
    assert {t.entry.name: t.role.value for t in taken.tensors}["mtp.new_head.weight"] == "head"
    left = find_vocab_tensors(checkpoint(tensors), not_vocab=("mtp.*",))
    assert "mtp.new_head.weight" not in left.by_name()


def test_hidden_size_equal_to_vocab_size_is_refused_until_declared():
    """hidden == vocab: every projection has a vocab-length axis; the hint groups them by layer."""
    n = 64
    tensors = {"model.embed_tokens.weight": (n, n), "lm_head.weight": (n, n),
               "model.layers.0.self_attn.q_proj.weight": (n, n), "model.layers.1.mlp.down_proj.weight": (n, 128),
               "model.norm.weight": (n,)}
    with pytest.raises(CheckpointError) as info:
        find_vocab_tensors(checkpoint(tensors, {"vocab_size": n}))
    assert str(info.value).startswith("3 tensor(s) outside the vocabulary tensors have an axis of the vocabulary's")
    assert "--not-vocab-tensor 'model.layers.*' --not-vocab-tensor 'model.norm.weight'" in info.value.hint
    found = find_vocab_tensors(checkpoint(tensors, {"vocab_size": n}),
                               not_vocab=("model.layers.*", "model.norm.weight"))
    assert sorted(found.by_name()) == ["lm_head.weight", "model.embed_tokens.weight"]


def test_nothing_found_lists_candidates():
    with pytest.raises(CheckpointError) as info:
        find_vocab_tensors(checkpoint({"a": (7, H), "b": (5, H)}))
    assert str(info.value) == "ckpt: no vocabulary tensor found (config vocab_size 1000; largest 2-D tensors: 'a' [7, 8], 'b' [5, 8])"
    assert info.value.hint == "name them with --vocab-tensor NAME[:AXIS]"


def test_user_named_tensors():
    ckpt = checkpoint({"weird.tok_emb": (V, H), "weird.bias": (1, V)})
    found = find_vocab_tensors(ckpt, ("weird.tok_emb", "weird.bias:1"))
    assert [(t.entry.name, t.role.value, t.axis) for t in found.tensors] == [
        ("weird.tok_emb", "embed", 0), ("weird.bias", "bias", 1)]
    with pytest.raises(InputError, match="no tensor 'nope'"):
        find_vocab_tensors(ckpt, ("nope",))
    with pytest.raises(InputError, match="disagree on the vocab length"):
        find_vocab_tensors(ckpt, ("weird.tok_emb", "weird.bias"))
