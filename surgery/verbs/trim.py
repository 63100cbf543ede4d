"""trim: keep a vocabulary's kept ids, for folders and GGUF files; every decision from headers, configs and
tokenizer metadata alone.

The kept set follows one set of rules (complete_kept_set, ../shared/TOKENIZERS.md) over the folder's tokenizer
files or the GGUF file's own tokenizer metadata. Vocabulary rows are gathered as bytes (whole quantized blocks in a
GGUF file, never dequantized); every other tensor is copied byte for byte. A folder gets `surgery_trim.json`
beside it; a GGUF output (split or not, in the source's layout) carries the same record in its first part's
metadata (`surgery.trim_record`), so the file proves itself.

The folder and GGUF plans differ where their containers do: a folder rewrites tokenizer files and configs
(tokenizer/, model/config_keys), a GGUF file rewrites its tokenizer key-values (tokenizer/gguf_vocab).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from surgery.dtypes import whole_bytes
from surgery.edit.actions import (
    FolderEdit,
    ShardPlan,
    TensorAction,
    action_totals,
    other_files,
)
from surgery.edit.gguf_edit import GgufAction, GgufEdit
from surgery.errors import CheckpointError, InputError, VerifyError
from surgery.formats.gguf import GgufFile, KeyValue, read_gguf, tensor_nbytes
from surgery.formats.hf_folder import (
    CONFIG,
    GENERATION_CONFIG,
    Checkpoint,
    dump_json,
    load_json,
)
from surgery.model.config_defaults import ensure_node, text_path, unset_vocab_size
from surgery.model.config_keys import (
    VOCAB_SIZE_KEYS,
    ConfigPatch,
    named_token_ids,
    patch_config,
    vocab_size_keys,
)
from surgery.model.keys import Record, Tokenizer
from surgery.model.names import GGUF, GGUF_TOKEN_EMBD, GGUF_VOCAB_PATTERNS, gguf_group
from surgery.model.vocab_tensors import PREFIX_TABLE_SIZE_KEYS, Role, VocabTensors
from surgery.tokenizer import TokenizerFiles
from surgery.tokenizer.gguf_vocab import GgufVocab, pad_token_names
from surgery.verbs.keep_list import KeepList, build_old_to_new

def check_trim_options(src: Path, link_unchanged: bool) -> None:
    """Options that only a folder takes, refused for a GGUF file before any work."""
    from surgery.formats.paths import is_gguf

    if link_unchanged and is_gguf(src):
        raise InputError("--link-unchanged: a GGUF file is written anew as a whole; there is no unchanged shard")


@dataclass(frozen=True)
class TrimSource:
    """A checkpoint read once for trims: its Source, and for a folder its vocabulary tensors and tokenizer files.
    `plan()` takes a keep list; a script that plans many trims (100 keep lists) reads nothing again, and nothing
    in it is changed by a plan."""

    source: object  # edit/sources FolderSource or GgufSource
    vocab_tensors: tuple[str, ...] = ()
    not_vocab_tensors: tuple[str, ...] = ()
    vocab: object = None  # folders: model.vocab_tensors.VocabTensors
    tokenizer: object = None  # tokenizer.TokenizerFiles (folders) or tokenizer.gguf_vocab.GgufVocab
    unusable: CheckpointError | None = None  # why this folder cannot be trimmed (raised by n_ids and plan)

    @classmethod
    def open(cls, path: Path, vocab_tensors: tuple[str, ...] = (), not_vocab_tensors: tuple[str, ...] = ()
             ) -> TrimSource:
        from surgery.edit.sources import open_source
        from surgery.model.vocab_tensors import find_vocab_tensors

        source = open_source(path)
        if source.container == GGUF:
            try:
                vocab = GgufVocab.of(source.parts[0])
            except CheckpointError as e:
                return cls(source, tuple(vocab_tensors), tuple(not_vocab_tensors), unusable=e)
            return cls(source, tuple(vocab_tensors), tuple(not_vocab_tensors), tokenizer=vocab)
        try:  # what a trim needs; a source opened for cuts only may lack it, and then only a trim refuses it
            vocab = find_vocab_tensors(source.checkpoint, vocab_tensors, not_vocab_tensors)
            tokenizer = TokenizerFiles.load(path)
        except CheckpointError as e:
            return cls(source, tuple(vocab_tensors), tuple(not_vocab_tensors), unusable=e)
        return cls(source, tuple(vocab_tensors), tuple(not_vocab_tensors), vocab, tokenizer)

    @property
    def path(self) -> Path:
        return self.source.path

    def n_ids(self) -> int:
        """The ids a keep list may name: the tokenizer's (or the embedding's rows, when more)."""
        if self.unusable is not None:
            raise self.unusable
        if self.source.container == GGUF:
            return len(self.source.parts[0].get(Tokenizer.TOKENS) or [])
        return max(self.vocab.n_rows, self.tokenizer.size())

    def plan(self, keep: KeepList, *, pad_to_multiple_of: int | None = None, drop_reserved: bool = False
             ) -> TrimPlan | GgufTrimPlan:
        if self.unusable is not None:
            raise self.unusable
        if self.source.container == GGUF:
            return plan_gguf_trim(list(self.source.parts), keep, pad_to_multiple_of=pad_to_multiple_of,
                                  drop_reserved=drop_reserved, vocab_tensors=self.vocab_tensors,
                                  not_vocab_tensors=self.not_vocab_tensors, vocab=self.tokenizer)
        return plan_trim(self.source.checkpoint, self.vocab, self.tokenizer, keep,
                         pad_to_multiple_of=pad_to_multiple_of, drop_reserved=drop_reserved)


TRIM_RECORD = "surgery_trim.json"  # written into OUT: the old id of every new id, and why it was kept


@dataclass(frozen=True, slots=True)
class TrimPlan(FolderEdit):
    n_rows: int  # embedding rows before
    n_tokens: int  # tokenizer ids before (rows past it are padding, never tokens)
    user_ids: int
    kept_ids: np.ndarray  # sorted old ids, new id = position
    row_source: np.ndarray  # old row of each new row: kept_ids, then padding rows
    rowless_ids: np.ndarray  # old ids of tokens without an embedding row (Gemma-3): new ids after the rows
    pad_source: int | None  # old id whose row fills the padding rows
    additions: tuple[tuple[str, tuple[int, ...]], ...]  # (rule, old ids it added), in rule order
    tokenizer_kind: str
    vocab: VocabTensors
    tokenizer: object = field(default=None, compare=False, repr=False)  # the source's TokenizerFiles, for checks

    def check_files(self, out: Path) -> list[str]:
        from surgery.edit.checks import verify_files

        return verify_files(self, out, self.tokenizer)

    def check_written(self, out: Path) -> list[str]:
        from surgery.edit.checks import verify_shards

        return verify_shards(self, out)

    def vocab_shapes(self) -> dict[str, list[int]]:
        return {a.name: list(a.new_shape) for a in self.tensor_actions() if a.action == "gather"}

    @property
    def new_rows(self) -> int:
        return len(self.row_source)

    @property
    def token_old_ids(self) -> np.ndarray:
        """The old id of every new token id: the kept rows, then the tokens that have no row."""
        return np.concatenate([self.kept_ids, self.rowless_ids])

    @property
    def old_to_new(self) -> np.ndarray:
        """New id of every old token id (-1: removed); rows past the tokenizer are never tokens."""
        return build_old_to_new(self.token_old_ids, max(self.n_rows, self.n_tokens))

    record_name = TRIM_RECORD

    def rows_for(self, action: TensorAction) -> np.ndarray:
        """The old row of each new row of a gathered tensor: row_source, or for a prefix table (shorter than
        the embedding) the kept ids below its length, which are the first kept ids."""
        new_rows = action.new_shape[action.axis]
        return self.row_source if new_rows == len(self.row_source) else self.kept_ids[:new_rows]

    def addition_counts(self) -> dict[str, int]:
        return {rule: len(ids) for rule, ids in self.additions}

    def totals(self) -> dict[str, int]:
        return action_totals(self.tensor_actions())

    def record(self) -> dict:
        """The content of surgery_trim.json."""
        return trim_record(self)

    def to_json(self) -> dict:
        """The document `trim --dry-run --json` prints."""
        return {
            "source": str(self.src),
            "tokenizer": self.tokenizer_kind,
            "tied": self.vocab.tied,
            "old_vocab_rows": self.n_rows,
            "old_tokenizer_size": self.n_tokens,
            "user_ids": self.user_ids,
            "added_by_rule": self.addition_counts(),
            "kept": len(self.kept_ids),
            "new_vocab_rows": self.new_rows,
            **self.totals(),
            "tensors": [
                {"name": a.name, "shard": a.shard, "action": a.action, "role": a.role, "dtype": a.dtype,
                 "old_shape": list(a.old_shape), "new_shape": list(a.new_shape)}
                for a in self.tensor_actions() if a.action == "gather"
            ],
            "copied_tensors": sum(1 for a in self.tensor_actions() if a.action == "copy"),
            "rewritten_files": sorted(self.files),
            "copied_files": list(self.copied),
            "skipped_files": list(self.skipped),
            "config_patches": self.patches_json(),
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        t = self.totals()
        lines = [
            f"source: {self.src}",
            f"tokenizer: {self.tokenizer_kind} ({self.n_tokens} ids; embedding has {self.n_rows} rows)",
            f"vocab tensors ({'tied' if self.vocab.tied else 'untied'}):",
            *(f"  {a.name} [{a.role}] {a.dtype} {list(a.old_shape)} -> {list(a.new_shape)}"
              for a in self.tensor_actions() if a.action == "gather"),
            *kept_summary(self, t),
            f"files rewritten: {', '.join(sorted(self.files))}",
        ]
        if self.skipped:
            lines.append(f"not carried over (other weight formats): {', '.join(self.skipped)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def kept_summary(plan, t: dict[str, int]) -> list[str]:
    """The lines of a trim's description that say what is kept and what it saves (folder or GGUF plan)."""
    saved = 100 * (1 - t["bytes_after"] / t["bytes_before"]) if t["bytes_before"] else 0.0
    kept = len(plan.kept_ids)
    return [
        f"kept ids: {plan.user_ids} requested"
        + "".join(f", +{n} {rule}" for rule, n in plan.addition_counts().items() if n) + f" = {kept}",
        f"new vocab rows: {plan.new_rows}" + (f" ({plan.new_rows - kept} padding rows)" if plan.new_rows > kept else ""),
        f"parameters: {t['params_before']:,} -> {t['params_after']:,}",
        f"bytes: {t['bytes_before']:,} -> {t['bytes_after']:,} ({saved:.1f}% saved)",
    ]


