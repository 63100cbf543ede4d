"""Choose the ids to keep from token counts: by final size, coverage, minimum count or top-k.

Corpora are balanced by weight: an id's score is the sum over corpora of weight x (its share of that
corpus's tokens), so a small corpus counts as much as a large one of the same weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from surgery.errors import InputError
from surgery.mining.token_counts import CorpusCounts

FinalSet = Callable[[set[int]], set[int]]  # the final kept set for a set of requested ids
Closure = Callable[[set[int]], set[int]]  # the ids that a set of ids needs (merge or Unigram rules)


@dataclass(frozen=True, slots=True)
class Ranking:
    order: np.ndarray  # ids by score, best first (ties: lower id first); only ids seen in some corpus
    scores: np.ndarray  # per id, sums to the total weight
    raw: np.ndarray  # per id, the plain count over all corpora

    @classmethod
    def of(cls, corpora: list[CorpusCounts]) -> Ranking:
        scores = np.zeros(len(corpora[0].counts), dtype=np.float64)
        for corpus in corpora:
            if corpus.tokens:
                scores += corpus.spec.weight * corpus.counts / corpus.tokens
        raw = np.sum([c.counts for c in corpora], axis=0)
        seen = np.flatnonzero(raw)
        order = seen[np.lexsort((seen, -scores[seen]))]
        return cls(order, scores, raw)

    def coverage(self, ids) -> float:
        """Weighted share of corpus tokens that the ids cover."""
        total = self.scores.sum()
        return float(self.scores[list(ids)].sum() / total) if total else 0.0

    def curve(self, sizes: list[int]) -> dict[int, float]:
        cumulative = np.cumsum(self.scores[self.order]) / max(self.scores.sum(), 1e-300)
        return {n: float(cumulative[min(n, len(self.order)) - 1]) if len(self.order) else 0.0 for n in sizes}


def select_top_k(ranking: Ranking, k: int) -> set[int]:
    return set(ranking.order[:k].tolist())


def select_min_count(ranking: Ranking, min_count: int) -> set[int]:
    return set(np.flatnonzero(ranking.raw >= min_count).tolist())


def select_coverage(ranking: Ranking, fraction: float) -> set[int]:
    """The smallest top-ranked set whose weighted coverage reaches `fraction`."""
    if not 0 < fraction <= 1:
        raise InputError(f"--coverage must be in (0, 1], got {fraction}")
    cumulative = np.cumsum(ranking.scores[ranking.order]) / max(ranking.scores.sum(), 1e-300)
    k = int(np.searchsorted(cumulative, fraction - 1e-12)) + 1
    return select_top_k(ranking, k)


def select_size(ranking: Ranking, target: int, forced: set[int], final_set: FinalSet, closure: Closure,
                n_ids: int) -> set[int]:
    """Requested ids such that the trimmed vocabulary has exactly `target` rows, additions included.

    Ids below n_ids (the ids that have rows) are taken best-ranked first (then unseen ids, in id order), each
    with what it needs (`closure`); one
    whose needs would overshoot the target is passed over, so the size is met exactly. The closure of a set
    is the union of its members' closures, so the running total is the final size; final_set confirms it.
    """
    kept = final_set(set(forced))
    if len(kept) > target:
        raise InputError(f"--size {target} is below the {len(kept)} rows that must stay "
                         "(special tokens, byte tokens, config ids, forced ids)")
    chosen = set(forced)
    seen = set(ranking.order.tolist())
    candidates = [i for i in ranking.order.tolist() if i < n_ids] + [i for i in range(n_ids) if i not in seen]
    for old_id in candidates:
        if len(kept) == target:
            break
        if old_id in kept:
            chosen.add(old_id)
            continue
        needed = ({old_id} | closure({old_id})) - kept
        if len(kept) + len(needed) <= target:
            kept |= needed
            chosen.add(old_id)
    if len(kept) != target:
        raise InputError(f"--size {target} cannot be met exactly: the tokenizer has only {len(kept)} rows to offer")
    final = len(final_set(chosen))
    assert final == target, f"select_size: running total {target} but the final set has {final} rows"
    return chosen
