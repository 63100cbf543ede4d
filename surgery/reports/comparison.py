"""compare_checkpoints: prove a trimmed checkpoint against its source, byte for byte, without a model class.

Used by `surgery verify SRC OUT`. Every row and tensor is read once, in blocks, so memory stays flat.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.edit.compare import first_bad_row, same_bytes
from surgery.errors import CheckpointError, VerifyError
from surgery.formats.hf_folder import GENERATION_CONFIG, Checkpoint, load_json
from surgery.mining.corpus import CorpusSpec, read_documents
from surgery.mining.token_counts import batches, load_decoder, load_encoder
from surgery.model.config_keys import changed_token_ids, vocab_size_keys
from surgery.model.vocab_tensors import find_vocab_tensors
from surgery.tokenizer import TokenizerFiles
from surgery.tokenizer.hf_json import filter_merge_pairs
from surgery.verbs.trim import TRIM_RECORD

MAX_EXAMPLES = 3


@dataclass(slots=True)
class Finding:
    check: str
    ok: bool
    detail: str
    examples: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"check": self.check, "ok": self.ok, "detail": self.detail, "examples": self.examples}


def verify_trim(src: Path, out: Path, corpora: tuple[CorpusSpec, ...] = (), max_docs: int | None = None, *,
                vocab_tensors: tuple[str, ...] = (), not_vocab_tensors: tuple[str, ...] = ()) -> list[Finding]:
    """Prove a trim of a folder or a GGUF file (a GGUF file proves itself from its stored record)."""
    from surgery.formats.paths import is_gguf

    if is_gguf(src):
        from surgery.reports.gguf_reports import compare_gguf

        return compare_gguf(src, out, vocab_tensors, not_vocab_tensors)
    return compare_checkpoints(src, out, corpora, max_docs, vocab_tensors=vocab_tensors,
                               not_vocab_tensors=not_vocab_tensors)


def compare_checkpoints(src: Path, out: Path, corpora: tuple[CorpusSpec, ...] = (), max_docs: int | None = None, *,
                        vocab_tensors: tuple[str, ...] = (), not_vocab_tensors: tuple[str, ...] = ()) -> list[Finding]:
    old, new = Checkpoint.open(src), Checkpoint.open(out)
    vocab = find_vocab_tensors(old, vocab_tensors, not_vocab_tensors)
    old_tok, new_tok = TokenizerFiles.load(src), TokenizerFiles.load(out)
    row_sources, token_old_ids = _row_sources(out, old_tok, new_tok, vocab.n_rows)
    findings = [_check_tensors(old, new, vocab, row_sources)]
    findings += _check_configs(src, out, old, new, old_tok, new_tok, max(vocab.n_rows, old_tok.size()),
                               len(row_sources), len(token_old_ids))
    findings += _check_tokenizer(old_tok, new_tok, token_old_ids)
    if corpora:
        findings += _check_corpora(src, out, old_tok, new_tok, token_old_ids, corpora, max_docs)
    return findings


def _row_sources(out: Path, old_tok: TokenizerFiles, new_tok: TokenizerFiles, n_rows: int):
    """The source row of each new row (kept tokens, then padding), and the source id of each new token id
    (the kept rows, then the tokens that have no row).

    From surgery_trim.json, else by matching token strings.
    """
    if (out / TRIM_RECORD).exists():
        record = load_json(out / TRIM_RECORD)
        padding = [record["padding_row_source_id"]] * record.get("padding_rows", 0)
        rowless = (record.get("tokens_without_rows") or {}).get("old_ids", [])
        return np.array(record["old_ids"] + padding, np.int64), np.array(record["old_ids"] + rowless, np.int64)
    old_lookup = old_tok.token_to_id()
    new_tokens = new_tok.id_to_token()
    missing = [t for t in new_tokens.values() if t not in old_lookup]
    if missing:
        raise VerifyError(f"{out}: no {TRIM_RECORD}, and token {missing[0]!r} is not in the source tokenizer")
    token_old_ids = np.array([old_lookup[new_tokens[new_id]] for new_id in sorted(new_tokens)], np.int64)
    return token_old_ids[token_old_ids < n_rows], token_old_ids


def _check_tensors(old: Checkpoint, new: Checkpoint, vocab, old_ids: np.ndarray) -> Finding:
    old_tensors, new_tensors = old.tensors(), new.tensors()
    problems: list[str] = []
    if set(old_tensors) != set(new_tensors):
        diff = sorted(set(old_tensors) ^ set(new_tensors))
        problems.append(f"tensor sets differ: {', '.join(diff[:MAX_EXAMPLES])}")
    by_name = vocab.by_name()
    n_rows_compared = compared = 0
    for name in sorted(set(old_tensors) & set(new_tensors)):
        a, b = old_tensors[name], new_tensors[name]
        if name in by_name:
            axis = by_name[name].axis
            rows = old_ids[old_ids < a.shape[axis]] if by_name[name].prefix else old_ids  # kept ids come first
            expected_shape = a.shape[:axis] + (len(rows),) + a.shape[axis + 1 :]
            if b.shape != expected_shape or b.dtype != a.dtype:
                problems.append(f"'{name}' is {b.dtype} {list(b.shape)}, expected {a.dtype} {list(expected_shape)}")
                continue
            bad_row = first_bad_row(a, b, axis, rows)
            if bad_row is not None:
                problems.append(f"'{name}' new row {bad_row} differs from source row {rows[bad_row]}")
            n_rows_compared += len(rows)
        elif a.shape != b.shape or a.dtype != b.dtype or not same_bytes(a, b):
            problems.append(f"'{name}' differs from its source")
        compared += 1
    if problems:
        return Finding("tensors", False, f"{len(problems)} problem(s)", problems[:MAX_EXAMPLES])
    return Finding("tensors", True, f"{compared} tensors: {n_rows_compared} vocab rows equal their source rows, "
                                    "every other tensor byte-identical")


def _check_configs(src, out, old, new, old_tok, new_tok, n_ids: int, new_rows: int, new_ids: int) -> list[Finding]:
    findings = []
    old_tokens, new_tokens = old_tok.id_to_token(), new_tok.id_to_token()
    pairs = [(name, config, new.configs.get(name, {})) for name, config in old.configs.items()]
    if (src / GENERATION_CONFIG).exists():
        new_generation = load_json(out / GENERATION_CONFIG) if (out / GENERATION_CONFIG).exists() else {}
        pairs.append((GENERATION_CONFIG, load_json(src / GENERATION_CONFIG), new_generation))
    for file, old_config, new_config in pairs:
        problems = changed_token_ids(old_config, new_config, old_tokens, new_tokens, n_ids, new_ids)
        try:
            if file != GENERATION_CONFIG and not vocab_size_keys(new_config, new_rows, file):
                problems.append(f"no vocab_size equals the {new_rows} rows written")
        except CheckpointError as e:
            problems.append(str(e))
        findings.append(Finding(file, not problems, "token ids name the same tokens" if not problems
                                else f"{len(problems)} id field(s) wrong", problems[:MAX_EXAMPLES]))
    return findings


def _check_tokenizer(old_tok: TokenizerFiles, new_tok: TokenizerFiles, old_ids: np.ndarray) -> list[Finding]:
    old_tokens, new_tokens = old_tok.id_to_token(), new_tok.id_to_token()
    wrong = [f"new id {new_id}: {new_tokens.get(new_id)!r}, source id {old_id}: {old_tokens.get(int(old_id))!r}"
             for new_id, old_id in enumerate(old_ids)
             if int(old_id) in old_tokens and new_tokens.get(new_id) != old_tokens[int(old_id)]]
    extra = sorted(set(new_tokens) - set(range(len(old_ids))))
    problems = wrong + [f"new id {i} is past the {len(old_ids)} kept tokens" for i in extra]
    findings = [Finding("tokenizer layout", not problems, f"{len(new_tokens)} ids, dense, in source order"
                        if not problems else f"{len(problems)} id(s) wrong", problems[:MAX_EXAMPLES])]
    if old_tok.hf is not None and new_tok.hf is not None and old_tok.hf.kind == "BPE":
        prefix = old_tok.hf.model.get("continuing_subword_prefix") or ""
        old_pairs = old_tok.hf.merge_pairs()
        expected = [old_pairs[i] for i in filter_merge_pairs(old_pairs, new_tok.hf.model["vocab"], prefix)]
        got = new_tok.hf.merge_pairs()
        ok = got == expected
        detail = f"{len(got)} merges, exactly the source merges among kept tokens, in order" if ok else (
            f"{len(got)} merges, expected {len(expected)}")
        examples = [] if ok else [f"missing {m}" for m in expected if m not in set(got)][:MAX_EXAMPLES]
        findings.append(Finding("merges", ok, detail, examples))
    return findings


def _check_corpora(src, out, old_tok, new_tok, old_ids, corpora, max_docs) -> list[Finding]:
    """Lines whose source ids are all kept encode to the mapped ids; decoding agrees where bytes are kept."""
    encode_old, encode_new = load_encoder(src), load_encoder(out)
    decode_old, decode_new = load_decoder(src), load_decoder(out)
    old_to_new = {int(old): new for new, old in enumerate(old_ids)}
    lossless = bool(old_tok.hf.byte_alphabet_ids() or old_tok.hf.byte_fallback_ids()) if old_tok.hf else bool(
        old_tok.sp.byte_pieces())
    docs = compared = decoded = 0
    mismatches, decode_mismatches = _Examples(), _Examples()
    for spec in corpora:
        spec = dataclasses.replace(spec, max_docs=spec.max_docs or max_docs)
        for batch in batches(read_documents(spec)):  # streaming: memory stays flat in corpus size
            docs += len(batch)
            for doc, a, b in zip(batch, encode_old(batch), encode_new(batch)):
                kept = all(i in old_to_new for i in a)
                if kept:
                    compared += 1
                    if b != [old_to_new[i] for i in a]:
                        mismatches.add(doc)
                if kept or lossless:
                    decoded += 1
                    if decode_new(b) != decode_old(a):
                        decode_mismatches.add(doc)
    return [
        Finding("corpus encoding", not mismatches.count, f"{compared} of {docs} documents fully kept; "
                f"{mismatches.count} encode differently", mismatches.first),
        Finding("corpus decoding", not decode_mismatches.count, f"{decoded} documents decoded; "
                f"{decode_mismatches.count} decode differently", decode_mismatches.first),
    ]


class _Examples:
    """A count of failures and the first few of them, cut to 80 characters."""

    def __init__(self) -> None:
        self.count, self.first = 0, []

    def add(self, doc: str) -> None:
        self.count += 1
        if len(self.first) < MAX_EXAMPLES:
            self.first.append(doc[:80])


def findings_json(findings: list[Finding]) -> str:
    return json.dumps({"ok": all(f.ok for f in findings), "checks": [f.to_json() for f in findings]}, indent=2)