def trim_record(plan) -> dict:
    """The trim record of a folder or GGUF trim: the old id of every new id, and why each was kept."""
    rowless = getattr(plan, "rowless_ids", ())
    return {
        "source": str(plan.src),
        "old_vocab_rows": plan.n_rows,
        "old_tokenizer_size": plan.n_tokens,
        "new_vocab_rows": plan.new_rows,
        "kept": len(plan.kept_ids),
        "padding_rows": plan.new_rows - len(plan.kept_ids),
        "padding_row_source_id": plan.pad_source,
        "added_by_rule": {rule: len(ids) for rule, ids in plan.additions},
        "added_ids_by_rule": {rule: list(ids) for rule, ids in plan.additions if ids},
        "old_ids": [int(i) for i in plan.kept_ids],
        **({"tokens_without_rows": {"old_ids": [int(i) for i in rowless],
                                    "new_ids": list(range(len(plan.kept_ids), len(plan.kept_ids) + len(rowless)))}}
           if len(rowless) else {}),
    }


def plan_trim(
    ckpt: Checkpoint,
    vocab: VocabTensors,
    tokenizer: TokenizerFiles,
    keep: KeepList,
    *,
    pad_to_multiple_of: int | None = None,
    drop_reserved: bool = False,
) -> TrimPlan:
    """Decide the kept set and every action. Reads no tensor bytes."""
    n_rows = vocab.n_rows
    vocab_keys = {name: vocab_size_keys(config, n_rows, name) for name, config in ckpt.configs.items()}
    n_tokens = tokenizer.size()
    # tokens past the rows (Gemma-3's <image_soft_token>) have no row in the source and get none: they stay
    # tokens, after the kept rows, in their order
    rowless_ids = np.arange(n_rows, n_tokens, dtype=np.int64)
    if len(rowless_ids) and pad_to_multiple_of:
        raise InputError(f"--pad-to-multiple-of: the tokenizer has {len(rowless_ids)} token(s) without an embedding "
                         f"row (ids {n_rows}..{n_tokens - 1}), which must follow the last row; padding rows would "
                         "take their ids")
    notes = list(vocab.notes)
    # a config that leaves vocab_size to its class default gets the new size written where the class reads it
    unset_keys = {name: unset_vocab_size(config, n_rows, name) for name, config in ckpt.configs.items()
                  if not vocab_keys[name] and name == CONFIG}
    for name, keys in vocab_keys.items():
        if not keys and name not in unset_keys:
            notes.append(f"{name} has no vocab_size equal to the embedding rows; none patched")
    user_ids = {i for i in keep.ids if i < min(n_tokens, n_rows)}
    past_tokens = [i for i in keep.ids if n_tokens <= i]
    if past_tokens:
        notes.append(f"{len(past_tokens)} requested ids are padding rows past the tokenizer "
                     f"(ids {n_tokens}..{n_rows - 1}), not tokens: dropped")
    if len(rowless_ids):
        notes.append(f"{len(rowless_ids)} token(s) have no embedding row (ids {n_rows}..{n_tokens - 1}): kept as "
                     "tokens without rows, after the kept rows")
    if keep.duplicates:
        notes.append(f"{keep.path.name}: {keep.duplicates} duplicate ids counted once")
    generation = _load_optional(ckpt.root / GENERATION_CONFIG)
    kept, additions = complete_kept_set(list(ckpt.configs.values()), generation, tokenizer, user_ids, n_rows,
                                        drop_reserved=drop_reserved)
    kept_ids = np.array(sorted(kept), dtype=np.int64)
    pad_source, row_source = _padding(kept_ids, ckpt.config, tokenizer, pad_to_multiple_of)
    old_to_new = build_old_to_new(np.concatenate([kept_ids, rowless_ids]), max(n_rows, n_tokens))
    files, tok_notes = tokenizer.rewrite(old_to_new)
    notes += tok_notes
    sizes = vocab_sizes(vocab, kept_ids, len(row_source))
    patches = []
    for name, config in ckpt.configs.items():
        new_config, config_patches = patch_config(name, config, old_to_new, sizes)
        if name in unset_keys:
            ensure_node(new_config, text_path(config))["vocab_size"] = len(row_source)
            config_patches.append(ConfigPatch(name, unset_keys[name], None, len(row_source)))
        files[name] = dump_json(new_config)
        patches += config_patches
    if generation is not None:
        new_generation, generation_patches = patch_config(GENERATION_CONFIG, generation, old_to_new, sizes)
        files[GENERATION_CONFIG] = dump_json(new_generation)
        patches += generation_patches
    shards = tuple(_shard_plan(shard, vocab, kept_ids, len(row_source)) for shard in ckpt.shards)
    copied, skipped = other_files(ckpt, files, TRIM_RECORD)
    return TrimPlan(
        src=ckpt.root, n_rows=n_rows, n_tokens=n_tokens, user_ids=len(user_ids), kept_ids=kept_ids,
        row_source=row_source, rowless_ids=rowless_ids, pad_source=pad_source, additions=tuple(additions),
        tokenizer_kind=tokenizer.kind(), tokenizer=tokenizer,
        vocab=vocab, shards=shards, indexes=ckpt.indexes, files=files,
        copied=copied, skipped=skipped, config_patches=tuple(patches), notes=tuple(notes),
    )


