"""Which tensors `surgery factor` may decompose, and how a factored module's tensors are named.

A candidate is a 2-D linear weight inside a decoder layer: attention q/k/v/o, the MLP's gate/up/down, the fused
`qkv_proj` / `gate_up_proj` (Phi-3), a shared expert's projections. Embeddings, heads, norms, routers and MoE
experts (transformers 5 fuses them into 3-D parameters at load time) are not.

A factored module `M` (weight [m, n]) holds `M.down.weight` [r, n] (input -> rank) and `M.up.weight` [m, r]
(rank -> output); its bias stays `M.bias`. The modeling file that `factor` writes (factored_modeling.py) builds
the same module tree.
"""

from __future__ import annotations

import re

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj",
                "gate_up_proj")
CANDIDATE = re.compile(r"^(?P<module>(?:[\w.]+\.)?layers\.\d+\.(?:[\w.]+\.)?(?:" + "|".join(LINEAR_NAMES) + r"))"
                       r"\.weight$")
NOT_CANDIDATE = re.compile(r"\.experts\.")  # MoE experts: fused 3-D parameters in transformers 5
DOWN, UP = "down", "up"


def candidate_module(tensor_name: str, shape: tuple[int, ...]) -> str | None:
    """The module name of a dense candidate weight, or None."""
    match = CANDIDATE.match(tensor_name)
    if match is None or NOT_CANDIDATE.search(tensor_name) or len(shape) != 2:
        return None
    return match["module"]


def weight_name(module: str) -> str:
    return f"{module}.weight"


def factor_names(module: str) -> tuple[str, str]:
    """(up, down) tensor names of a factored module."""
    return f"{module}.{UP}.weight", f"{module}.{DOWN}.weight"
