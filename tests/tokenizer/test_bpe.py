"""The BPE replay behind every merge closure: lowest rank first, leftmost on ties, and linear-logarithmic in the
length of a token (a hostile 512 KiB token in a GGUF vocabulary must not take minutes)."""

from __future__ import annotations

import random

from surgery.tokenizer.bpe import MergeTable, merge_path


def reference_merge_path(symbols, pair_rank):
    """The textbook replay: scan every pair for the lowest rank, merge it, repeat (quadratic)."""
    symbols, seen = list(symbols), list(symbols)
    while True:
        found = [(pair_rank(a, b), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        found = [(rank, i) for rank, i in found if rank is not None]
        if not found:
            return symbols, seen
        (_, merged), position = min(found, key=lambda item: (item[0][0], item[1]))
        symbols[position : position + 2] = [merged]
        seen.append(merged)


def test_same_merges_as_the_textbook_replay():
    rng = random.Random(0)
    merges = {}
    for rank in range(300):
        a = "".join(rng.choice("abcd") for _ in range(rng.randint(1, 3)))
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(1, 3)))
        merges.setdefault((a, b), rank)

    def ranked(a, b):
        return (merges[(a, b)], a + b) if (a, b) in merges else None

    def tied(a, b):  # every short pair at rank 0: ties go to the leftmost pair
        return (0, a + b) if len(a + b) <= 4 else None

    for _ in range(2000):
        word = list("".join(rng.choice("abcd") for _ in range(rng.randint(1, 40))))
        assert merge_path(word, ranked) == reference_merge_path(word, ranked)
        assert merge_path(word, tied) == reference_merge_path(word, tied)


def test_a_long_token_replays_in_about_linear_steps():
    calls = 0

    def rank(a, b):
        nonlocal calls
        calls += 1
        return (len(a) + len(b), a + b) if len(a) + len(b) <= 8 else None

    final, seen = merge_path(list("a" * 2**17), rank)
    assert "".join(final) == "a" * 2**17 and all(len(s) == 8 for s in final)
    assert calls < 4 * 2**17  # each merge re-ranks only its two neighbours


def test_a_merge_table_replays_as_its_pair_rank():
    """The fast path for dict-ranked merges (gpt2 "a b" strings; SentencePiece scores by result) is the replay."""
    rng = random.Random(1)
    by_pair, by_result = {}, {}
    for rank in range(400):
        a = "".join(rng.choice("abcd") for _ in range(rng.randint(1, 3)))
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(1, 3)))
        by_pair.setdefault(f"{a} {b}", rank)
        by_result.setdefault(a + b, -rng.choice([0.5, 1.0, 2.0, float(rank)]))  # ties among scores too
    for table in (MergeTable(by_pair, " "), MergeTable(by_result, None)):
        def rank(a, b, table=table):
            return table(a, b)

        for _ in range(2000):
            word = list("".join(rng.choice("abcd") for _ in range(rng.randint(1, 80))))
            assert merge_path(word, table) == reference_merge_path(word, rank)


def test_a_memo_carries_replays_from_one_closure_to_the_next(monkeypatch):
    """Many trims of one source: the second closure replays nothing and equals a closure without a memo."""
    import surgery.tokenizer.bpe as bpe

    merges = {"a b": 0, "ab c": 1, "c d": 2, "ab cd": 3, "x y": 4}
    table = MergeTable(merges, " ")
    tokens = ["ab", "abc", "cd", "abcd", "xy", "yx"]
    memo: dict = {}
    first = bpe.merge_closure(tokens, list, table, memo)
    replays = []
    real = bpe.merge_path
    monkeypatch.setattr(bpe, "merge_path", lambda symbols, rank: replays.append(symbols) or real(symbols, rank))
    assert bpe.merge_closure(tokens, list, table, memo) == first and not replays
    assert bpe.merge_closure(tokens, list, table) == first and replays  # the same without the memo
    assert memo["yx"] is None  # the merges cannot build it: it contributes nothing, remembered as such