def complete_kept_set(configs: list[dict], generation: dict | None, tokenizer: TokenizerFiles, user_ids: set[int],
                      n_rows: int, *, drop_reserved: bool = False) -> tuple[set[int], list[tuple[str, tuple[int, ...]]]]:
    """The user's ids plus every id the configs name and the tokenizer needs, with the ids each rule added.

    This is the single definition of the final kept set: `trim` keeps it and `keep --size` sizes it.
    `configs` are config.json and/or params.json; with `drop_reserved`, reserved placeholder tokens that
    nothing names are not kept as special tokens.
    """
    config_ids = config_token_ids(configs, generation, tokenizer, n_rows)
    user_ids = {i for i in user_ids if i < n_rows}  # a token without a row (Gemma-3) stays one: trim keeps it
    kept = user_ids | config_ids
    additions = [("config token ids", tuple(sorted(config_ids - user_ids)))]
    no_timestamps = (generation or {}).get("no_timestamps_token_id")
    if type(no_timestamps) is int and 0 <= no_timestamps < n_rows:
        # whisper: every id after no_timestamps_token_id is a timestamp (generation computes them by offset),
        # so the block stays whole, and last
        timestamps = set(range(no_timestamps, tokenizer.size())) - kept
        kept |= timestamps
        additions.append(("whisper timestamps", tuple(sorted(timestamps))))
    for rule, ids in tokenizer.required_by_rule(kept, drop_reserved=drop_reserved):
        ids = {i for i in ids if i < n_rows}  # a token without a row (Gemma-3) stays a token, never a row
        kept |= ids
        additions.append((rule, tuple(sorted(ids))))
    return kept, additions


