"""inspect and verify for GGUF files: what a file holds, and a trimmed file proven against its source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from surgery.dtypes import GGML_TYPES
from surgery.edit.compare import first_bad_row, same_bytes
from surgery.errors import VerifyError
from surgery.formats.gguf import GgufFile, GgufParts
from surgery.model.config_keys import changed_token_ids
from surgery.model.keys import LLM, Tokenizer, arch_key
from surgery.reports.comparison import MAX_EXAMPLES, Finding
from surgery.reports.inspection import weights_summary
from surgery.tokenizer.gguf_vocab import MERGES, GgufVocab
from surgery.edit.gguf_edit import open_gguf
from surgery.verbs.trim import RECORD_KEY, find_gguf_vocab_tensors


def inspect_gguf(parts: list[GgufFile], vocab_tensors: tuple[str, ...] = (), not_vocab_tensors: tuple[str, ...] = ()
                 ) -> dict:
    """The report of `surgery inspect` for a GGUF file (same schema as for a folder; shards are the parts)."""
    vocab = GgufVocab.of(parts[0])
    roles = find_gguf_vocab_tensors(parts, vocab.size(), vocab_tensors, not_vocab_tensors)
    tensors = {t.name: t for part in parts for t in part.tensors}
    return {
        "source": str(parts[0].path),
        **weights_summary(GgufParts(tuple(parts))),
        "vocab_tensors": [{"name": name, "shape": list(tensors[name].shape), "dtype": tensors[name].dtype,
                           "role": role.value, "axis": 0, "pattern": "gguf"} for name, role in sorted(roles.items())],
        "tied": not any(role.value == "head" for role in roles.values()),
        "embedding_rows": vocab.size(),
        "tokenizer": {"kind": vocab.kind(), "size": vocab.size(), "padding_rows": 0, "tokens_without_rows": 0,
                      "pre": parts[0].get(Tokenizer.PRE)},
        "config": {"vocab_size_keys": {k: parts[0].get(k) for k in (arch_key(LLM.VOCAB_SIZE, vocab.arch),) if k in parts[0].kvs},
                   "token_ids": {k: [v] for k, v in vocab.id_keys.items() if type(v) is int}},
        "notes": [],
    }


def compare_gguf(src: Path, out: Path, vocab_tensors: tuple[str, ...] = (), not_vocab_tensors: tuple[str, ...] = ()
                 ) -> list[Finding]:
    """`surgery verify SRC.gguf OUT.gguf`: every kept row byte for byte, other tensors identical, every id key
    naming the same token, the token list in source order, merges exactly the source merges among kept tokens."""
    old_parts, new_parts = open_gguf(src), open_gguf(out)
    record_text = new_parts[0].get(RECORD_KEY)
    if record_text is None:
        raise VerifyError(f"{out.name}: no {RECORD_KEY} in its metadata; was it trimmed by surgery?")
    record = json.loads(record_text)
    old_ids = np.array(record["old_ids"], np.int64)
    row_source = np.concatenate([old_ids, np.full(record["padding_rows"], record["padding_row_source_id"] or 0)])
    old_vocab, new_vocab = GgufVocab.of(old_parts[0]), GgufVocab.of(new_parts[0])
    roles = find_gguf_vocab_tensors(old_parts, old_vocab.size(), vocab_tensors, not_vocab_tensors)
    findings = [_check_tensors(old_parts, new_parts, roles, row_source)]
    old_tokens, new_tokens = old_vocab.id_to_token(), new_vocab.id_to_token()
    problems = changed_token_ids(old_vocab.config(), new_vocab.config(), old_tokens, new_tokens, old_vocab.size(),
                                 new_vocab.size())
    findings.append(Finding("token id keys", not problems, "every *_token_id names the same token" if not problems
                            else f"{len(problems)} id key(s) wrong", problems[:MAX_EXAMPLES]))
    wrong = [f"new id {n}: {new_tokens.get(n)!r}, source id {o}: {old_tokens[int(o)]!r}"
             for n, o in enumerate(old_ids) if new_tokens.get(n) != old_tokens[int(o)]]
    if new_vocab.size() != len(row_source):
        wrong.append(f"{new_vocab.size()} tokens for {len(row_source)} rows")
    findings.append(Finding("tokenizer layout", not wrong, f"{new_vocab.size()} ids, in source order" if not wrong
                            else f"{len(wrong)} id(s) wrong", wrong[:MAX_EXAMPLES]))
    if old_vocab.merges is not None:
        kept_tokens = set(new_vocab.tokens)  # the plain filter, apart from the trim's own search
        expected = [m for m in old_vocab.merges if _kept(m, kept_tokens)]
        got = list(new_parts[0].get(MERGES) or [])
        ok = got == expected
        findings.append(Finding("merges", ok, f"{len(got)} merges, exactly the source merges among kept tokens"
                                if ok else f"{len(got)} merges, expected {len(expected)}",
                                [] if ok else [f"missing {m}" for m in expected if m not in set(got)][:MAX_EXAMPLES]))
    return findings


def _kept(merge: str, tokens: set[str]) -> bool:
    from surgery.tokenizer.gguf_vocab import split_merge

    pair = split_merge(merge)
    return pair is not None and pair[0] in tokens and pair[1] in tokens and pair[0] + pair[1] in tokens


def _check_tensors(old_parts, new_parts, roles, row_source: np.ndarray) -> Finding:
    old = {t.name: t for p in old_parts for t in p.tensors}
    new = {t.name: t for p in new_parts for t in p.tensors}
    problems = []
    if set(old) != set(new):
        problems.append(f"tensor sets differ: {', '.join(sorted(set(old) ^ set(new))[:MAX_EXAMPLES])}")
    rows = 0
    for name in sorted(set(old) & set(new)):
        a, b = old[name], new[name]
        if a.ggml_type != b.ggml_type:
            problems.append(f"'{name}' is {b.dtype}, expected {a.dtype}")
        elif name in roles:
            if b.ne != a.ne[:-1] + (len(row_source),):
                problems.append(f"'{name}' has shape {list(b.shape)}, expected {len(row_source)} rows")
                continue
            bad = first_bad_row(a, b, 0, row_source)
            if bad is not None:
                problems.append(f"'{name}' new row {bad} differs from source row {row_source[bad]}")
            rows += len(row_source)
        elif a.ne != b.ne or not same_bytes(a, b):
            problems.append(f"'{name}' differs from its source")
    if problems:
        return Finding("tensors", False, f"{len(problems)} problem(s)", problems[:MAX_EXAMPLES])
    return Finding("tensors", True, f"{len(old)} tensors ({', '.join(sorted({GGML_TYPES[t.ggml_type][0] for t in old.values()}))}): "
                   f"{rows} vocab rows equal their source rows, every other tensor byte-identical")
