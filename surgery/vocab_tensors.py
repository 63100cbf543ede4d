"""Find the tensors that have a vocabulary axis: one table of names, every match confirmed by shape."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from surgery.checkpoint import Checkpoint
from surgery.errors import CheckpointError, InputError
from surgery.safetensors_io import TensorEntry


class Role(str, enum.Enum):
    EMBED = "embed"
    HEAD = "head"
    BIAS = "bias"


@dataclass(frozen=True, slots=True)
class VocabPattern:
    regex: str
    role: Role
    axis: int


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
)


@dataclass(frozen=True, slots=True)
class VocabTensor:
    entry: TensorEntry
    role: Role
    axis: int
    pattern: str  # the regex that matched, or "--vocab-tensor" / "shape fallback"


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


def find_vocab_tensors(ckpt: Checkpoint, named: tuple[str, ...] = ()) -> VocabTensors:
    """Match names against VOCAB_PATTERNS, confirm by shape, or take the user's `--vocab-tensor NAME[:AXIS]`."""
    tensors = ckpt.tensors()
    if named:
        return _user_named(tensors, named)
    candidates = []
    for entry in tensors.values():
        for pattern in VOCAB_PATTERNS:
            if re.fullmatch(pattern.regex, entry.name) and len(entry.shape) > pattern.axis:
                candidates.append(VocabTensor(entry, pattern.role, pattern.axis, pattern.regex))
                break
    embeds = [c for c in candidates if c.role is Role.EMBED]
    notes: list[str] = []
    if not embeds:
        return _shape_fallback(ckpt, tensors)
    n_rows = max(c.entry.shape[0] for c in embeds)
    accepted = [c for c in candidates if c.entry.shape[c.axis] == n_rows]
    for c in candidates:
        if c not in accepted:
            notes.append(
                f"'{c.entry.name}' matches a {c.role.value} name but its axis {c.axis} has "
                f"{c.entry.shape[c.axis]} rows, not {n_rows}: copied unchanged"
            )
    return VocabTensors(n_rows, tuple(sorted(accepted, key=lambda c: c.entry.name)), tuple(notes))


def _shape_fallback(ckpt: Checkpoint, tensors: dict[str, TensorEntry]) -> VocabTensors:
    """No known name: accept the 2-D tensors whose rows equal config vocab_size, and say so."""
    vocab_size = ckpt.config.get("vocab_size") or (ckpt.config.get("text_config") or {}).get("vocab_size")
    matches = [e for e in tensors.values() if len(e.shape) == 2 and e.shape[0] == vocab_size]
    if not matches:
        biggest = sorted((e for e in tensors.values() if len(e.shape) == 2), key=lambda e: -e.shape[0])[:3]
        listed = ", ".join(f"'{e.name}' {list(e.shape)}" for e in biggest) or "none"
        raise CheckpointError(
            f"{ckpt.root.name}: no vocabulary tensor found (config vocab_size {vocab_size}; largest 2-D tensors: {listed})",
            hint="name them with --vocab-tensor NAME[:AXIS]",
        )
    found = tuple(
        VocabTensor(e, Role.EMBED if i == 0 else Role.HEAD, 0, "shape fallback")
        for i, e in enumerate(sorted(matches, key=lambda e: e.name))
    )
    note = "no known vocabulary tensor name; by shape: " + ", ".join(t.entry.name for t in found)
    return VocabTensors(int(vocab_size), found, (note,))


def _user_named(tensors: dict[str, TensorEntry], named: tuple[str, ...]) -> VocabTensors:
    found = []
    for item in named:
        name, _, axis_text = item.rpartition(":") if re.search(r":\d+$", item) else (item, "", "0")
        if name not in tensors:
            raise InputError(f"--vocab-tensor: no tensor '{name}' in the checkpoint")
        entry = tensors[name]
        axis = int(axis_text)
        if axis >= len(entry.shape):
            raise InputError(f"--vocab-tensor: '{name}' has shape {list(entry.shape)}, no axis {axis}")
        role = Role.EMBED if not found else (Role.BIAS if len(entry.shape) == 1 or axis else Role.HEAD)
        found.append(VocabTensor(entry, role, axis, "--vocab-tensor"))
    lengths = {t.entry.shape[t.axis] for t in found}
    if len(lengths) != 1:
        raise InputError("--vocab-tensor: the named tensors disagree on the vocab length: " + ", ".join(
            f"'{t.entry.name}' {t.entry.shape[t.axis]}" for t in found))
    return VocabTensors(lengths.pop(), tuple(found), ())