def config_token_ids(configs: list[dict], generation: dict | None, tokenizer: TokenizerFiles, n_rows: int) -> set[int]:
    """Every token id the configs name (`*_token_id`, forced_decoder_ids), except padding rows (not tokens)."""
    named = {i for config in [*configs, generation or {}] for ids in named_token_ids(config, n_rows).values()
             for i in ids}
    return named - set(range(tokenizer.size(), n_rows))


def vocab_sizes(vocab: VocabTensors, kept_ids: np.ndarray, new_rows: int) -> dict[str, tuple[int, int]]:
    """Config size keys and their (old, new) values: the vocabulary's, and each prefix table's."""
    sizes = {key: (vocab.n_rows, new_rows) for key in VOCAB_SIZE_KEYS}
    for tensor in vocab.tensors:
        if tensor.prefix:
            for key in PREFIX_TABLE_SIZE_KEYS:
                sizes[key] = (tensor.n_rows, int(np.count_nonzero(kept_ids < tensor.n_rows)))
    return sizes


def _padding(kept_ids: np.ndarray, config: dict, tokenizer: TokenizerFiles, multiple: int | None):
    """Padding rows copy one kept row (pad, else unk, else the first kept id).

    A duplicate row gives the same logit as its token, whose lower id wins every argmax tie, so a padding
    row is never the argmax; a zero row would give logit 0, which can win.
    """
    if not multiple:
        return None, kept_ids.copy()
    if multiple < 1:
        raise InputError(f"--pad-to-multiple-of must be a positive integer, got {multiple}")
    n_pad = -len(kept_ids) % multiple
    kept_set = set(kept_ids.tolist())
    candidates = [config.get("pad_token_id"), tokenizer.hf.unk_id() if tokenizer.hf else None]
    pad_source = next((c for c in candidates if type(c) is int and c in kept_set), int(kept_ids[0]))
    return pad_source, np.concatenate([kept_ids, np.full(n_pad, pad_source, dtype=np.int64)])


