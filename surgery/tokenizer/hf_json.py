"""tokenizer.json (the `tokenizers` library's format): what it requires kept, and its rewrite.

Facts used here are in ../shared/TOKENIZERS.md and the tokenizers sources (models/bpe/model.rs,
models/unigram/model.rs, tokenizer/added_vocabulary.rs, processors/template.rs).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from surgery.errors import CheckpointError
from surgery.formats.pretty_json import dumps_indented
from surgery.tokenizer.bpe import (
    MergeTable,
    BYTE_FALLBACK_PIECES,
    BYTE_LEVEL_ALPHABET,
    merge_closure,
    merge_result,
)

SUPPORTED_MODELS = ("BPE", "WordPiece", "WordLevel", "Unigram")
METASPACE = "\u2581"  # "▁", SentencePiece's visible space


@dataclass(frozen=True, slots=True)
class HfTokenizerJson:
    name: str  # file name, for messages
    data: dict

    @classmethod
    def parse(cls, name: str, text: str) -> HfTokenizerJson:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{name}: not valid JSON (line {e.lineno}: {e.msg})") from e
        model = data.get("model") if isinstance(data, dict) else None
        kind = model.get("type") if isinstance(model, dict) else None
        if kind is None and isinstance(model, dict):
            kind = _infer_model_type(model)
        if kind not in SUPPORTED_MODELS:
            raise CheckpointError(
                f"{name}: tokenizer model type {kind!r} is not supported (supported: {', '.join(SUPPORTED_MODELS)})"
            )
        data["model"]["type"] = kind
        return cls(name, data)

    @property
    def kind(self) -> str:
        return self.data["model"]["type"]

    @property
    def model(self) -> dict:
        return self.data["model"]

    def vocab_items(self) -> list[tuple[str, int]]:
        """(token, old_id) of the model vocabulary."""
        if self.kind == "Unigram":
            return [(piece, old_id) for old_id, (piece, _score) in enumerate(self.model["vocab"])]
        return list(self.model["vocab"].items())

    def added_tokens(self) -> list[dict]:
        return list(self.data.get("added_tokens") or [])

    def token_to_id(self) -> dict[str, int]:
        mapping = dict(self.vocab_items())
        for added in self.added_tokens():
            mapping[added["content"]] = added["id"]
        return mapping

    def size(self) -> int:
        ids = [old_id for _, old_id in self.vocab_items()] + [a["id"] for a in self.added_tokens()]
        return max(ids) + 1 if ids else 0

    def check_layout(self) -> None:
        """The library numbers added-only tokens after the model vocab; refuse files that do otherwise."""
        vocab_ids = sorted(old_id for _, old_id in self.vocab_items())
        if vocab_ids != list(range(len(vocab_ids))):
            raise CheckpointError(f"{self.name}: model vocab ids are not dense 0..{len(vocab_ids) - 1}")
        vocab = self.model["vocab"]
        in_vocab = {piece for piece, _ in vocab} if self.kind == "Unigram" else vocab
        for added in self.added_tokens():
            if added["content"] not in in_vocab and added["id"] < len(vocab_ids):
                raise CheckpointError(
                    f"{self.name}: added token {added['content']!r} has id {added['id']} inside the model vocab "
                    f"(0..{len(vocab_ids) - 1}) but is not in it; the tokenizers library would renumber it"
                )

    # ---- what must be kept -------------------------------------------------------------------------

    def special_ids(self) -> set[int]:
        """Special added tokens, post-processor and padding ids, and the model's unk token."""
        return {a["id"] for a in self.added_tokens() if a.get("special")} | self.named_ids()

    def named_ids(self) -> set[int]:
        """Ids the tokenizer itself uses: post-processor and padding ids, and the model's unk token."""
        ids = set(_post_processor_ids(self.data.get("post_processor")))
        padding = self.data.get("padding")
        if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
            ids.add(padding["pad_id"])
        unk = self.unk_id()
        if unk is not None:
            ids.add(unk)
        return ids

    def unk_id(self) -> int | None:
        if self.kind == "Unigram":
            return self.model.get("unk_id")
        unk_token = self.model.get("unk_token")
        return self.token_to_id().get(unk_token) if unk_token is not None else None

    def is_byte_level(self) -> bool:
        return _has_type(self.data.get("pre_tokenizer"), "ByteLevel") or _has_type(self.data.get("decoder"), "ByteLevel")

    def byte_alphabet_ids(self) -> set[int]:
        """The 256 byte-level characters, found by string; byte-level BPE drops characters it lacks."""
        if not (self.kind == "BPE" and self.is_byte_level()):
            return set()
        vocab = self.model["vocab"]
        return {vocab[ch] for ch in BYTE_LEVEL_ALPHABET if ch in vocab}

    def whitespace_ids(self) -> set[int]:
        """SentencePiece-style tokenizers write spaces as "▁"; without that piece a space falls back to the
        bytes of U+2581 and decodes as a literal "▁" instead of a space."""
        uses_metaspace = any(_has_type(self.data.get(part), "Metaspace") for part in ("pre_tokenizer", "decoder"))
        if not uses_metaspace and METASPACE not in json.dumps(self.data.get("normalizer"), ensure_ascii=False):
            return set()
        old_id = self.token_to_id().get(METASPACE)
        return set() if old_id is None else {old_id}

    def byte_fallback_ids(self) -> set[int]:
        if not self.model.get("byte_fallback"):
            return set()
        mapping = dict(self.vocab_items())
        return {mapping[piece] for piece in BYTE_FALLBACK_PIECES if piece in mapping}

    def closure_ids(self, kept: set[int]) -> set[int]:
        """BPE: merge intermediates of kept tokens. Unigram: single characters of kept pieces + lowest piece."""
        return self.closure_builder()(kept)

    def closure_builder(self, replays: dict | None = None) -> Callable[[set[int]], set[int]]:
        """A function ids -> the ids they need, with the tables built once (keep --size calls it per token).

        The result for a set is the union of the results for its members.
        """
        if self.kind == "BPE":
            return self._bpe_closure_builder(replays)
        if self.kind == "Unigram":
            return self._unigram_support_builder()
        return lambda kept: set()

    def _bpe_closure_builder(self, replays: dict | None) -> Callable[[set[int]], set[int]]:
        vocab: dict[str, int] = self.model["vocab"]
        prefix = self.model.get("continuing_subword_prefix") or ""
        suffix = self.model.get("end_of_word_suffix") or ""
        merges = self.model.get("merges") or []
        if not prefix and " " not in "".join(vocab):
            # the result is a + b and no symbol holds a space: "a b" keys are unambiguous (a repeated merge
            # takes its last rank, as tokenizers' merge map does); "a b" strings are their own keys
            if all(type(m) is str for m in merges):
                keys = merges
            elif all(type(m) is list for m in merges):
                keys = map(" ".join, merges)
            else:
                keys = [m if isinstance(m, str) else " ".join(m) for m in merges]
            pair_rank = MergeTable(dict(zip(keys, range(len(merges)))), " ")
        else:
            ranks = {pair: rank for rank, pair in enumerate(self.merge_pairs())}

            def pair_rank(a: str, b: str):
                rank = ranks.get((a, b))
                if rank is None:
                    return None
                return rank, merge_result(a, b, prefix)

        def initial_symbols(token: str) -> list[str]:
            body, ends_word = (token[: -len(suffix)], True) if suffix and token.endswith(suffix) else (token, False)
            continued = bool(prefix) and body.startswith(prefix)
            chars = list(body[len(prefix):] if continued else body)
            symbols = [(prefix if (continued or i > 0) and prefix else "") + ch for i, ch in enumerate(chars)]
            if ends_word and symbols:
                symbols[-1] += suffix
            return symbols

        id_to_token = dict(zip(vocab.values(), vocab.keys()))

        def closure(kept: set[int]) -> set[int]:
            tokens = [id_to_token[old_id] for old_id in kept if old_id in id_to_token]
            return {vocab[s] for s in merge_closure(tokens, initial_symbols, pair_rank, replays) if s in vocab}

        return closure

    def _unigram_support_builder(self) -> Callable[[set[int]], set[int]]:
        pieces = self.model["vocab"]
        piece_ids = {piece: old_id for old_id, (piece, _score) in enumerate(pieces)}
        # the unk score is min_score - 10 (unigram/model.rs): keep the piece that sets min_score
        lowest = {min(range(len(pieces)), key=lambda old_id: pieces[old_id][1])} if pieces else set()

        def support(kept: set[int]) -> set[int]:
            needed = set(lowest)
            for old_id in kept:
                if old_id < len(pieces):
                    needed.update(piece_ids[ch] for ch in pieces[old_id][0] if ch in piece_ids)
            return needed

        return support

    def merge_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for merge in self.model.get("merges") or []:
            pairs.append(tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge))
        return pairs

    # ---- rewrite -----------------------------------------------------------------------------------

    def rewrite(self, old_to_new: np.ndarray) -> tuple[str, int]:
        """New tokenizer.json text, and the number of merges dropped."""
        data = dict(self.data)  # shallow: every part that changes is replaced, never edited in place
        model = data["model"] = dict(self.data["model"])
        dropped_merges = 0

        def new_id(old_id: int) -> int:
            return int(old_to_new[old_id]) if 0 <= old_id < len(old_to_new) else -1

        if self.kind == "Unigram":
            model["vocab"] = [entry for old_id, entry in enumerate(model["vocab"]) if new_id(old_id) >= 0]
            if model.get("unk_id") is not None:
                model["unk_id"] = new_id(model["unk_id"])
        else:
            tokens = list(model["vocab"])
            old_ids = np.fromiter(model["vocab"].values(), np.int64, len(tokens))
            inside = (old_ids >= 0) & (old_ids < len(old_to_new))
            new_ids = np.where(inside, np.asarray(old_to_new)[np.where(inside, old_ids, 0)], -1)
            order = [int(i) for i in np.flatnonzero(new_ids >= 0)[np.argsort(new_ids[new_ids >= 0], kind="stable")]]
            model["vocab"] = dict(zip([tokens[i] for i in order], new_ids[order].tolist()))
        if self.kind == "BPE":
            model["merges"], dropped_merges = _filter_merges(model.get("merges") or [], model["vocab"],
                                                             model.get("continuing_subword_prefix") or "")
        data["added_tokens"] = [
            {**added, "id": new_id(added["id"])} for added in data.get("added_tokens") or [] if new_id(added["id"]) >= 0
        ]
        if data.get("post_processor") is not None:
            data["post_processor"] = _remap_post_processor(data["post_processor"], new_id)
        padding = data.get("padding")
        if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
            data["padding"] = {**padding, "pad_id": new_id(padding["pad_id"])}
        return dumps_indented(data) + "\n", dropped_merges


