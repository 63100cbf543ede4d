"""compare: what a cut cost, in the statistics llama.cpp users read (`llama-perplexity --kl-divergence`).

SRC and every OUT read the same documents (SRC's tokenization); per scored position t = 0..n-2 (it predicts token
t+1): KL(P_src || P_out) over the compared vocabulary, the NLL of the actual next token under each model, and
whether the two argmaxes agree; all in float64 from the logits the checkpoint's dtype gives. SRC runs once per
batch, every OUT on the same batch. A trim of SRC (its trim record) is compared over the kept ids: SRC's logits
restricted to `old_ids` and renormalized, OUT's first K rows; a document is scored only when every one of its ids
is kept. Under `accelerate launch` the documents are split over the processes and the per-position values
gathered, so the statistics are those of one process.

Runs models: the torch extra for folders (transformers), llama-cpp-python for GGUF files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.engine import import_torch, input_device, load_causal_lm, load_tokenizer, processes
from surgery.errors import CheckpointError, InputError
from surgery.mining.corpus import CorpusSpec, read_documents
from surgery.model.keys import Record, Tokenizer

COMPARE_FORMAT = "surgery-compare/1"
TRIM_RECORD = "surgery_trim.json"
POSITION_CHUNK = 64  # positions whose float64 log-probabilities are held at once (262k vocab: 134 MB)


# ---- the models -------------------------------------------------------------------------------------------


class HfModel:
    """A folder run by transformers, in the dtype its config names (an F32 model is never downcast)."""

    def __init__(self, path: Path, device: str) -> None:
        self.torch, _ = import_torch("compare on a folder")
        self.path, self.device = path, device
        self.model = load_causal_lm(path, "compare", device=device)
        self.tokenizer = load_tokenizer(path, "compare")
        self.input_device = input_device(self.model, device)
        self.rows = int(self.model.get_output_embeddings().weight.shape[0])

    def tokenize(self, doc: str) -> list[int]:
        return list(self.tokenizer(doc)["input_ids"])

    def tokens(self) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))

    def trim_record(self) -> dict | None:
        path = self.path / TRIM_RECORD
        return json.loads(path.read_text()) if path.exists() else None

    def logits(self, batch: list[list[int]]) -> list[np.ndarray]:
        """Each document's logits [n, rows] as float64 numpy arrays; right-padded batches with a mask."""
        torch = self.torch
        width = max(len(ids) for ids in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, doc in enumerate(batch):
            ids[row, : len(doc)] = torch.tensor(doc)
            mask[row, : len(doc)] = 1
        with torch.no_grad():
            out = self.model(input_ids=ids.to(self.input_device), attention_mask=mask.to(self.input_device),
                             use_cache=False)
        return [out.logits[row, : len(doc)].double().cpu().numpy() for row, doc in enumerate(batch)]


class GgufModel:
    """A GGUF file run by llama.cpp (llama-cpp-python), tokenized as llama-perplexity does: special tokens added
    (BOS), text not parsed for special tokens."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        try:
            import llama_cpp
        except ImportError as e:
            raise InputError("surgery compare on a GGUF file needs llama-cpp-python: pip install llama-cpp-python")\
                from e
        from surgery.edit.gguf_edit import open_gguf

        self.path = path
        self.parts = open_gguf(path)
        try:
            self.model = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                                         verbose=False)
        except (ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path.name}: llama.cpp cannot load it: {e}") from e
        self.rows = int(self.model.n_vocab())

    def tokenize(self, doc: str) -> list[int]:
        return list(self.model.tokenize(doc.encode("utf-8"), add_bos=True, special=False))

    def tokens(self) -> list[str]:
        return list(self.parts[0].get(Tokenizer.TOKENS) or [])

    def trim_record(self) -> dict | None:
        text = self.parts[0].get(Record.TRIM)
        return json.loads(text) if text else None

    def logits(self, batch: list[list[int]]) -> list[np.ndarray]:
        out = []
        for doc in batch:
            self.model.reset()
            self.model.eval(doc)
            out.append(np.array(self.model.scores[: len(doc)], dtype=np.float64))
        return out


def is_gguf_path(path: Path) -> bool:
    """A GGUF file, or a Hugging Face folder; refused (before any model is loaded) when neither."""
    if path.suffix == ".gguf" and path.is_file():
        return True
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: neither a Hugging Face folder (config.json) nor a GGUF file")
    return False


def open_model(path: Path, device: str, n_ctx: int):
    return GgufModel(path, n_ctx) if is_gguf_path(path) else HfModel(path, device)


# ---- what is compared ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """How an OUT's vocabulary relates to SRC's: the same ids, or a trim (kept old ids, renumbered 0..K-1)."""

    kind: str  # "same-vocab" | "trim"
    old_ids: np.ndarray | None = None
    old_to_new: np.ndarray | None = None


def relation(src, out, src_tokens: list[str]) -> Relation:
    record = out.trim_record()
    if record is not None:
        old_ids = np.asarray(record["old_ids"], dtype=np.int64)
        if record.get("old_vocab_rows") != src.rows:
            raise InputError(f"{out.path}: its trim record was made from a source with {record.get('old_vocab_rows')} "
                             f"rows, but {src.path.name} has {src.rows}")
        out_tokens = out.tokens()
        if any(out_tokens[new] != src_tokens[old] for new, old in enumerate(old_ids[: len(out_tokens)])):
            raise InputError(f"{out.path}: its trim record names tokens that {src.path.name} does not have at "
                             "those ids; it was made from another source")
        old_to_new = np.full(max(src.rows, len(src_tokens)), -1, np.int64)
        old_to_new[old_ids] = np.arange(len(old_ids))
        return Relation("trim", old_ids, old_to_new)
    if out.rows == src.rows and out.tokens() == src_tokens:
        return Relation("same-vocab")
    raise InputError(f"{out.path}: its vocabulary differs from {src.path.name}'s ({out.rows} vs {src.rows} logit rows) "
                     "and it has no trim record to map it",
                     hint="compare a trim with the source it was trimmed from")


def load_documents(corpora: Iterable[CorpusSpec], max_docs: int) -> list[str]:
    """The first max_docs documents of EACH corpus, read as `surgery keep` reads them."""
    docs = []
    for spec in corpora:
        limit = spec.max_docs or max_docs
        taken = [doc for _, doc in zip(range(limit), read_documents(spec))]
        if not taken:
            raise InputError(f"{spec.path}: no documents (a document is a line with a non-blank character)")
        docs += taken
    if not docs:
        raise InputError("compare needs at least one corpus")
    return docs


# ---- the statistics ----------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def position_stats(src_logits: np.ndarray, out_logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[positions, 4]: KL(src || out), NLL under src, NLL under out, argmax agreement; float64, in chunks."""
    rows = []
    for start in range(0, len(targets), POSITION_CHUNK):
        stop = start + POSITION_CHUNK
        lp_src, lp_out = log_softmax(src_logits[start:stop]), log_softmax(out_logits[start:stop])
        kl = (np.exp(lp_src) * (lp_src - lp_out)).sum(axis=-1)
        picked = np.arange(len(lp_src)), targets[start:stop]
        agree = lp_src.argmax(axis=-1) == lp_out.argmax(axis=-1)
        rows.append(np.stack([kl, -lp_src[picked], -lp_out[picked], agree.astype(np.float64)], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 4))


def summarize(path: Path, kind: str, documents: int, skipped: int, values: np.ndarray) -> dict:
    kl, nll_src, nll_out, agree = values.T if len(values) else (np.zeros(0),) * 4
    n = len(kl)
    return {
        "path": str(path), "relation": kind, "documents": documents, "skipped_documents": skipped, "positions": n,
        "kld": {"mean": float(kl.mean()), "stderr": float(kl.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
                "median": float(np.quantile(kl, 0.5)), "p90": float(np.quantile(kl, 0.9)),
                "p99": float(np.quantile(kl, 0.99)), "max": float(kl.max())},
        "top1_agreement": float(agree.mean()),
        "ppl_source": float(math.exp(nll_src.mean())), "ppl_output": float(math.exp(nll_out.mean())),
    }


def compare_models(src_path, out_paths: list, corpora: Iterable[CorpusSpec], *, max_docs: int = 256,
                   max_length: int = 512, batch_size: int = 8, device: str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """The surgery-compare/1 document: one entry per OUT, in the order given."""
    if max_length < 2:
        raise InputError(f"--max-length {max_length}: at least 2 tokens are needed to score a position")
    if not out_paths:
        raise InputError("compare needs at least one OUT")
    for path in (src_path, *out_paths):
        is_gguf_path(Path(path))
    docs = load_documents(list(corpora), max_docs)
    state = processes()
    src = open_model(Path(src_path), device, max_length)
    outs = [open_model(Path(p), device, max_length) for p in out_paths]
    src_tokens = src.tokens()
    relations = [relation(src, out, src_tokens) for out in outs]
    encoded = [ids[:max_length] for ids in (src.tokenize(doc) for doc in docs)]
    mine = list(range(state.index, len(encoded), state.count))  # this process's documents
    per_doc: dict[int, list] = {}
    for start in range(0, len(mine), batch_size):
        batch = [i for i in mine[start : start + batch_size] if len(encoded[i]) >= 2]
        if batch:
            src_logits = src.logits([encoded[i] for i in batch])
            for out, rel in zip(outs, relations):
                _score_batch(out, rel, batch, encoded, src_logits, per_doc)
        if progress is not None:
            progress(min(start + batch_size, len(mine)), len(mine))
    per_doc = {i: values for part in state.gather(per_doc) for i, values in part.items()}
    state.finish()
    entries = []
    for k, (path, rel) in enumerate(zip(out_paths, relations)):
        scored = [per_doc[i][k] for i in sorted(per_doc) if per_doc[i][k] is not None]
        skipped = len(encoded) - len(scored)  # documents under 2 tokens, and a trim's documents with a dropped id
        if not scored:
            raise InputError(f"{path}: no document could be scored ({skipped} of {len(encoded)} skipped: a trim scores "
                             "only documents whose every id it kept)")
        entries.append(summarize(Path(path), rel.kind, len(scored), skipped, np.concatenate(scored)))
    return {"format": COMPARE_FORMAT, "source": str(src_path), "outputs": entries}


def _score_batch(out, rel: Relation, batch: list[int], encoded: list[list[int]], src_logits, per_doc) -> None:
    """Score one OUT on the documents of a batch (a trim: only documents whose ids are all kept)."""
    runnable, mapped = [], []
    for i in batch:
        ids = np.asarray(encoded[i])
        if rel.kind == "trim":
            new = rel.old_to_new[ids] if ids.max() < len(rel.old_to_new) else np.array([-1])
            if (new < 0).any():
                per_doc.setdefault(i, []).append(None)
                continue
            ids = new
        runnable.append(i)
        mapped.append(ids.tolist())
    out_logits = out.logits(mapped) if mapped else []
    position = {i: p for p, i in enumerate(batch)}
    for i, ids, logits in zip(runnable, mapped, out_logits):
        source = src_logits[position[i]][:-1]
        if rel.kind == "trim":
            source, logits = source[:, rel.old_ids], logits[:, : len(rel.old_ids)]
        per_doc.setdefault(i, []).append(position_stats(source, logits[:-1], np.asarray(ids[1:])))