def trim_totals(ckpt: Checkpoint, vocab: VocabTensors, kept_ids: np.ndarray) -> dict[str, int]:
    """What keeping kept_ids would save, from headers alone (keep --stats), without planning the files."""
    return action_totals([a for shard in ckpt.shards for a in _shard_plan(shard, vocab, kept_ids).actions])


def _shard_plan(shard, vocab: VocabTensors, kept_ids: np.ndarray, new_rows: int | None = None) -> ShardPlan:
    """Vocabulary tensors take new_rows rows (kept ids, then padding); a prefix table only its kept ids."""
    new_rows = len(kept_ids) if new_rows is None else new_rows
    by_name = vocab.by_name()
    actions = []
    for entry in shard.entries:
        found = by_name.get(entry.name)
        if found is None:
            actions.append(TensorAction(entry.name, shard.path.name, "copy", entry.dtype, entry.shape, entry.shape, None, None,
                                        entry=entry))
            continue
        if whole_bytes(entry.dtype, int(np.prod(entry.shape[found.axis + 1:]))) is None:
            raise CheckpointError(
                f"{shard.path.name}: tensor '{entry.name}' has {entry.dtype}, a packed dtype, rows are not byte-addressable"
            )
        rows = int(np.count_nonzero(kept_ids < found.n_rows)) if found.prefix else new_rows
        new_shape = entry.shape[: found.axis] + (rows,) + entry.shape[found.axis + 1 :]
        actions.append(TensorAction(entry.name, shard.path.name, "gather", entry.dtype, entry.shape, new_shape,
                                    found.axis, found.role.value, entry=entry))
    return ShardPlan(shard.path.name, shard.metadata, tuple(actions))


