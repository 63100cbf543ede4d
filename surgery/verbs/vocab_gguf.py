"""Trim the vocabulary of a GGUF file (split or not, quantized or not): plan, write, check.

The kept set follows the same rules as for a Hugging Face folder (plan.complete_kept_set over the GGUF's own
tokenizer metadata). Vocabulary rows are whole blocks of any ggml type, so they are gathered as bytes, never
dequantized; every other tensor is copied byte for byte. The output keeps the source's split layout; the trim
record is stored in the first part's metadata under `surgery.trim_record` (JSON), so the file proves itself.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from surgery.errors import CheckpointError, InputError, VerifyError
from surgery.formats.gguf import (
    SPLIT_COUNT,
    SPLIT_NAME,
    SPLIT_NO,
    STRING,
    GgufFile,
    GgufTensor,
    KeyValue,
    read_gguf,
    split_name,
    split_paths,
    tensor_nbytes,
)
from surgery.formats.paths import check_file_target, check_output_target
from surgery.model.vocab_tensors import Role
from surgery.tokenizer.gguf_vocab import GgufVocab, pad_token_names
from surgery.verbs.keep_list import KeepList
from surgery.verbs.vocab import complete_kept_set, kept_summary, trim_record

RECORD_KEY = "surgery.trim_record"
SAMPLE_ROWS = 64
# name -> role; every match must have the vocabulary's length on its outermost axis (ne[-1])
GGUF_VOCAB_PATTERNS = (
    (r"token_embd\.weight", Role.EMBED),
    (r"output\.weight", Role.HEAD),  # absent when tied
    (r"output\.bias", Role.BIAS),  # phi-2 style
    (r"per_layer_token_embd\.weight", Role.EMBED),  # gemma-3n
    (r"blk\.\d+\.nextn\.embed_tokens\.weight", Role.EMBED),  # multi-token prediction (glm-4.5, deepseek)
    (r"blk\.\d+\.nextn\.shared_head_head\.weight", Role.HEAD),
)


@dataclass(frozen=True, slots=True)
class GgufAction:
    part: int
    tensor: GgufTensor
    new_ne: tuple[int, ...]
    role: str | None  # None: copied
    axis: int = 0
    new_name: str | None = None  # renamed (drop-layers)
    rows: np.ndarray | None = field(default=None, compare=False)  # prune: kept rows (outermost axis)
    cols: np.ndarray | None = field(default=None, compare=False)  # prune: kept columns (ne0)

    @property
    def name(self) -> str:
        return self.new_name or self.tensor.name

    @property
    def new_nbytes(self) -> int:
        return tensor_nbytes(self.tensor.ggml_type, self.new_ne, self.name)


def open_gguf(src: Path) -> list[GgufFile]:
    """Every part of a (possibly split) GGUF file, each numbered as llama.cpp demands (split.no = its index,
    split.count = the parts), no tensor name twice across them."""
    paths = split_paths(src)
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"{src.name}: {len(missing)} of {len(paths)} split parts missing: {listed}")
    parts = [read_gguf(p) for p in paths]
    if len(parts) > 1:
        for index, part in enumerate(parts):
            if part.get(SPLIT_COUNT) != len(parts):
                raise CheckpointError(f"{part.path.name}: {SPLIT_COUNT} is {part.get(SPLIT_COUNT)}, but "
                                      f"{len(parts)} parts")
            if part.get(SPLIT_NO) != index:
                raise CheckpointError(f"{part.path.name}: {SPLIT_NO} is {part.get(SPLIT_NO)}; part {index + 1} of "
                                      f"{len(parts)} must say {index}")
    seen: dict[str, str] = {}
    for part in parts:
        for tensor in part.tensors:
            if tensor.name in seen:
                raise CheckpointError(f"{part.path.name}: tensor '{tensor.name}' is also in {seen[tensor.name]}")
            seen[tensor.name] = part.path.name
    return parts


def find_gguf_vocab_tensors(parts: list[GgufFile], n_vocab: int, named: tuple[str, ...] = (),
                            not_vocab: tuple[str, ...] = ()) -> dict[str, Role]:
    """The vocabulary tensors by name table (+ --vocab-tensor); refuse any other tensor with that length."""
    tensors = [t for part in parts for t in part.tensors]
    found: dict[str, Role] = {}
    for tensor in tensors:
        role = next((r for pattern, r in GGUF_VOCAB_PATTERNS if re.fullmatch(pattern, tensor.name)), None)
        if tensor.name in {n.rsplit(":", 1)[0] for n in named}:
            role = Role.HEAD if tensor.name != "token_embd.weight" else Role.EMBED
        if role is None:
            continue
        if tensor.shape[0] != n_vocab:
            raise CheckpointError(f"{tensor.path.name}: '{tensor.name}' has {tensor.shape[0]} rows but the tokenizer "
                                  f"has {n_vocab} tokens; llama.cpp requires them equal")
        found[tensor.name] = role
    if "token_embd.weight" not in found:
        raise CheckpointError(f"{parts[0].path.name}: no token_embd.weight tensor")
    stray = [t for t in tensors if t.name not in found and n_vocab in t.shape
             and not any(fnmatch.fnmatchcase(t.name, p) for p in not_vocab)]
    if stray:
        listed = ", ".join(f"'{t.name}' {list(t.ne)}" for t in stray[:4])
        groups = list(dict.fromkeys(re.sub(r"^blk\.\d+\..*$", "blk.*", t.name) for t in stray))
        raise CheckpointError(
            f"{len(stray)} tensor(s) outside the vocabulary tensors have a dimension of the vocabulary's length "
            f"{n_vocab}: {listed}",
            hint="to trim them too: " + " ".join(f"--vocab-tensor {t.name}" for t in stray[:4])
                 + "; if they have no vocabulary axis: " + " ".join(f"--not-vocab-tensor '{g}'" for g in groups[:6]))
    return found


def gguf_totals(parts: list[GgufFile], roles: dict[str, Role], new_rows: int) -> dict[str, int]:
    """Parameters and bytes before and after keeping new_rows rows, from the tensor infos alone."""
    tensors = [t for part in parts for t in part.tensors]
    new_ne = {t.name: t.ne[:-1] + (new_rows,) if t.name in roles else t.ne for t in tensors}
    return {
        "params_before": sum(int(np.prod(t.ne)) for t in tensors),
        "params_after": sum(int(np.prod(new_ne[t.name])) for t in tensors),
        "bytes_before": sum(t.nbytes for t in tensors),
        "bytes_after": sum(tensor_nbytes(t.ggml_type, new_ne[t.name], t.name) for t in tensors),
    }


class GgufEdit:
    """What every GGUF plan shares: per-part metadata (the plan's record added to the first part), the output
    part names, the totals. A plan has `parts`, `actions`, `kvs` (the new metadata of each part), `record_key`
    and `record()`."""

    __slots__ = ()

    def part_kvs(self, index: int) -> list[KeyValue]:
        kvs = list(self.kvs[index])
        if index == 0:
            kvs.append(KeyValue(self.record_key, STRING, json.dumps(self.record(), separators=(",", ":"))))
        return kvs

    def output_paths(self, out: Path) -> list[Path]:
        if len(self.parts) == 1:
            return [out]
        return [split_name(out, no, len(self.parts)) for no in range(1, len(self.parts) + 1)]

    def totals(self) -> dict[str, int]:
        return {
            "params_before": sum(int(np.prod(a.tensor.ne)) for a in self.actions),
            "params_after": sum(int(np.prod(a.new_ne)) for a in self.actions),
            "bytes_before": sum(a.tensor.nbytes for a in self.actions),
            "bytes_after": sum(a.new_nbytes for a in self.actions),
        }


@dataclass(frozen=True, slots=True)
class GgufTrimPlan(GgufEdit):
    src: Path
    parts: tuple[GgufFile, ...]
    vocab: GgufVocab
    user_ids: int
    kept_ids: np.ndarray
    row_source: np.ndarray
    pad_source: int | None
    additions: tuple[tuple[str, tuple[int, ...]], ...]
    actions: tuple[GgufAction, ...]
    kvs: tuple[tuple[KeyValue, ...], ...]  # per part; the first part's tokenizer rewritten
    notes: tuple[str, ...]
    record_key: ClassVar[str] = RECORD_KEY

    @property
    def n_rows(self) -> int:
        return self.vocab.size()

    @property
    def new_rows(self) -> int:
        return len(self.row_source)

    @property
    def tied(self) -> bool:
        return not any(a.role == Role.HEAD.value for a in self.actions)

    def addition_counts(self) -> dict[str, int]:
        return {rule: len(ids) for rule, ids in self.additions}

    @property
    def n_tokens(self) -> int:
        return self.vocab.size()

    def record(self) -> dict:
        return trim_record(self)

    def check_output(self, targets: list[Path]) -> None:
        check_gguf_output(self, targets)

    def to_json(self) -> dict:
        return {
            "source": str(self.src),
            "tokenizer": self.vocab.kind(),
            "tied": self.tied,
            "old_vocab_rows": self.n_rows,
            "old_tokenizer_size": self.n_rows,
            "user_ids": self.user_ids,
            "added_by_rule": self.addition_counts(),
            "kept": len(self.kept_ids),
            "new_vocab_rows": self.new_rows,
            **self.totals(),
            "tensors": [{"name": a.name, "shard": self.parts[a.part].path.name, "action": "gather", "role": a.role,
                         "dtype": a.tensor.dtype, "old_shape": list(a.tensor.shape),
                         "new_shape": list(reversed(a.new_ne))} for a in self.actions if a.role],
            "copied_tensors": sum(1 for a in self.actions if not a.role),
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        t = self.totals()
        lines = [
            f"source: {self.src}" + (f" ({len(self.parts)} parts)" if len(self.parts) > 1 else ""),
            f"tokenizer: {self.vocab.kind()} ({self.n_rows} ids)",
            f"vocab tensors ({'tied' if self.tied else 'untied'}):",
            *(f"  {a.name} [{a.role}] {a.tensor.dtype} {list(a.tensor.shape)} -> {list(reversed(a.new_ne))}"
              for a in self.actions if a.role),
            *kept_summary(self, t),
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def plan_gguf_trim(parts: list[GgufFile], keep: KeepList, *, pad_to_multiple_of: int | None = None,
                   drop_reserved: bool = False, vocab_tensors: tuple[str, ...] = (),
                   not_vocab_tensors: tuple[str, ...] = ()) -> GgufTrimPlan:
    """Decide the kept set and every action from the metadata alone."""
    vocab = GgufVocab.of(parts[0])
    n_rows = vocab.size()
    roles = find_gguf_vocab_tensors(parts, n_rows, vocab_tensors, not_vocab_tensors)
    notes = []
    if keep.duplicates:
        notes.append(f"{keep.path.name}: {keep.duplicates} duplicate ids counted once")
    user_ids = set(keep.ids)
    kept, additions = complete_kept_set([vocab.config()], None, vocab, user_ids, n_rows, drop_reserved=drop_reserved)
    kept_ids = np.array(sorted(kept), dtype=np.int64)
    pad_source, row_source = None, kept_ids.copy()
    if pad_to_multiple_of:
        n_pad = -len(kept_ids) % pad_to_multiple_of
        pad_id = vocab.id_keys.get("tokenizer.ggml.padding_token_id")
        candidates = [pad_id, vocab.id_keys.get("tokenizer.ggml.unknown_token_id")]
        pad_source = next((c for c in candidates if type(c) is int and c in kept), int(kept_ids[0]))
        row_source = np.concatenate([kept_ids, np.full(n_pad, pad_source, np.int64)])
    pad_tokens = pad_token_names(set(vocab.tokens), len(row_source) - len(kept_ids), len(kept_ids))
    actions = []
    for index, part in enumerate(parts):
        for tensor in part.tensors:
            role = roles.get(tensor.name)
            new_ne = tensor.ne[:-1] + (len(row_source),) if role else tensor.ne
            actions.append(GgufAction(index, tensor, new_ne, role.value if role else None))
    first_kvs, tok_notes = vocab.rewrite(list(parts[0].kvs.values()), kept_ids, len(row_source), pad_tokens)
    return GgufTrimPlan(parts[0].path, tuple(parts), vocab, len(user_ids), kept_ids, row_source, pad_source,
                        tuple(additions), tuple(actions),
                        (tuple(first_kvs), *(tuple(part.kvs.values()) for part in parts[1:])), tuple(notes + tok_notes))


def check_gguf_output(plan: GgufTrimPlan, targets: list[Path]) -> None:
    """Reopen the parts: layout, tokens per id, sampled rows equal their source rows, copied tensors' edges."""
    rng = np.random.default_rng(0)
    try:
        written = [read_gguf(t) for t in targets]
    except CheckpointError as e:
        raise VerifyError(f"output {e}") from e
    new_vocab = GgufVocab.of(written[0])
    expected = [plan.vocab.tokens[i] for i in plan.kept_ids] + list(new_vocab.tokens[len(plan.kept_ids):])
    if list(new_vocab.tokens) != expected or len(expected) != plan.new_rows:
        raise VerifyError(f"output {targets[0].name}: token list does not name the kept tokens in order")
    by_name = {t.name: t for part in written for t in part.tensors}
    for action in plan.actions:
        got = by_name.get(action.name)
        if got is None or got.ne != action.new_ne or got.ggml_type != action.tensor.ggml_type:
            raise VerifyError(f"output: tensor '{action.name}' is missing or has the wrong shape")
        if action.role:
            rows = plan.row_source
            sample = np.unique(np.concatenate([[0, len(rows) - 1], rng.integers(0, len(rows), SAMPLE_ROWS)]))
            if _rows(action.tensor, rows[sample]) != _rows(got, sample):
                raise VerifyError(f"output: rows of '{action.name}' differ from their source rows")
        elif _rows(action.tensor, np.array([0, action.tensor.shape[0] - 1])) != _rows(
                got, np.array([0, got.shape[0] - 1])):
            raise VerifyError(f"output: copied tensor '{action.name}' differs from its source")


def _rows(tensor: GgufTensor, rows: np.ndarray) -> bytes:
    row_nbytes = tensor.row_nbytes(0)
    with open(tensor.path, "rb") as f:
        return b"".join(os.pread(f.fileno(), row_nbytes, tensor.begin + int(r) * row_nbytes) for r in rows.tolist())


def check_keep_range(keep_path: Path, parts: list[GgufFile]) -> KeepList:
    n_vocab = len(parts[0].get("tokenizer.ggml.tokens") or [])
    if not n_vocab:
        raise CheckpointError(f"{parts[0].path.name}: no tokenizer.ggml.tokens in its metadata")
    return KeepList.load(keep_path, n_vocab)


def default_output(src: Path, tag: str = "trimmed") -> Path:
    """`m.gguf` -> `m-TAG.gguf`; a split `m-00001-of-00003.gguf` -> `m-TAG-00001-of-00003.gguf`."""
    match = SPLIT_NAME.match(src.name)
    if match:
        return src.with_name(f"{match['stem']}-{tag}-00001-of-{match['count']}.gguf")
    return src.with_name(f"{src.name.removesuffix('.gguf')}-{tag}.gguf")


def check_gguf_output_path(src: Path, out: Path, force: bool) -> None:
    if not out.name.endswith(".gguf"):
        raise InputError(f"{out}: a GGUF output must end in .gguf")
    check_output_target(out)
    if out.resolve() == src.resolve():
        raise InputError(f"{out}: output must not be the source (the source is never written to)")
    check_file_target(out)
    if out.exists() and not force:
        raise InputError(f"{out}: already exists", hint="pass --force to replace it")
