"""Tensor names as data: one table per fact, for both containers (gguf-py's MODEL_TENSOR + TensorNameMap).

- Decoder layers: where a layer's index sits in a tensor name (Hugging Face `model.layers.{bid}.*` and its
  multimodal variants, Mistral's native `layers.{bid}.*`; GGUF `blk.{bid}.*`), and how to rename a tensor into
  another layer.
- Vocabulary tensors of a GGUF file (the folder side reads its tied/untied embeddings from model/vocab_tensors).
- What prune cuts: each tensor a role with its index space per axis (rows = the outermost axis in numpy order,
  cols = the next), under its Hugging Face name and its GGUF name. `units()` turns a space into the kept indices.

No tensor name is spelled anywhere else in surgery/ (tests and fixtures aside).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from surgery.errors import CheckpointError

FOLDER, GGUF = "folder", "gguf"

# ---- decoder layers -----------------------------------------------------------------------------------------

# `<prefix><index>.<rest>`; vision towers and encoders have other prefixes and are never taken for decoder layers
LAYER_PATTERNS = {
    FOLDER: re.compile(r"^(?P<prefix>model\.layers\.|model\.language_model\.layers\.|language_model\.model\.layers\."
                       r"|model\.text_model\.layers\.|layers\.)(?P<index>\d+)\.(?P<rest>.+)$"),
    GGUF: re.compile(r"^(?P<prefix>blk\.)(?P<index>\d+)\.(?P<rest>.+)$"),
}
LAYER_EXAMPLES = {FOLDER: "model.layers.N.*, model.language_model.layers.N.*, layers.N.*", GGUF: "blk.N.*"}


@dataclass(frozen=True, slots=True)
class LayerName:
    prefix: str
    index: int
    rest: str  # the name inside the layer: `self_attn.q_proj.weight`, `attn_q.weight`

    def at(self, index: int) -> str:
        """The same tensor in layer `index`."""
        return f"{self.prefix}{index}.{self.rest}"


def layer_name(name: str, container: str) -> LayerName | None:
    match = LAYER_PATTERNS[container].match(name)
    return None if match is None else LayerName(match["prefix"], int(match["index"]), match["rest"])


def gguf_block(index: int) -> str:
    """How a GGUF file names layer `index` in messages."""
    return f"blk.{index}"


# ---- GGUF vocabulary tensors --------------------------------------------------------------------------------

GGUF_TOKEN_EMBD = "token_embd.weight"
# (pattern, role): every match has the vocabulary's length on its outermost axis (ne[-1])
GGUF_VOCAB_PATTERNS = (
    (r"token_embd\.weight", "embed"),
    (r"output\.weight", "head"),  # absent when tied
    (r"output\.bias", "bias"),  # phi-2 style
    (r"per_layer_token_embd\.weight", "embed"),  # gemma-3n
    (r"blk\.\d+\.nextn\.embed_tokens\.weight", "embed"),  # multi-token prediction (glm-4.5, deepseek)
    (r"blk\.\d+\.nextn\.shared_head_head\.weight", "head"),
)


def gguf_group(name: str) -> str:
    """A name with its block index wildcarded (`blk.*`), for a --not-vocab-tensor hint."""
    return re.sub(r"^blk\.\d+\..*$", "blk.*", name)


# ---- what prune cuts ----------------------------------------------------------------------------------------

# index spaces: HIDDEN (global channels), HIDDEN_NORM (hidden, for a vector of exactly hidden_size), MLP (neurons
# of the layer's MLP), MLP_FUSED (the gate half then the up half of a fused projection), Q_HEADS (head_dim rows per
# kept query head), Q_HEADS_FULL (the same, for a q-norm over every head: OLMo-2), QKV (kept Q rows, every K and
# V row of a fused projection), EXPERTS (the layer's experts), EXPERT_MLP (one expert's neurons), SHARED_MLP
# (the shared expert's neurons), NO_HIDDEN_CUT (merged experts: a hidden cut is refused)
HIDDEN, HIDDEN_NORM, MLP, MLP_FUSED, Q_HEADS, Q_HEADS_FULL, QKV, EXPERTS, EXPERT_MLP, SHARED_MLP, NO_HIDDEN_CUT = (
    "hidden", "hidden_norm", "mlp", "mlp_fused", "q_heads", "q_heads_full", "qkv", "experts", "expert_mlp",
    "shared_mlp", "no_hidden_cut")


@dataclass(frozen=True, slots=True)
class Cuttable:
    """One line of the prune table: tensors matching `pattern` (inside a decoder layer, or anywhere when
    in_layer is False) and the index space of their rows and columns. `archs`: the GGUF architectures the line
    serves (all when empty)."""

    pattern: str
    rows: str | None
    cols: str | None = None
    in_layer: bool = True
    archs: tuple[str, ...] = ()


_GATE_UP, _EXPERT = r"(?:gate_proj|up_proj)", r"mlp\.experts\.(?P<expert>\d+)\."
PRUNE_TABLE = {  # first match wins
    FOLDER: tuple(Cuttable(*line) for line in (
        (_EXPERT + _GATE_UP + r"\.weight", EXPERT_MLP, HIDDEN),
        (_EXPERT + _GATE_UP + r"\.bias", EXPERT_MLP),
        (_EXPERT + r"down_proj\.weight", HIDDEN, EXPERT_MLP),
        (_EXPERT + r"down_proj\.bias", HIDDEN),
        (_EXPERT + r".*", None),
        (r"mlp\.gate\.weight", EXPERTS, HIDDEN),  # the router
        (r"mlp\.gate\.e_score_correction_bias", EXPERTS),
        (r"mlp\.shared_expert\." + _GATE_UP + r"\.weight", SHARED_MLP, HIDDEN),
        (r"mlp\.shared_expert\." + _GATE_UP + r"\.bias", SHARED_MLP),
        (r"mlp\.shared_expert\.down_proj\.weight", HIDDEN, SHARED_MLP),
        (r"mlp\.shared_expert\.down_proj\.bias", HIDDEN),
        (r"mlp\.shared_expert_gate\.weight", None, HIDDEN),
        (r"mlp\." + _GATE_UP + r"\.weight", MLP, HIDDEN),
        (r"mlp\." + _GATE_UP + r"\.bias", MLP),
        (r"mlp\.gate_up_proj\.weight", MLP_FUSED, HIDDEN),  # Phi-3
        (r"mlp\.down_proj\.weight", HIDDEN, MLP),
        (r"mlp\.down_proj\.bias", HIDDEN),
        (r"self_attn\.q_proj\.weight", Q_HEADS, HIDDEN),
        (r"self_attn\.q_proj\.bias", Q_HEADS),
        (r"self_attn\.(?:k_proj|v_proj)\.weight", None, HIDDEN),
        (r"self_attn\.qkv_proj\.weight", QKV, HIDDEN),  # Phi-3
        (r"self_attn\.o_proj\.weight", HIDDEN, Q_HEADS),
        (r"self_attn\.o_proj\.bias", HIDDEN),
        (r"self_attn\.q_norm\.weight", Q_HEADS_FULL),  # OLMo-2 normalizes every head at once
        (r"self_attn\.k_norm\.weight", None),
        (r".*(?:norm|layernorm)\.weight", HIDDEN_NORM),
        (r"(?:.*\.)?(?:embed_tokens|lm_head)\.weight", None, HIDDEN, False),
        (r".*(?:norm|layernorm)\.weight", HIDDEN_NORM, None, False),
    )),
    GGUF: tuple(Cuttable(*line) for line in (
        (r"ffn_gate_inp\.weight", EXPERTS, HIDDEN),  # the router
        (r"ffn_(?:gate|up)_exps\.weight", EXPERTS, HIDDEN),
        (r"ffn_down_exps\.weight", EXPERTS, NO_HIDDEN_CUT),
        (r"exp_probs_b\.bias", EXPERTS),
        (r"ffn_up\.weight", MLP_FUSED, HIDDEN, True, ("phi3",)),  # phi3: gate and up fused in ffn_up
        (r"ffn_(?:gate|up)\.weight", MLP, HIDDEN),
        (r"ffn_(?:gate|up)\.bias", MLP),
        (r"ffn_down\.weight", HIDDEN, MLP),
        (r"ffn_down\.bias", HIDDEN),
        (r"ffn_(?:gate|up)_shexp\.weight", None, HIDDEN),
        (r"ffn_down_shexp\.weight", HIDDEN),
        (r"attn_q\.weight", Q_HEADS, HIDDEN),
        (r"attn_q\.bias", Q_HEADS),
        (r"attn_(?:k|v)\.weight", None, HIDDEN),
        (r"attn_qkv\.weight", QKV, HIDDEN),
        (r"attn_output\.weight", HIDDEN, Q_HEADS),
        (r"attn_output\.bias", HIDDEN),
        (r"attn_q_norm\.weight", Q_HEADS_FULL),
        (r"(?:attn_norm|ffn_norm|post_attention_norm|post_ffw_norm|attn_post_norm|ffn_post_norm)\.weight", HIDDEN),
        (r"output_norm\.weight", HIDDEN, None, False),
        (r"(?:token_embd|output)\.weight", None, HIDDEN, False),
    )),
}
_COMPILED = {container: [(re.compile(line.pattern), line) for line in lines]
             for container, lines in PRUNE_TABLE.items()}
# the tensors that show a model has a dense MLP to cut (its neurons are the `mlp` index space)
DENSE_MLP = {FOLDER: re.compile(r".*mlp\.(?:down_proj|gate_up_proj)\.weight$"),
             GGUF: re.compile(r"^blk\.\d+\.ffn_down\.weight$")}


@dataclass(frozen=True, slots=True)
class Placed:
    """A tensor found in the prune table: its line, its layer (None outside the layers) and its expert."""

    line: Cuttable
    layer: LayerName | None
    expert: int | None


def place(name: str, container: str, arch: str = "") -> Placed | None:
    """The prune-table line of a tensor, or None when no cut touches it."""
    layer = layer_name(name, container)
    rest = layer.rest if layer is not None else name
    for pattern, line in _COMPILED[container]:
        if line.in_layer != (layer is not None) or (line.archs and arch not in line.archs):
            continue
        match = pattern.fullmatch(rest)
        if match is not None:
            expert = match.groupdict().get("expert")
            return Placed(line, layer, None if expert is None else int(expert))
    return None


def head_rows(heads: np.ndarray, head_dim: int) -> np.ndarray:
    """The rows of the kept query heads in a q projection (head_dim rows each)."""
    return (heads[:, None] * head_dim + np.arange(head_dim)[None, :]).ravel()


def fused_qkv_rows(q_rows: np.ndarray, n_heads: int, n_kv: int, head_dim: int) -> np.ndarray:
    """A fused [Q | K | V] projection (Phi-3 qkv_proj, GGUF attn_qkv): the kept Q rows, every K and V row."""
    return np.concatenate([q_rows, np.arange(n_heads * head_dim, (n_heads + 2 * n_kv) * head_dim)])


def units(space: str | None, cut, placed: Placed, shape: tuple[int, ...], dims: dict) -> np.ndarray | None:
    """The kept indices of one axis of a tensor, or None when the cut leaves that axis whole.

    `cut` is a verbs.prune.Cut; `dims` the model's sizes named as in a Hugging Face config (hidden_size,
    num_attention_heads, num_key_value_heads, head_dim, intermediate_size)."""
    layer = placed.layer.index if placed.layer is not None else None
    per_layer = {MLP: cut.mlp, MLP_FUSED: cut.mlp, Q_HEADS: cut.heads, Q_HEADS_FULL: cut.heads, QKV: cut.heads,
                 EXPERTS: cut.experts, EXPERT_MLP: cut.expert_mlp, SHARED_MLP: cut.shared_mlp}.get(space)
    if per_layer is not None and layer is not None and layer >= len(per_layer):
        raise CheckpointError(f"'{placed.layer.at(layer)}' is in layer {layer}, past the {len(per_layer)} layers the "
                              "cut decides (a multi-token-prediction layer?): prune has no scores for it")
    head_dim = dims["head_dim"]
    if space == HIDDEN:
        return cut.hidden
    if space == HIDDEN_NORM:
        return cut.hidden if shape == (dims["hidden_size"],) else None
    if space == NO_HIDDEN_CUT:
        return None
    if space in (MLP, MLP_FUSED) and cut.mlp is not None:
        neurons = cut.mlp[layer]
        return neurons if space == MLP else np.concatenate([neurons, dims["intermediate_size"] + neurons])
    if space in (Q_HEADS, Q_HEADS_FULL, QKV) and cut.heads is not None:
        rows = head_rows(cut.heads[layer], head_dim)
        if space == QKV:
            return fused_qkv_rows(rows, dims["num_attention_heads"], dims["num_key_value_heads"], head_dim)
        if space == Q_HEADS_FULL and shape[0] != dims["num_attention_heads"] * head_dim:
            return None
        return rows
    if space == EXPERTS and cut.experts is not None:
        return cut.experts[layer]
    if space == EXPERT_MLP and cut.expert_mlp is not None:
        return cut.expert_mlp[layer][placed.expert]
    if space == SHARED_MLP and cut.shared_mlp is not None:
        return cut.shared_mlp[layer]
    return None
