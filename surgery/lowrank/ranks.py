"""The rank rules of `surgery factor`: one rule, one value per family member, one rank per target.

    --rank-ratio R    r = max(1, round(R · min(m, n)))             (Python's round)
    --param-ratio P   r = max(1, floor(P · m · n / (m + n)))      (SVD-LLM: the factors hold at most P of W)
    --energy E        the smallest r with Σ_{i<r} s_i² >= E · Σ s_i²
then rounded up to a multiple of K (--rank-multiple), capped at min(m, n). A target whose factors would not hold
fewer numbers than W stays dense, except at --rank-ratio 1 exactly (full rank, where exactness is provable).
(m, n) are always the original matrix's, also when the source is already factored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from surgery.errors import InputError

RULES = {"rank_ratio": ("--rank-ratio", "r"), "param_ratio": ("--param-ratio", "p"), "energy": ("--energy", "e")}


@dataclass(frozen=True)
class RankRule:
    kind: str  # "rank_ratio", "param_ratio" or "energy"
    value: float
    multiple: int = 1

    @property
    def option(self) -> str:
        return RULES[self.kind][0]

    @property
    def tag(self) -> str:
        """The suffix of a family member's output folder: OUT-r0.5, OUT-p0.5, OUT-e0.9."""
        return f"{RULES[self.kind][1]}{self.value:g}"

    @property
    def needs_spectrum(self) -> bool:
        return self.kind == "energy"

    @property
    def full_rank(self) -> bool:
        return self.kind == "rank_ratio" and self.value == 1

    def rank(self, m: int, n: int, spectrum: np.ndarray | None = None) -> int:
        """The rule's rank for an m x n matrix (before the dense-or-factored decision)."""
        if self.kind == "rank_ratio":
            r = max(1, round(self.value * min(m, n)))
        elif self.kind == "param_ratio":
            r = max(1, math.floor(self.value * m * n / (m + n)))
        else:
            if spectrum is None:
                raise ValueError("--energy needs the singular values")
            energy = np.cumsum(np.asarray(spectrum, dtype=np.float64) ** 2)
            total = energy[-1] if len(energy) else 0.0
            r = 1 if total <= 0 else int(np.searchsorted(energy, self.value * total * (1 - 1e-12)) + 1)
        r = -(-r // self.multiple) * self.multiple
        return min(r, min(m, n))

    def factored(self, m: int, n: int, rank: int) -> bool:
        """Whether a target at `rank` is written as two factors (fewer numbers than W, or full rank asked)."""
        return self.full_rank or rank * (m + n) < m * n


def parse_rules(rank_ratio: str | None, param_ratio: str | None, energy: str | None, multiple: int = 1
                ) -> list[RankRule]:
    """Exactly one rule; a comma-separated list of values makes a family (one output per value, in order)."""
    given = [(kind, text) for kind, text in (("rank_ratio", rank_ratio), ("param_ratio", param_ratio),
                                              ("energy", energy)) if text is not None]
    if len(given) != 1:
        raise InputError("choose exactly one of --rank-ratio, --param-ratio, --energy"
                         + ("" if not given else f" (got {', '.join(RULES[k][0] for k, _ in given)})"))
    if multiple < 1:
        raise InputError(f"--rank-multiple {multiple}: must be a positive integer")
    kind, text = given[0]
    option = RULES[kind][0]
    values = []
    for part in str(text).split(","):
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"{option} {text}: '{part.strip()}' is not a number") from None
        if not 0 < value <= 1:
            raise InputError(f"{option} {part.strip()}: must be in (0, 1]")
        if value in values:
            raise InputError(f"{option} {text}: {part.strip()} is given twice")
        values.append(value)
    return [RankRule(kind, value, multiple) for value in values]
