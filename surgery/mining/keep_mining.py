"""mine_keep_list: corpora in, the final kept id set out, with the figures that justify it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.errors import InputError
from surgery.formats.hf_folder import GENERATION_CONFIG, Checkpoint, load_json
from surgery.mining.corpus import CorpusSpec
from surgery.mining.selection import (
    Ranking,
    select_coverage,
    select_min_count,
    select_size,
    select_top_k,
)
from surgery.mining.token_counts import Progress, count_tokens, load_encoder
from surgery.model.vocab_tensors import find_vocab_tensors
from surgery.tokenizer import TokenizerFiles
from surgery.verbs.keep_list import KeepList
from surgery.verbs.trim import (
    complete_kept_set,
    config_token_ids,
    trim_totals,
)

CURVE_SIZES = (1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000)


@dataclass(frozen=True, slots=True)
class MinedKeepList:
    ids: tuple[int, ...]
    header: tuple[str, ...]
    figures: dict

    def ids_text(self) -> str:
        return "".join(f"# {line}\n" for line in self.header) + "".join(f"{i}\n" for i in self.ids)

    def describe(self, verbose: bool) -> str:
        f = self.figures
        lines = [f"{f['documents']:,} documents, {f['tokens']:,} tokens, {f['distinct_tokens']:,} distinct; "
                 f"kept {f['kept']:,} of {f['tokenizer_size']:,} ids, coverage {f['coverage']:.4%}"]
        if verbose:
            lines += [f"  {c['path']}: {c['documents']:,} documents, {c['tokens']:,} tokens, weight {c['weight']}, "
                      f"coverage {c['coverage']:.4%}" for c in f["corpora"]]
            lines.append("coverage curve: " + ", ".join(f"{n}: {v:.4%}" for n, v in f["coverage_curve"].items()))
            lines.append("added by trim rules: " + ", ".join(f"{k} +{v}" for k, v in f["added_by_rule"].items()))
            if f["reserved_rows"]:
                lines.append(f"reserved placeholder tokens: {f['reserved_rows']:,} rows (e.g. {f['reserved_example']}) "
                             "that no template or config names; --drop-reserved frees them")
            lines.append(f"parameters {f['params_before']:,} -> {f['params_after']:,}, bytes {f['bytes_before']:,} "
                         f"-> {f['bytes_after']:,} ({f['bytes_saved_share']:.1%} saved)")
        return "\n".join(lines)


def mine_keep_list(root: Path, corpora: list[CorpusSpec], *, field: str = "text", whole_files: bool = False,
                   max_docs: int | None = None, max_bytes: int | None = None, size: int | None = None,
                   coverage: float | None = None, min_count: int | None = None, top_k: int | None = None,
                   keep_ids: Path | None = None, keep_tokens: Path | None = None,
                   pad_to_multiple_of: int | None = None, vocab_tensors: tuple[str, ...] = (),
                   not_vocab_tensors: tuple[str, ...] = (), drop_reserved: bool = False,
                   tokenizer_dir: Path | None = None, progress: Progress | None = None) -> MinedKeepList:
    modes = {"--size": size, "--coverage": coverage, "--min-count": min_count, "--top-k": top_k}
    chosen_modes = [name for name, value in modes.items() if value is not None]
    if len(chosen_modes) != 1:
        raise InputError("choose exactly one of --size, --coverage, --min-count, --top-k"
                         + (f" (got {', '.join(chosen_modes)})" if chosen_modes else ""))
    source = (_gguf_source(root, tokenizer_dir, vocab_tensors, not_vocab_tensors) if root.suffix == ".gguf"
              and not root.is_dir() else _folder_source(root, vocab_tensors, not_vocab_tensors))
    tokenizer, n_rows = source.tokenizer, source.n_rows
    n_ids = tokenizer.size()
    forced = _forced_ids(tokenizer, keep_ids, keep_tokens, max(n_rows, n_ids), min(n_rows, n_ids))
    counts = [count_tokens(source.encode, spec, n_ids, field=field, whole_files=whole_files,
                           max_docs=spec.max_docs or max_docs, max_bytes=max_bytes, progress=progress)
              for spec in corpora]
    ranking = Ranking.of(counts)

    def final(ids: set[int]) -> tuple[set[int], list[tuple[str, tuple[int, ...]]]]:
        return complete_kept_set(source.configs, source.generation, tokenizer, ids, n_rows,
                                 drop_reserved=drop_reserved)

    def final_set(ids: set[int]) -> set[int]:
        return final(ids)[0]

    closure = tokenizer.closure_builder()
    if size is not None:
        selected = select_size(ranking, size, forced, final_set, closure, min(n_ids, n_rows))
    else:
        selected = forced | (select_coverage(ranking, coverage) if coverage is not None else
                             select_min_count(ranking, min_count) if min_count is not None else
                             select_top_k(ranking, top_k))
        if pad_to_multiple_of:
            target = math.ceil(len(final_set(selected)) / pad_to_multiple_of) * pad_to_multiple_of
            selected = select_size(ranking, min(target, n_ids, n_rows), selected, final_set, closure,
                                   min(n_ids, n_rows))
    selected = {i for i in selected if i < n_rows}  # a token without a row is kept by trim, never listed
    kept, additions = final(selected)
    return _result(root, source, counts, ranking, selected, kept, additions, chosen_modes[0], modes[chosen_modes[0]])


@dataclass(frozen=True, slots=True)
class _Source:
    """What mining needs of a checkpoint folder or a GGUF file."""

    tokenizer: object  # TokenizerFiles, or GgufVocab for a GGUF file
    n_rows: int
    configs: list[dict]
    generation: dict | None
    encode: object  # Encoder
    totals: object  # kept ids -> parameters and bytes before and after


def _folder_source(root: Path, vocab_tensors: tuple[str, ...], not_vocab_tensors: tuple[str, ...]) -> _Source:
    ckpt = Checkpoint.open(root)
    vocab = find_vocab_tensors(ckpt, vocab_tensors, not_vocab_tensors)
    return _Source(TokenizerFiles.load(root), vocab.n_rows, list(ckpt.configs.values()), _load_generation(root),
                   load_encoder(root), lambda kept_ids: trim_totals(ckpt, vocab, kept_ids))


def _gguf_source(path: Path, tokenizer_dir: Path | None, vocab_tensors: tuple[str, ...],
                 not_vocab_tensors: tuple[str, ...]) -> _Source:
    """A GGUF file: its own tokenizer metadata decides the kept set; the text is encoded by the tokenizer.json
    embedded in it (tokenizer.huggingface.json) or the one given with --tokenizer, checked token by token."""
    from surgery.tokenizer.gguf_vocab import GgufVocab, hf_encoder
    from surgery.edit.gguf_edit import open_gguf
    from surgery.verbs.trim import find_gguf_vocab_tensors, gguf_totals

    parts = open_gguf(path)
    vocab = GgufVocab.of(parts[0])
    roles = find_gguf_vocab_tensors(parts, vocab.size(), vocab_tensors, not_vocab_tensors)
    return _Source(vocab, vocab.size(), [vocab.config()], None, hf_encoder(vocab, parts[0], tokenizer_dir),
                   lambda kept_ids: gguf_totals(parts, roles, len(kept_ids)))


def _load_generation(root: Path) -> dict | None:
    return load_json(root / GENERATION_CONFIG) if (root / GENERATION_CONFIG).exists() else None


def _forced_ids(tokenizer: TokenizerFiles, keep_ids: Path | None, keep_tokens: Path | None, n_rows: int,
                n_ids: int) -> set[int]:
    forced = set(KeepList.load(keep_ids, n_rows).ids) if keep_ids else set()
    if keep_tokens:
        lookup = tokenizer.token_to_id()
        try:
            lines = keep_tokens.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as e:
            raise InputError(f"{keep_tokens}: token list not found") from e
        for line_no, token in enumerate(lines, start=1):
            if not token:
                continue
            if token not in lookup:
                raise InputError(f"{keep_tokens.name}:{line_no}: token {token!r} is not in the tokenizer")
            forced.add(lookup[token])
    return {i for i in forced if i < n_ids}


def _result(root, source: _Source, counts, ranking, selected, kept, additions, mode, value) -> MinedKeepList:
    tokenizer = source.tokenizer
    # placeholders that hold rows (all of them unless dropped) and that no config names
    named = config_token_ids(source.configs, source.generation, tokenizer, source.n_rows)
    reserved = (tokenizer.reserved_ids() - named) & kept
    id_to_token = tokenizer.id_to_token()
    totals = source.totals(np.array(sorted(kept), dtype=np.int64))  # the list is the final set: trim keeps exactly these rows
    n_ids = tokenizer.size()
    figures = {
        "source": str(root),
        "selection": {mode.lstrip("-"): value},
        "documents": sum(c.documents for c in counts),
        "bytes": sum(c.nbytes for c in counts),
        "tokens": sum(c.tokens for c in counts),
        "distinct_tokens": len(ranking.order),
        "tokenizer_size": n_ids,
        "selected": len(selected),
        "kept": len(kept),
        "added_by_rule": {rule: len(ids) for rule, ids in additions},
        "coverage": ranking.coverage(kept),
        "reserved_rows": len(reserved),
        "reserved_example": id_to_token.get(min(reserved)) if reserved else None,
        "corpora": [{"path": c.spec.path, "weight": c.spec.weight, "documents": c.documents, "bytes": c.nbytes,
                     "tokens": c.tokens, "coverage": float(c.counts[sorted(kept)].sum() / max(c.tokens, 1))}
                    for c in counts],
        "coverage_curve": ranking.curve([n for n in CURVE_SIZES if n < n_ids] or [n_ids // 8, n_ids // 4, n_ids // 2]),
        **totals,
        "bytes_saved_share": 1 - totals["bytes_after"] / totals["bytes_before"] if totals["bytes_before"] else 0.0,
    }
    header = (f"surgery keep {root}", f"corpora: {', '.join(c.spec.path for c in counts)}",
              f"selection: {mode} {value}; {len(kept)} ids (coverage {figures['coverage']:.4%})",
              "added by rule: " + ", ".join(f"{rule} +{len(ids)}" for rule, ids in additions))
    return MinedKeepList(tuple(sorted(kept)), header, figures)
