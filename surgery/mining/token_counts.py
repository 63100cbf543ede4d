"""count_tokens: how often each id occurs in corpora, using the checkpoint's own tokenizer.

Streaming in batches through the `tokenizers` batch API (all cores) or the SentencePiece processor;
counting with numpy, so memory stays flat in corpus size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.errors import CheckpointError
from surgery.mining.corpus import CorpusSpec, read_documents
from surgery.tokenizer import (
    SP_MODEL_NAMES,
    SP_VERSIONED_GLOB,
    TEKKEN_JSON,
    TOKENIZER_JSON,
)

BATCH_DOCS = 2000

Encoder = Callable[[list[str]], list[list[int]]]
Progress = Callable[[int, int], None]  # (documents, bytes) just read


@dataclass(frozen=True, slots=True)
class CorpusCounts:
    spec: CorpusSpec
    counts: np.ndarray  # int64, one per tokenizer id
    documents: int
    nbytes: int

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())


def load_encoder(root: Path) -> Encoder:
    """Batch encoder of the checkpoint's tokenizer, without special tokens."""
    if (root / TOKENIZER_JSON).exists():
        import tokenizers

        tokenizer = tokenizers.Tokenizer.from_file(str(root / TOKENIZER_JSON))
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # no offsets: faster
        return lambda docs: [e.ids for e in encode(docs, add_special_tokens=False)]
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(root / _sp_model_name(root)))
    return lambda docs: processor.encode(docs, num_threads=-1)


def _sp_model_name(root: Path) -> str:
    name = next((n for n in SP_MODEL_NAMES if (root / n).exists()), None)
    name = name or next((p.name for p in sorted(root.glob(SP_VERSIONED_GLOB))), None)
    if name is None:
        raise CheckpointError(f"{root}: tokenizing text needs {TOKENIZER_JSON} or a SentencePiece model; "
                              f"{TEKKEN_JSON} alone is not read by surgery's encoder",
                              hint="mine the ids on the Hugging Face folder of the same model (it has tokenizer.json)")
    return name


def load_decoder(root: Path) -> Callable[[list[int]], str]:
    """ids -> text with the checkpoint's tokenizer (tokenizer.json, else its SentencePiece model)."""
    if (root / TOKENIZER_JSON).exists():
        import tokenizers

        return tokenizers.Tokenizer.from_file(str(root / TOKENIZER_JSON)).decode
    import sentencepiece

    name = _sp_model_name(root)
    return sentencepiece.SentencePieceProcessor(model_file=str(root / name)).decode


def count_tokens(encode: Encoder, spec: CorpusSpec, n_ids: int, *, field: str = "text", whole_files: bool = False,
                 max_docs: int | None = None, max_bytes: int | None = None,
                 progress: Progress | None = None) -> CorpusCounts:
    """Count ids of one corpus; stops at max_docs documents or max_bytes of text, whichever comes first."""
    counts = np.zeros(n_ids, dtype=np.int64)
    documents = nbytes = 0
    docs = read_documents(spec, field=field, whole_files=whole_files)
    for batch in batches(docs, max_docs, max_bytes):
        ids = encode(batch)
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
        counts += np.bincount(flat[flat < n_ids], minlength=n_ids)
        batch_bytes = sum(len(doc.encode("utf-8")) for doc in batch)
        documents += len(batch)
        nbytes += batch_bytes
        if progress:
            progress(len(batch), batch_bytes)
    return CorpusCounts(spec, counts, documents, nbytes)


def batches(docs: Iterator[str], max_docs: int | None = None, max_bytes: int | None = None) -> Iterator[list[str]]:
    """Lists of up to BATCH_DOCS documents, stopping at max_docs documents or max_bytes of UTF-8 text."""
    batch: list[str] = []
    seen_docs = seen_bytes = 0
    for doc in docs:
        if (max_docs is not None and seen_docs >= max_docs) or (max_bytes is not None and seen_bytes >= max_bytes):
            break
        batch.append(doc)
        seen_docs += 1
        seen_bytes += len(doc.encode("utf-8"))
        if len(batch) == BATCH_DOCS:
            yield batch
            batch = []
    if batch:
        yield batch
