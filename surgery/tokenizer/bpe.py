"""BPE facts shared by tokenizer.json BPE and SentencePiece BPE: the merge closure and the byte alphabet."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (openai/gpt-2 encoder.py; tokenizers byte_level.rs)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


BYTE_LEVEL_ALPHABET: tuple[str, ...] = tuple(bytes_to_unicode().values())
BYTE_FALLBACK_PIECES: tuple[str, ...] = tuple(f"<0x{byte:02X}>" for byte in range(256))

def merge_result(a: str, b: str, prefix: str) -> str:
    """The token a merge of (a, b) produces: b loses its continuing_subword_prefix (tokenizers bpe/word.rs)."""
    return a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)


PairRank = Callable[[str, str], "tuple[float, str] | None"]  # (rank, merged symbol) or None if no merge
SHORT_WORD = 64  # up to this many symbols a word is replayed by scanning (faster in Python than a heap)


@dataclass(frozen=True, slots=True)
class MergeTable:
    """A PairRank for merges whose result is the concatenation a + b, read from one dict: by `a + sep + b` (the
    "a b" strings of gpt2 merges, rank = index) or, with sep None, by the result (SentencePiece: rank = -score).
    merge_path replays short words against the dict directly, without a call per pair."""

    ranks: dict[str, float]
    sep: str | None

    def __call__(self, a: str, b: str) -> tuple[float, str] | None:
        rank = self.ranks.get(a + b if self.sep is None else a + self.sep + b)
        return None if rank is None else (rank, a + b)


def merge_path(symbols: list[str], pair_rank: PairRank) -> tuple[list[str], list[str]]:
    """Replay BPE on one word: repeatedly merge the lowest-rank adjacent pair, leftmost first on ties.

    Returns the final symbols and every symbol that appeared on the way (initial symbols included). This is
    the rule of tokenizers' BPE (lowest merge rank) and of SentencePiece BPE (highest piece score, as rank
    = -score). A heap of candidate pairs over a linked list of symbols, as tokenizers' word.rs does: O(n log n)
    in the word's length, so a hostile 512 KiB token costs seconds, not hours.
    """
    if isinstance(pair_rank, MergeTable) and len(symbols) <= SHORT_WORD:
        return _merge_path_table(symbols, pair_rank.ranks, pair_rank.sep)
    seen = list(symbols)
    n = len(symbols)
    if n < 2:
        return list(symbols), seen
    text = list(symbols)  # text[i]: the symbol starting at slot i (None once merged into its left neighbour)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    version = [0] * n  # bumped whenever the symbol at slot i changes, to recognise stale heap entries
    heap: list = []

    def push(left: int) -> None:
        right = nxt[left]
        if right < n:
            found = pair_rank(text[left], text[right])
            if found is not None:
                # ties go to the leftmost pair: slots keep their original order
                heapq.heappush(heap, (found[0], left, version[left], version[right], right, found[1]))

    for slot in range(n - 1):
        push(slot)
    while heap:
        _, left, left_version, right_version, right, merged = heapq.heappop(heap)
        if (text[left] is None or text[right] is None or version[left] != left_version
                or version[right] != right_version or nxt[left] != right):
            continue
        text[left], text[right] = merged, None
        version[left] += 1
        nxt[left] = nxt[right]
        if nxt[right] < n:
            prv[nxt[right]] = left
        seen.append(merged)
        if prv[left] >= 0:
            push(prv[left])
        push(left)
    return [t for t in text if t is not None], seen


def _merge_path_table(symbols: list[str], ranks: dict[str, float], sep: str | None) -> tuple[list[str], list[str]]:
    """merge_path for a MergeTable: one rank per adjacent pair in a list, the lowest found by min() and the
    leftmost of equals by index(), both in C; after a merge only its two neighbours are looked up again."""
    text = list(symbols)
    seen = list(symbols)
    get, inf = ranks.get, math.inf
    if sep is None:
        pair = [get(a + b, inf) for a, b in zip(text, text[1:])]
    else:
        pair = [get(a + sep + b, inf) for a, b in zip(text, text[1:])]
    while pair:
        best = min(pair)
        if best == inf:
            break
        i = pair.index(best)
        merged = text[i] + text[i + 1]
        text[i : i + 2] = [merged]
        seen.append(merged)
        del pair[i]
        if i > 0:
            pair[i - 1] = get(text[i - 1] + merged if sep is None else text[i - 1] + sep + merged, inf)
        if i < len(pair):
            pair[i] = get(merged + text[i + 1] if sep is None else merged + sep + text[i + 1], inf)
    return text, seen


def merge_closure(
    tokens: Iterable[str], initial_symbols: Callable[[str], list[str]], pair_rank: PairRank,
    memo: dict[str, list[str] | None] | None = None,
) -> set[str]:
    """Every symbol the merges pass through when building each token from its characters.

    A token that the merges cannot build from its own characters (whole-word-only with ignore_merges, or an
    added token) contributes nothing: it is skipped, not an error. Inside a longer word, the merges that
    build a final token act only inside its span, in the same order as on the token alone, so replaying the
    token alone finds exactly the intermediates any text needs. `memo` (token -> its symbols, or None when the
    merges do not build it) carries replays from one call to the next: a script planning many trims of one
    source replays each token once.
    """
    needed: set[str] = set()
    # longest first: a token already formed inside a longer token's replay has its own replay inside it (the
    # same argument), so its intermediates are already in `needed`
    for token in sorted(tokens, key=len, reverse=True):
        if token in needed:
            continue
        if memo is not None and token in memo:
            seen = memo[token]
        else:
            start = initial_symbols(token)
            seen = None
            if len(start) >= 2:
                final, path = merge_path(start, pair_rank)
                seen = path if final == [token] else None
            if memo is not None:
                memo[token] = seen
        if seen:
            needed.update(seen)
    return needed
