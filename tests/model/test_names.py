"""model/names and model/keys: one table of tensor names and one namespace of GGUF keys, for both containers;
and the rule that makes them the only ones: no tensor-name or GGUF-key literal anywhere else in surgery/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from surgery.model.keys import LLM, Attention, arch_key
from surgery.model.names import (
    EXPERT_MLP,
    FOLDER,
    GGUF,
    HIDDEN,
    HIDDEN_NORM,
    MLP,
    MLP_FUSED,
    NO_HIDDEN_CUT,
    Q_HEADS,
    Q_HEADS_FULL,
    QKV,
    layer_name,
    place,
    units,
)
from surgery.verbs.prune import Cut

PACKAGE = Path(__file__).resolve().parents[2] / "surgery"
# what a tensor name or a GGUF key looks like, in either container
NAME_OR_KEY = re.compile(
    r"blk\.|token_embd|output_norm|tokenizer\.ggml|tokenizer\.chat_template|tokenizer\.huggingface"
    r"|general\.(architecture|alignment|name|file_type)|split\.(no|count|tensors)|^\.vocab_size|\.block_count"
    r"|embedding_length|feed_forward_length|head_count|expert_count|key_length|value_length|nextn_predict"
    r"|leading_dense|model\.layers|embed_tokens|lm_head|self_attn\.|mlp\.|_proj\.weight"
    r"|attn_(q|k|v|output|qkv|norm)\b|ffn_(gate|up|down|norm)")


def literals(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module, docstrings and click help texts aside (they document, not name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body and isinstance(
                node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            skipped.add(id(node.body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            skipped.update(id(n) for n in ast.walk(node.value))
    return [(node.lineno, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in skipped]


def test_no_tensor_name_or_gguf_key_is_spelled_outside_model():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text[:60]!r}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.relative_to(PACKAGE).parts[0] != "model"
             for line, text in literals(path) if NAME_OR_KEY.search(text)]
    assert not found, "\n".join(found)


def test_the_rule_sees_a_literal():
    assert NAME_OR_KEY.search("blk.3.attn_q.weight") and NAME_OR_KEY.search(".block_count")
    assert NAME_OR_KEY.search("model.layers.0.self_attn.q_proj.weight") and not NAME_OR_KEY.search("config.json")


@pytest.mark.parametrize("name, container, expected", [
    ("model.layers.12.mlp.down_proj.weight", FOLDER, ("model.layers.", 12, "mlp.down_proj.weight")),
    ("model.language_model.layers.0.input_layernorm.weight", FOLDER, ("model.language_model.layers.", 0,
                                                                        "input_layernorm.weight")),
    ("layers.3.attention.wq.weight", FOLDER, ("layers.", 3, "attention.wq.weight")),  # Mistral's native layout
    ("model.vision_tower.layers.0.mlp.fc1.weight", FOLDER, None),  # a vision tower is not a decoder layer
    ("blk.7.ffn_up.weight", GGUF, ("blk.", 7, "ffn_up.weight")),
    ("token_embd.weight", GGUF, None),
])
def test_layer_names(name, container, expected):
    layer = layer_name(name, container)
    assert (None if layer is None else (layer.prefix, layer.index, layer.rest)) == expected
    if layer is not None:
        assert layer.at(40) == f"{layer.prefix}40.{layer.rest}"


@pytest.mark.parametrize("name, container, arch, rows, cols", [
    ("model.layers.0.mlp.gate_proj.weight", FOLDER, "", MLP, HIDDEN),
    ("model.layers.0.mlp.gate_up_proj.weight", FOLDER, "", MLP_FUSED, HIDDEN),
    ("model.layers.0.self_attn.qkv_proj.weight", FOLDER, "", QKV, HIDDEN),
    ("model.layers.0.self_attn.o_proj.weight", FOLDER, "", HIDDEN, Q_HEADS),
    ("model.layers.0.self_attn.q_norm.weight", FOLDER, "", Q_HEADS_FULL, None),
    ("model.layers.0.self_attn.k_norm.weight", FOLDER, "", None, None),
    ("model.layers.1.post_attention_layernorm.weight", FOLDER, "", HIDDEN_NORM, None),
    ("model.layers.1.mlp.experts.3.down_proj.weight", FOLDER, "", HIDDEN, EXPERT_MLP),
    ("model.norm.weight", FOLDER, "", HIDDEN_NORM, None),
    ("lm_head.weight", FOLDER, "", None, HIDDEN),
    ("blk.0.ffn_up.weight", GGUF, "llama", MLP, HIDDEN),
    ("blk.0.ffn_up.weight", GGUF, "phi3", MLP_FUSED, HIDDEN),  # phi3 fuses gate and up in ffn_up
    ("blk.0.ffn_down_exps.weight", GGUF, "qwen3moe", "experts", NO_HIDDEN_CUT),
    ("blk.0.attn_output.weight", GGUF, "llama", HIDDEN, Q_HEADS),
    ("output_norm.weight", GGUF, "llama", HIDDEN, None),
    ("token_embd.weight", GGUF, "llama", None, HIDDEN),
])
def test_the_prune_table_places_both_containers_names(name, container, arch, rows, cols):
    placed = place(name, container, arch)
    assert (placed.line.rows, placed.line.cols) == (rows, cols)


def test_units_resolve_a_cut_per_layer_and_per_expert():
    dims = {"hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 2,
            "intermediate_size": 6}
    cut = Cut(mlp=[np.array([0, 5]), np.array([1, 2])], heads=[np.array([1, 3])] * 2, hidden=np.array([0, 7]),
              expert_mlp=[[np.array([0]), np.array([4])]] * 2)
    up = place("model.layers.1.mlp.gate_up_proj.weight", FOLDER)
    assert units(up.line.rows, cut, up, (12, 8), dims).tolist() == [1, 2, 7, 8]  # both halves of the fused rows
    qkv = place("blk.0.attn_qkv.weight", GGUF, "phi3")
    assert units(qkv.line.rows, cut, qkv, (16, 8), dims).tolist() == [2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    norm = place("model.layers.0.self_attn.q_norm.weight", FOLDER)
    assert units(norm.line.rows, cut, norm, (2,), dims) is None  # a per-head-dim norm: no head to cut
    assert units(norm.line.rows, cut, norm, (8,), dims).tolist() == [2, 3, 6, 7]  # OLMo-2: every head's
    expert = place("model.layers.0.mlp.experts.1.up_proj.weight", FOLDER)
    assert expert.expert == 1 and units(expert.line.rows, cut, expert, (6, 8), dims).tolist() == [4]
    layernorm = place("model.layers.0.input_layernorm.weight", FOLDER)
    assert units(layernorm.line.rows, cut, layernorm, (8,), dims).tolist() == [0, 7]
    assert units(layernorm.line.rows, cut, layernorm, (5,), dims) is None  # not a hidden-size vector


def test_gguf_keys_are_templates_of_the_architecture():
    assert arch_key(LLM.BLOCK_COUNT, "qwen3") == "qwen3.block_count"
    assert arch_key(Attention.HEAD_COUNT_KV, "llama") == "llama.attention.head_count_kv"


def test_a_layer_past_the_decided_ones_is_refused_not_indexed():
    """A multi-token-prediction layer stored after the decoder layers has no scores: one clear error."""
    from surgery.errors import CheckpointError

    dims = {"hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 2,
            "intermediate_size": 6}
    cut = Cut(mlp=[np.array([0, 5])] * 2)
    placed = place("model.layers.2.mlp.down_proj.weight", FOLDER)
    with pytest.raises(CheckpointError, match="in layer 2, past the 2 layers the cut decides"):
        units(placed.line.cols, cut, placed, (8, 6), dims)