def _load_optional(path: Path):
    return load_json(path) if path.exists() else None


# ---- GGUF files ------------------------------------------------------------------------------------------

RECORD_KEY = Record.TRIM  # the record in a GGUF output's metadata


def find_gguf_vocab_tensors(parts: list[GgufFile], n_vocab: int, named: tuple[str, ...] = (),
                            not_vocab: tuple[str, ...] = ()) -> dict[str, Role]:
    """The vocabulary tensors by name table (+ --vocab-tensor); refuse any other tensor with that length."""
    tensors = [t for part in parts for t in part.tensors]
    found: dict[str, Role] = {}
    for tensor in tensors:
        role = next((Role(r) for pattern, r in GGUF_VOCAB_PATTERNS if re.fullmatch(pattern, tensor.name)), None)
        if tensor.name in {n.rsplit(":", 1)[0] for n in named}:
            role = Role.HEAD if tensor.name != GGUF_TOKEN_EMBD else Role.EMBED
        if role is None:
            continue
        if tensor.shape[0] != n_vocab:
            raise CheckpointError(f"{tensor.path.name}: '{tensor.name}' has {tensor.shape[0]} rows but the tokenizer "
                                  f"has {n_vocab} tokens; llama.cpp requires them equal")
        found[tensor.name] = role
    if GGUF_TOKEN_EMBD not in found:
        raise CheckpointError(f"{parts[0].path.name}: no {GGUF_TOKEN_EMBD} tensor")
    stray = [t for t in tensors if t.name not in found and n_vocab in t.shape
             and not any(fnmatch.fnmatchcase(t.name, p) for p in not_vocab)]
    if stray:
        listed = ", ".join(f"'{t.name}' {list(t.ne)}" for t in stray[:4])
        groups = list(dict.fromkeys(gguf_group(t.name) for t in stray))
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

    def vocab_shapes(self) -> dict[str, list[int]]:
        return {a.name: list(reversed(a.new_ne)) for a in self.actions if a.role}

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
                   not_vocab_tensors: tuple[str, ...] = (), vocab: GgufVocab | None = None) -> GgufTrimPlan:
    """Decide the kept set and every action from the metadata alone (`vocab`: the first part's, when already
    read, with its closure tables)."""
    vocab = vocab or GgufVocab.of(parts[0])
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
        candidates = [vocab.id_keys.get(Tokenizer.PAD_ID), vocab.id_keys.get(Tokenizer.UNK_ID)]
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
    """Reopen the parts: tokens per id, then every tensor by the one checker (sampled rows equal their source rows,
    copied tensors' sampled rows equal)."""
    from surgery.edit.checks import slice_problem

    try:
        written = [read_gguf(t) for t in targets]
    except CheckpointError as e:
        raise VerifyError(f"output {e}") from e
    new_vocab = GgufVocab.of(written[0])
    expected = [plan.vocab.tokens[i] for i in plan.kept_ids] + list(new_vocab.tokens[len(plan.kept_ids):])
    if list(new_vocab.tokens) != expected or len(expected) != plan.new_rows:
        raise VerifyError(f"output {targets[0].name}: token list does not name the kept tokens in order")
    problem = slice_problem(plan.slices(), {t.name: t for part in written for t in part.tensors}, sample=True)
    if problem is not None:
        raise VerifyError(f"output: {problem}")


