"""The rank rules of surgery factor, value by value (lowrank/ranks.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from surgery.errors import InputError
from surgery.lowrank.ranks import RankRule, parse_rules


@pytest.mark.parametrize("m,n,value", [(64, 32, 0.5), (48, 32, 0.3), (3072, 1024, 0.25), (10, 7, 0.05)])
def test_rank_ratio_is_pythons_round_of_the_smaller_side(m, n, value):
    assert RankRule("rank_ratio", value).rank(m, n) == max(1, round(value * min(m, n)))


@pytest.mark.parametrize("m,n,value", [(64, 32, 0.5), (9728, 2560, 0.5), (192, 576, 0.3), (5, 5, 0.01)])
def test_param_ratio_is_svd_llms_floor(m, n, value):
    r = RankRule("param_ratio", value).rank(m, n)
    assert r == max(1, math.floor(value * m * n / (m + n)))
    assert r == 1 or r * (m + n) <= value * m * n


def test_energy_is_the_smallest_rank_reaching_the_fraction():
    s = np.array([4.0, 2.0, 1.0, 1.0, 0.5])
    energy = np.cumsum(s ** 2) / np.sum(s ** 2)  # 0.719, 0.899, 0.944, 0.989, 1.0
    for e, want in [(0.5, 1), (0.719, 1), (0.75, 2), (0.898, 2), (0.9, 3), (0.95, 4), (0.99, 5), (1.0, 5)]:
        got = RankRule("energy", e).rank(5, 5, s)
        assert got == want, (e, got)
        assert energy[got - 1] >= e and (got == 1 or energy[got - 2] < e)


def test_rank_multiple_rounds_up_and_min_side_caps():
    assert RankRule("rank_ratio", 0.3, multiple=8).rank(100, 40) == 16  # round(12) -> 16
    assert RankRule("rank_ratio", 0.9, multiple=64).rank(100, 40) == 40  # 64 capped at min(m, n)
    assert RankRule("param_ratio", 0.5, multiple=1).rank(100, 40) == 14


def test_dense_unless_fewer_parameters_except_full_rank():
    rule = RankRule("rank_ratio", 0.75)
    assert not rule.factored(32, 32, 24)  # 24 * 64 > 1024
    assert rule.factored(32, 32, 15)  # 960 < 1024
    assert not rule.factored(32, 32, 16)  # equal is not fewer
    assert RankRule("rank_ratio", 1.0).factored(32, 32, 32)


def test_parse_rules_family_and_refusals():
    rules = parse_rules("0.75,0.5,0.25", None, None, 8)
    assert [(r.kind, r.value, r.multiple, r.tag) for r in rules] == [
        ("rank_ratio", 0.75, 8, "r0.75"), ("rank_ratio", 0.5, 8, "r0.5"), ("rank_ratio", 0.25, 8, "r0.25")]
    assert parse_rules(None, "0.5", None)[0].tag == "p0.5"
    for args, message in [((None, None, None), "exactly one"), (("0.5", "0.5", None), "exactly one"),
                          (("0", None, None), "(0, 1]"), ((None, "1.5", None), "(0, 1]"),
                          ((None, None, "-0.1"), "(0, 1]"), (("0.5,abc", None, None), "not a number"),
                          (("0.5,0.5", None, None), "twice")]:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")
                           .replace("[", r"\[")):
            parse_rules(*args)
