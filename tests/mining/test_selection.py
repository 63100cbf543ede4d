"""Selection rules on hand-made counts."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.errors import InputError
from surgery.mining.corpus import CorpusSpec
from surgery.mining.selection import Ranking, select_coverage, select_size
from surgery.mining.token_counts import CorpusCounts


def ranking(counts, weight=1.0):
    return Ranking.of([CorpusCounts(CorpusSpec("c", weight), np.array(counts, dtype=np.int64), 1, 1)])


def test_order_is_by_score_then_id():
    assert ranking([5, 0, 9, 5, 1]).order.tolist() == [2, 0, 3, 4]


def test_coverage_takes_the_smallest_prefix():
    r = ranking([50, 30, 15, 5])
    assert select_coverage(r, 0.8) == {0, 1}
    assert select_coverage(r, 0.81) == {0, 1, 2}
    with pytest.raises(InputError):
        select_coverage(r, 1.5)


def test_size_is_exact_with_closures_and_calls_the_full_rule_twice():
    """Token 3 needs 4 and 5 (a merge chain): it is skipped when it would overshoot, later ids fill the gap."""
    r = ranking([0, 10, 0, 9, 0, 0, 8, 7, 0])
    needs = {3: {4, 5}}
    calls = []

    def final_set(ids):
        calls.append(len(ids))
        return {0} | set(ids) | {n for i in ids for n in needs.get(i, ())}

    def closure(ids):
        return {n for i in ids for n in needs.get(i, ())}

    chosen = select_size(r, 4, set(), final_set, closure, 9)
    assert final_set(chosen) == {0, 1, 6, 7}  # 3 would bring 4 and 5: too many for 4 rows
    assert len(calls) == 3  # once for the forced set, once to confirm (+1 above): never once per candidate
    assert len(final_set(select_size(r, 5, set(), final_set, closure, 9))) == 5
    with pytest.raises(InputError, match="below the 1 rows that must stay"):
        select_size(r, 0, set(), final_set, closure, 9)
