"""The training text of `surgery distill`: corpora -> documents -> one token stream -> blocks of L ids.

Documents are read in command-line order as `surgery keep` reads plain text (a line with a non-blank character),
tokenized by the STUDENT's tokenizer as it tokenizes by default, each followed by EOS, concatenated and cut into
blocks of L tokens (the short tail dropped). The order of blocks is a seeded permutation per pass over the data, so
global batch s holds the same blocks however many processes share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from surgery.errors import InputError
from surgery.mining.corpus import CorpusSpec, read_documents


def token_blocks(corpora: Iterable[CorpusSpec], tokenize: Callable[[str], list[int]], eos_id: int,
                 seq_len: int) -> np.ndarray:
    """[n_blocks, seq_len] int64 token ids."""
    stream: list[int] = []
    for spec in corpora:
        count = 0
        for doc in read_documents(spec):
            if spec.max_docs is not None and count >= spec.max_docs:
                break
            stream += list(tokenize(doc))
            stream.append(eos_id)
            count += 1
        if count == 0:
            raise InputError(f"{spec.path}: no documents (a document is a line with a non-blank character)")
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise InputError(f"the corpora hold {len(stream)} tokens, fewer than one block of --seq-len {seq_len}")
    return np.asarray(stream[: n_blocks * seq_len], dtype=np.int64).reshape(n_blocks, seq_len)


def step_blocks(n_blocks: int, seed: int, step: int, global_batch: int) -> np.ndarray:
    """The block indices of optimizer step `step` (0-based): positions step·B .. step·B + B-1 of the endless
    sequence of seeded permutations (pass e is permutation(seed, e))."""
    positions = np.arange(step * global_batch, (step + 1) * global_batch)
    epochs, offsets = np.divmod(positions, n_blocks)
    result = np.empty(global_batch, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n_blocks)
        chosen = epochs == epoch
        result[chosen] = order[offsets[chosen]]
    return result


def process_slice(indices: np.ndarray, micro_step: int, grad_accum: int, rank: int, world: int) -> np.ndarray:
    """The blocks one process takes in one micro-step: B / (world x G) consecutive entries of the global batch."""
    per = len(indices) // (world * grad_accum)
    start = (micro_step * world + rank) * per
    return indices[start : start + per]
