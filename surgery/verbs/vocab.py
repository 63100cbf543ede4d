"""plan_trim: everything a trim will do, computed from headers, configs and tokenizer files alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.dtypes import whole_bytes
from surgery.edit.actions import (
    FolderEdit,
    ShardPlan,
    TensorAction,
    action_totals,
    other_files,
)
from surgery.errors import CheckpointError, InputError
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
from surgery.model.vocab_tensors import PREFIX_TABLE_SIZE_KEYS, VocabTensors
from surgery.tokenizer import TokenizerFiles
from surgery.verbs.keep_list import KeepList, build_old_to_new

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
        tokenizer_kind=tokenizer.kind(),
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
