"""The modeling file `surgery factor` writes into its output, and the config entries that point at it.

The file needs only torch and transformers (no `surgery`): it subclasses the source architecture's transformers
class and swaps each factored module for a two-factor linear layer, whose tensor names match factor_targets.
`AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)` finds it through `auto_map`.
"""

from __future__ import annotations

import re

MODELING_FILE = "modeling_surgery_factor.py"
RECORD_KEY = "surgery_factor"
AUTO_CLASS = "AutoModelForCausalLM"
CAUSAL_LM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*ForCausalLM$")

TEMPLATE = '''"""Written by `surgery factor`: {architecture} whose linear layers listed in
config.surgery_factor["ranks"] are low-rank: y = up(down(x)) + bias, with down [rank, in] and up [out, rank].

Load with AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True); `surgery unfactor` multiplies the
factors back into a plain {architecture} checkpoint.
"""

import torch
from torch import nn
from transformers import {architecture} as _Base


class FactoredLinear(nn.Module):
    """A rank-r linear layer as two thin factors; the bias stays a bias."""

    def __init__(self, in_features, out_features, rank, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        y = self.up(self.down(x))
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return f"in_features={{self.in_features}}, out_features={{self.out_features}}, rank={{self.rank}}"


class {class_name}(_Base):
    def __init__(self, config):
        super().__init__(config)
        for name, rank in config.{record_key}["ranks"].items():
            parent_name, _, child = name.rpartition(".")
            parent = self.get_submodule(parent_name)
            dense = getattr(parent, child)
            setattr(parent, child, FactoredLinear(dense.in_features, dense.out_features, rank, dense.bias is not None,
                                                  device=dense.weight.device, dtype=dense.weight.dtype))
'''


def class_name(architecture: str) -> str:
    return f"Factored{architecture}"


def modeling_source(architecture: str) -> bytes:
    return TEMPLATE.format(architecture=architecture, class_name=class_name(architecture),
                           record_key=RECORD_KEY).encode("utf-8")


def auto_map(architecture: str) -> dict[str, str]:
    return {AUTO_CLASS: f"{MODELING_FILE.removesuffix('.py')}.{class_name(architecture)}"}


def trusted_code(folder) -> bool:
    """Whether a folder's remote code is exactly the modeling file surgery factor writes (so loading it with
    trust_remote_code runs nothing else): its config's auto_map names only that file, which is byte-identical."""
    import json
    from pathlib import Path

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        architecture = config[RECORD_KEY]["architecture"]
        written = (folder / MODELING_FILE).read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (isinstance(architecture, str) and CAUSAL_LM.match(architecture) is not None
            and config.get("auto_map") == auto_map(architecture) and written == modeling_source(architecture))
