"""Choose the ids to keep from token counts: by final size, coverage, minimum count or top-k.

Corpora are balanced by weight: an id's score is the sum over corpora of weight x (its share of that
corpus's tokens), so a small corpus counts as much as a large one of the same weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from surgery.errors import InputError
from surgery.token_counts import CorpusCounts

SizeOf = Callable[[set[int]], int]  # final vocabulary rows after trim for a set of requested ids


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


def select_size(ranking: Ranking, target: int, forced: set[int], size_of: SizeOf, n_ids: int) -> set[int]:
    """Requested ids such that the trimmed vocabulary has exactly `target` rows, additions included.

    The final size grows monotonically with the number of top-ranked ids, so a binary search finds the
    largest prefix that fits; then further ids (ranked, then unseen ones in id order) are tried one by one
    until the size is exact.
    """
    minimum = size_of(set(forced))
    if target < minimum:
        raise InputError(f"--size {target} is below the {minimum} rows that must stay "
                         "(special tokens, byte tokens, config ids, forced ids)")
    candidates = ranking.order.tolist()
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high + 1) // 2
        if size_of(forced | set(candidates[:middle])) <= target:
            low = middle
        else:
            high = middle - 1
    chosen = forced | set(candidates[:low])
    size = size_of(chosen)
    seen = set(candidates)
    rest = candidates[low:] + [i for i in range(n_ids) if i not in seen]
    for old_id in rest:
        if size == target:
            break
        if old_id in chosen:
            continue
        trial = size_of(chosen | {old_id})
        if trial <= target:
            chosen.add(old_id)
            size = trial
    if size != target:
        raise InputError(f"--size {target} cannot be met exactly: the tokenizer has only {size} rows to offer")
    return chosen
