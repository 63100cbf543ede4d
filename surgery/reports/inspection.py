"""inspect_checkpoint: what a checkpoint holds, from headers and small files only (no tensor bytes)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from surgery.dtypes import DTYPE_BITS
from surgery.errors import CheckpointError
from surgery.formats.base import Container
from surgery.formats.hf_folder import Checkpoint
from surgery.model.config_keys import get_dotted, named_token_ids, vocab_size_keys
from surgery.model.vocab_tensors import VocabTensors, find_vocab_tensors
from surgery.tokenizer import TokenizerFiles


def weights_summary(container: Container, dtype_order=None) -> dict:
    """Tensor files, parameters and bytes in all and by dtype: the first part of every inspect report."""
    by_dtype: dict[str, dict[str, int]] = defaultdict(lambda: {"parameters": 0, "nbytes": 0})
    files = []
    for path, tensors in container.tensor_files():
        for tensor in tensors:
            by_dtype[tensor.dtype]["parameters"] += math.prod(tensor.shape)
            by_dtype[tensor.dtype]["nbytes"] += tensor.nbytes
        files.append({"name": path.name, "tensors": len(tensors), "nbytes": sum(t.nbytes for t in tensors)})
    return {
        "shards": files,
        "parameters": sum(d["parameters"] for d in by_dtype.values()),
        "nbytes": sum(d["nbytes"] for d in by_dtype.values()),
        "by_dtype": dict(sorted(by_dtype.items(), key=(lambda item: dtype_order(item[0])) if dtype_order else None)),
    }


def inspect_source(src: Path, vocab_tensors: tuple[str, ...] = (), not_vocab_tensors: tuple[str, ...] = (), *,
                   tokenizer_required: bool = False) -> dict:
    """The `inspect --json` document of a folder or a GGUF file, reading no tensor data. A folder's tokenizer that
    cannot be loaded is reported, not raised, unless `tokenizer_required` (a trim plan follows)."""
    from surgery.formats.paths import is_gguf

    if is_gguf(src):
        from surgery.edit.gguf_edit import open_gguf
        from surgery.reports.gguf_reports import inspect_gguf

        return inspect_gguf(open_gguf(src), vocab_tensors, not_vocab_tensors)
    checkpoint = Checkpoint.open(src)
    vocab = find_vocab_tensors(checkpoint, vocab_tensors, not_vocab_tensors)
    try:
        tokenizer = TokenizerFiles.load(src)
    except CheckpointError as e:
        if tokenizer_required:
            raise
        tokenizer = e
    return inspect_checkpoint(checkpoint, vocab, tokenizer)


def inspect_checkpoint(ckpt: Checkpoint, vocab: VocabTensors, tokenizer: TokenizerFiles | CheckpointError) -> dict:
    """A JSON-ready report; its schema is documented in README.md (surgery inspect --json).

    `tokenizer` may be the error that loading it raised: inspect still shows everything else.
    """
    if isinstance(tokenizer, CheckpointError):
        tokenizer_report = {"kind": None, "size": None, "padding_rows": None, "tokens_without_rows": None,
                            "error": str(tokenizer)}
    else:
        size = tokenizer.size()
        tokenizer_report = {"kind": tokenizer.kind(), "size": size, "padding_rows": max(vocab.n_rows - size, 0),
                            "tokens_without_rows": max(size - vocab.n_rows, 0)}
    config_keys = {key: get_dotted(ckpt.config, key) for key in vocab_size_keys(ckpt.config, vocab.n_rows)}
    return {
        "source": str(ckpt.root),
        **weights_summary(ckpt, dtype_order=lambda dtype: -DTYPE_BITS[dtype]),
        "vocab_tensors": [
            {"name": t.entry.name, "shape": list(t.entry.shape), "dtype": t.entry.dtype, "role": t.role.value,
             "axis": t.axis, "pattern": t.pattern}
            for t in vocab.tensors
        ],
        "tied": vocab.tied,
        "embedding_rows": vocab.n_rows,
        "tokenizer": tokenizer_report,
        "config": {"vocab_size_keys": config_keys, "token_ids": named_token_ids(ckpt.config, vocab.n_rows)},
        "notes": list(vocab.notes),
    }


def render(report: dict) -> str:
    """The human-readable table of `surgery inspect`."""
    lines = [f"checkpoint: {report['source']}",
             f"shards: {len(report['shards'])}, {report['parameters']:,} parameters, {report['nbytes']:,} bytes"]
    for dtype, totals in report["by_dtype"].items():
        lines.append(f"  {dtype:8} {totals['parameters']:>16,} parameters {totals['nbytes']:>18,} bytes")
    lines.append(f"vocabulary tensors ({'tied' if report['tied'] else 'untied'}), {report['embedding_rows']} rows:")
    width = max(len(t["name"]) for t in report["vocab_tensors"])
    for t in report["vocab_tensors"]:
        lines.append(f"  {t['name']:{width}}  {t['role']:5}  {t['dtype']:5}  {str(t['shape']):18} axis {t['axis']}")
    tok = report["tokenizer"]
    if tok["kind"] is None:
        lines.append(f"tokenizer: none usable ({tok['error']})")
    else:
        lines.append(f"tokenizer: {tok['kind']}, {tok['size']} ids"
                     + (f" ({tok['padding_rows']} embedding rows past it are padding)" if tok["padding_rows"] else "")
                     + (f" ({tok['tokens_without_rows']} tokens past the embedding have no row)"
                        if tok["tokens_without_rows"] else ""))
    lines.append("config: " + ", ".join(f"{k}={v}" for k, v in report["config"]["vocab_size_keys"].items()))
    for key, ids in report["config"]["token_ids"].items():
        lines.append(f"  {key}: {ids if len(ids) > 1 else ids[0]}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
