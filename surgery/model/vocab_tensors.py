"""Find the tensors that have a vocabulary axis: one table of names, every match confirmed by shape.

Nothing is guessed: a tensor outside the table that still has an axis of the vocabulary's length makes the
search refuse, naming the flags that settle it (`--vocab-tensor` to trim it, `--not-vocab-tensor` to copy it).
"""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass

from surgery.errors import CheckpointError, InputError
from surgery.formats.hf_folder import Checkpoint
from surgery.formats.safetensors import TensorEntry


class Role(str, enum.Enum):
    EMBED = "embed"
    HEAD = "head"
    BIAS = "bias"


@dataclass(frozen=True, slots=True)
class VocabPattern:
    regex: str
    role: Role
    axis: int
    prefix: bool = False  # the table covers only the first ids (Gemma-3n: vocab_size_per_layer_input rows)


# Full-match patterns over checkpoint keys. `P` is any prefix of module names (multimodal wrappers such as
# `language_model.`, `model.language_model.`, `model.text_model.`).
P = r"(?:[\w.]+\.)?"
VOCAB_PATTERNS: tuple[VocabPattern, ...] = (
    VocabPattern(P + r"embed_tokens\.weight", Role.EMBED, 0),  # llama mistral qwen2/3 gemma phi3 smollm t5 bart whisper opt llava
    VocabPattern(P + r"wte\.weight", Role.EMBED, 0),  # gpt2 gpt-j codegen mpt
    VocabPattern(P + r"embed_in\.weight", Role.EMBED, 0),  # gpt-neox pythia
    VocabPattern(P + r"embeddings\.word_embeddings\.weight", Role.EMBED, 0),  # bert roberta xlm-r electra, sentence-transformers
    VocabPattern(P + r"word_embeddings\.weight", Role.EMBED, 0),  # bloom falcon
    VocabPattern(P + r"shared\.weight", Role.EMBED, 0),  # t5 mt5 bart mbart (model.shared)
    VocabPattern(P + r"lm_head\.weight", Role.HEAD, 0),  # most causal LMs, t5, llava language_model.lm_head
    VocabPattern(P + r"embed_out\.weight", Role.HEAD, 0),  # gpt-neox
    VocabPattern(r"proj_out\.weight", Role.HEAD, 0),  # whisper (usually tied, then absent)
    VocabPattern(r"cls\.predictions\.decoder\.weight", Role.HEAD, 0),  # bert mlm (usually tied, then absent)
    VocabPattern(P + r"lm_head\.decoder\.weight", Role.HEAD, 0),  # roberta xlm-r mlm (usually tied)
    VocabPattern(r"cls\.predictions\.(?:decoder\.)?bias", Role.BIAS, 0),  # bert mlm: [vocab]
    VocabPattern(P + r"lm_head\.(?:decoder\.)?bias", Role.BIAS, 0),  # roberta xlm-r mlm, phi-2: [vocab]
    VocabPattern(P + r"final_logits_bias", Role.BIAS, 1),  # bart mbart marian pegasus: [1, vocab]
    # multi-token prediction layers carry their own embedding (matched above as `model.layers.N.embed_tokens`)
    # and head: deepseek-v3 glm-4.5 (model.layers.{num_hidden_layers}.shared_head.head)
    VocabPattern(P + r"shared_head\.head\.weight", Role.HEAD, 0),
    VocabPattern(r"tok_embeddings\.weight", Role.EMBED, 0),  # mistral native layout (consolidated.safetensors)
    VocabPattern(r"output\.weight", Role.HEAD, 0),  # mistral native layout
    VocabPattern(P + r"embed_tokens_per_layer\.weight", Role.EMBED, 0, prefix=True),  # gemma-3n per-layer table
)
# config keys that give the length of a prefix table (patched to the kept ids below it)
PREFIX_TABLE_SIZE_KEYS = ("vocab_size_per_layer_input",)


@dataclass(frozen=True, slots=True)
class VocabTensor:
    entry: TensorEntry
    role: Role
    axis: int
    pattern: str  # the regex that matched, or "--vocab-tensor"
    prefix: bool = False  # covers only the first ids of the vocabulary (a table shorter than the embedding)

    @property
    def n_rows(self) -> int:
        """The length of its vocabulary axis: the vocabulary's, or fewer for a prefix table."""
        return self.entry.shape[self.axis]


@dataclass(frozen=True, slots=True)
class VocabTensors:
    n_rows: int  # the length of the vocab axis, shared by every vocab tensor
    tensors: tuple[VocabTensor, ...]
    notes: tuple[str, ...]  # things the user should hear about (fallbacks)

    @property
    def tied(self) -> bool:
        """Tied when the files hold no head tensor: the files decide, not tie_word_embeddings."""
        return not any(t.role is Role.HEAD for t in self.tensors)

    def by_name(self) -> dict[str, VocabTensor]:
        return {t.entry.name: t for t in self.tensors}