def _infer_model_type(model: dict) -> str | None:
    if "merges" in model:
        return "BPE"
    if isinstance(model.get("vocab"), list):
        return "Unigram"
    if "continuing_subword_prefix" in model or "max_input_chars_per_word" in model:
        return "WordPiece"
    if isinstance(model.get("vocab"), dict):
        return "WordLevel"
    return None


def _has_type(component: object, wanted: str) -> bool:
    if not isinstance(component, dict):
        return False
    if component.get("type") == wanted:
        return True
    children = component.get("pretokenizers") or component.get("decoders") or []
    return any(_has_type(child, wanted) for child in children)


def filter_merge_pairs(pairs: list[tuple[str, str]], vocab, prefix: str) -> list[int]:
    """Indexes of merges whose two inputs and result are all in `vocab`, in their original order."""
    if not prefix:  # the result is a + b
        return [index for index, (a, b) in enumerate(pairs) if a in vocab and b in vocab and a + b in vocab]
    return [index for index, (a, b) in enumerate(pairs)
            if a in vocab and b in vocab and merge_result(a, b, prefix) in vocab]


def _filter_merges(merges: list, vocab: dict, prefix: str) -> tuple[list, int]:
    """Keep merges in the form they were read ("a b" strings or [a, b] pairs)."""
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    kept = filter_merge_pairs(pairs, vocab, prefix)
    return [merges[index] for index in kept], len(merges) - len(kept)


def _post_processor_ids(processor: object) -> set[int]:
    ids: set[int] = set()
    if not isinstance(processor, dict):
        return ids
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for special in (processor.get("special_tokens") or {}).values():
            ids.update(special.get("ids") or [])
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if isinstance(processor.get(key), list) and len(processor[key]) == 2:
                ids.add(processor[key][1])
    elif kind == "Sequence":
        for child in processor.get("processors") or []:
            ids |= _post_processor_ids(child)
    return ids


def _remap_post_processor(processor: dict, new_id) -> dict:
    processor = copy.deepcopy(processor)
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for special in (processor.get("special_tokens") or {}).values():
            special["ids"] = [new_id(old_id) for old_id in special.get("ids") or []]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if isinstance(processor.get(key), list) and len(processor[key]) == 2:
                processor[key] = [processor[key][0], new_id(processor[key][1])]
    elif kind == "Sequence":
        processor["processors"] = [_remap_post_processor(child, new_id) for child in processor.get("processors") or []]
    return processor