def find_vocab_tensors(ckpt: Checkpoint, named: tuple[str, ...] = (), not_vocab: tuple[str, ...] = ()) -> VocabTensors:
    """Match names against VOCAB_PATTERNS and confirm by shape; add the user's `--vocab-tensor NAME[:AXIS]`.

    `not_vocab` holds names or glob patterns (`--not-vocab-tensor`) of tensors the user declares to have no
    vocabulary axis. Raise when any other tensor still has an axis of the vocabulary's length.
    """
    tensors = ckpt.tensors()
    candidates = []
    for entry in tensors.values():
        for pattern in VOCAB_PATTERNS:
            if re.fullmatch(pattern.regex, entry.name) and len(entry.shape) > pattern.axis:
                candidates.append(VocabTensor(entry, pattern.role, pattern.axis, pattern.regex, pattern.prefix))
                break
    embeds = [c for c in candidates if c.role is Role.EMBED and not c.prefix]
    if not embeds and not named:
        _refuse_unknown_names(ckpt, tensors)
    notes: list[str] = []
    n_rows = max((c.n_rows for c in embeds), default=None)
    accepted = []
    for c in candidates:
        if (c.n_rows == n_rows and not c.prefix) or (c.prefix and n_rows is not None and c.n_rows <= n_rows):
            accepted.append(c)
        else:
            notes.append(f"'{c.entry.name}' matches a {c.role.value} name but its axis {c.axis} has "
                         f"{c.n_rows} rows, not {n_rows}: copied unchanged")
    accepted.sort(key=lambda c: c.entry.name)
    if named:  # the user's come after those found, in the order given
        accepted = _add_user_named(tensors, named, accepted)
        n_rows = next(t.n_rows for t in accepted if not t.prefix)
    found = VocabTensors(n_rows, tuple(accepted), tuple(notes))
    _refuse_stray_vocab_axes(tensors, found, not_vocab)
    return found


def _refuse_unknown_names(ckpt: Checkpoint, tensors: dict[str, TensorEntry]) -> None:
    """No known name: list the tensors whose rows equal the config's vocab_size, and the flags that take them."""
    vocab_size = ckpt.config.get("vocab_size") or (ckpt.config.get("text_config") or {}).get("vocab_size")
    matches = sorted((e for e in tensors.values() if e.shape and e.shape[0] == vocab_size), key=lambda e: e.name)
    if matches:
        listed = ", ".join(f"'{e.name}' {list(e.shape)}" for e in matches[:6])
        flags = " ".join(f"--vocab-tensor {e.name}:0" for e in matches[:6])
        raise CheckpointError(
            f"{ckpt.root.name}: no known vocabulary tensor name; tensors with {vocab_size} rows: {listed}",
            hint=f"surgery does not guess: name the vocabulary tensors, the embedding first, e.g. {flags}",
        )
    biggest = sorted((e for e in tensors.values() if len(e.shape) == 2), key=lambda e: -e.shape[0])[:3]
    listed = ", ".join(f"'{e.name}' {list(e.shape)}" for e in biggest) or "none"
    raise CheckpointError(
        f"{ckpt.root.name}: no vocabulary tensor found (config vocab_size {vocab_size}; largest 2-D tensors: {listed})",
        hint="name them with --vocab-tensor NAME[:AXIS]",
    )


def _refuse_stray_vocab_axes(tensors: dict[str, TensorEntry], found: VocabTensors, not_vocab: tuple[str, ...]) -> None:
    """Any other tensor with an axis of the vocabulary's length would keep the old length: refuse, never guess."""
    taken = {t.entry.name for t in found.tensors}
    stray = sorted(
        ((entry, entry.shape.index(found.n_rows)) for entry in tensors.values()
         if entry.name not in taken and found.n_rows in entry.shape
         and not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in not_vocab)),
        key=lambda item: item[0].name,
    )
    if not stray:
        return
    listed = ", ".join(f"'{e.name}' {list(e.shape)}" for e, _ in stray[:4]) + (
        f" and {len(stray) - 4} more" if len(stray) > 4 else "")
    trim_flags = " ".join(f"--vocab-tensor {e.name}:{axis}" for e, axis in stray[:4])
    groups = list(dict.fromkeys(re.sub(r"\.\d+\..*$", ".*", e.name) for e, _ in stray))
    copy_flags = " ".join(f"--not-vocab-tensor '{g}'" for g in groups[:6])
    raise CheckpointError(
        f"{len(stray)} tensor(s) outside the vocabulary tensors have an axis of the vocabulary's length "
        f"{found.n_rows}: {listed}",
        hint=f"to trim them too: {trim_flags}; if they have no vocabulary axis (a hidden or MLP size that "
             f"equals the vocabulary size): {copy_flags}",
    )


def _add_user_named(tensors: dict[str, TensorEntry], named: tuple[str, ...], found: list[VocabTensor]) -> list[VocabTensor]:
    """The user's tensors join those found by name (the first is the embedding when none was found)."""
    found = [t for t in found if t.entry.name not in {_split_axis(item)[0] for item in named}]
    for item in named:
        name, axis = _split_axis(item)
        if name not in tensors:
            raise InputError(f"--vocab-tensor: no tensor '{name}' in the checkpoint")
        entry = tensors[name]
        if axis >= len(entry.shape):
            raise InputError(f"--vocab-tensor: '{name}' has shape {list(entry.shape)}, no axis {axis}")
        has_embed = any(t.role is Role.EMBED and not t.prefix for t in found)
        role = Role.EMBED if not has_embed else (Role.BIAS if len(entry.shape) == 1 or axis else Role.HEAD)
        found.append(VocabTensor(entry, role, axis, "--vocab-tensor"))
    lengths = {t.n_rows for t in found if not t.prefix}
    if len(lengths) != 1:
        raise InputError("--vocab-tensor: the named tensors disagree on the vocab length: " + ", ".join(
            f"'{t.entry.name}' {t.n_rows}" for t in found if not t.prefix))
    return found


def _split_axis(item: str) -> tuple[str, int]:
    name, _, axis_text = item.rpartition(":") if re.search(r":\d+$", item) else (item, "", "0")
    return name, int(axis_text)
