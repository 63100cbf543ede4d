"""The tokenizer files of a checkpoint, taken together: which ids they need kept, and their rewrite.

tokenizer.json (when present) is the authority for ids; a SentencePiece model beside it is matched to it by
piece string, which also covers the fairseq layout (XLM-R, mBART: model id = piece id + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.checkpoint import dump_json, load_json
from surgery.errors import CheckpointError
from surgery.tokenizer_files.hf_json import HfTokenizerJson, filter_merge_pairs
from surgery.tokenizer_files.sp_model import NORMAL, SpModel, load_check

TOKENIZER_JSON = "tokenizer.json"
SP_MODEL_NAMES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model")
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
ADDED_TOKENS_JSON = "added_tokens.json"
VOCAB_TXT = "vocab.txt"
VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # transformers v5 writes templates apart
NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
LIST_SPECIALS = ("additional_special_tokens", "extra_special_tokens")


@dataclass(frozen=True, slots=True)
class TokenizerFiles:
    root: Path
    hf: HfTokenizerJson | None
    sp: SpModel | None
    sp_name: str | None
    side: dict = field(default_factory=dict)  # file name -> parsed content of the small side files

    @classmethod
    def load(cls, root: Path) -> TokenizerFiles:
        """Read every tokenizer file present; refuse a checkpoint whose tokenizer we cannot rewrite."""
        hf = None
        if (root / TOKENIZER_JSON).exists():
            hf = HfTokenizerJson.parse(TOKENIZER_JSON, _read_text(root / TOKENIZER_JSON))
            hf.check_layout()
        sp_name = next((n for n in SP_MODEL_NAMES if (root / n).exists()), None)
        sp = SpModel.parse(sp_name, (root / sp_name).read_bytes()) if sp_name else None
        if hf is None and sp is None:
            slow = [n for n in (VOCAB_TXT, VOCAB_JSON, "tekken.json", "tokenizer.tiktoken", "qwen.tiktoken")
                    if (root / n).exists()]
            what = f"only {', '.join(slow)}, which surgery does not rewrite alone" if slow else "no tokenizer"
            raise CheckpointError(
                f"{root}: {what}; need {TOKENIZER_JSON} or a SentencePiece model ({', '.join(SP_MODEL_NAMES)})",
                hint="save the tokenizer with a fast tokenizer (tokenizer.save_pretrained) to get tokenizer.json",
            )
        side = {}
        for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, ADDED_TOKENS_JSON, VOCAB_JSON):
            if (root / name).exists():
                side[name] = load_json(root / name)
        for name in (VOCAB_TXT, MERGES_TXT, *CHAT_TEMPLATE_FILES):
            if (root / name).exists():
                side[name] = _read_text(root / name).split("\n")
        files = cls(root, hf, sp, sp_name, side)
        files.piece_to_model_id()  # validates that the SentencePiece model agrees with tokenizer.json
        return files

    # ---- ids ----------------------------------------------------------------------------------------

    def token_to_id(self) -> dict[str, int]:
        if self.hf is not None:
            return self.hf.token_to_id()
        mapping = {piece: index for index, piece in enumerate(self.sp.pieces())}
        config = self.side.get(TOKENIZER_CONFIG) or {}
        extra_ids = config.get("extra_ids")
        if type(extra_ids) is int:  # T5: <extra_id_N> come after the pieces, in reverse order
            n_pieces = len(mapping)
            mapping.update({f"<extra_id_{n}>": n_pieces + extra_ids - 1 - n for n in range(extra_ids)})
        decoder = config.get("added_tokens_decoder") or {}
        for key, info in decoder.items():
            if isinstance(info, dict) and "content" in info:
                mapping.setdefault(info["content"], int(key))
        return mapping

    def size(self) -> int:
        return max(self.token_to_id().values()) + 1

    def id_to_token(self) -> dict[int, str]:
        return {old_id: token for token, old_id in self.token_to_id().items()}

    def kind(self) -> str:
        if self.hf is not None:
            extra = " byte-level" if self.hf.is_byte_level() else ""
            extra += " byte_fallback" if self.hf.model.get("byte_fallback") else ""
            return f"tokenizer.json {self.hf.kind}{extra}"
        return f"SentencePiece {self.model_type()}"

    def model_type(self) -> str:
        """BPE, Unigram, WordPiece or WordLevel: tokenizer.json's model, else the SentencePiece one."""
        if self.hf is not None:
            return self.hf.kind
        return {1: "Unigram", 2: "BPE"}[self.sp.proto.trainer_spec.model_type]

    def piece_to_model_id(self) -> list[int]:
        """Model id of each SentencePiece piece; checks that normal pieces sit at one fixed offset."""
        if self.sp is None:
            return []
        if self.hf is None:
            return list(range(len(self.sp.pieces())))
        vocab = self.hf.token_to_id()
        missing = [p for p in self.sp.pieces() if p not in vocab]
        if missing:
            raise CheckpointError(
                f"{self.sp_name}: piece {missing[0]!r} is not in {TOKENIZER_JSON} "
                f"({len(missing)} pieces missing); the two tokenizer files disagree"
            )
        model_ids = [vocab[p] for p in self.sp.pieces()]
        offsets = {model_ids[index] - index for index, kind in enumerate(self.sp.types()) if kind == NORMAL}
        if len(offsets) > 1:
            raise CheckpointError(
                f"{self.sp_name}: pieces map to {TOKENIZER_JSON} ids at different offsets {sorted(offsets)[:3]}; "
                "cannot rewrite both consistently"
            )
        return model_ids

    # ---- the kept set -------------------------------------------------------------------------------

    def named_special_ids(self) -> set[int]:
        """Tokens named by tokenizer_config / special_tokens_map, and added tokens used by the chat template."""
        token_to_id = self.token_to_id()
        names: set[str] = set()
        for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
            config = self.side.get(name) or {}
            for key in NAMED_SPECIALS:
                names.update(_token_strings(config.get(key)))
            for key in LIST_SPECIALS:
                names.update(_token_strings(config.get(key)))
        template = _chat_template_text(self.side.get(TOKENIZER_CONFIG) or {}) + "".join(
            "\n".join(self.side.get(name, [])) for name in CHAT_TEMPLATE_FILES)
        if template:
            names.update(content for content in self._added_contents() if content and content in template)
        return {token_to_id[n] for n in names if n in token_to_id}

    def _added_contents(self) -> list[str]:
        if self.hf is not None:
            return [added["content"] for added in self.hf.added_tokens()]
        decoder = (self.side.get(TOKENIZER_CONFIG) or {}).get("added_tokens_decoder") or {}
        return [info.get("content", "") for info in decoder.values() if isinstance(info, dict)]

    def required_by_rule(self, kept: set[int]) -> list[tuple[str, set[int]]]:
        """Ids the tokenizer needs beside `kept`, rule by rule, each set disjoint from what came before."""
        kept = set(kept)
        rules: list[tuple[str, set[int]]] = []

        def add(rule: str, ids: set[int]) -> None:
            new = set(ids) - kept
            kept.update(new)
            rules.append((rule, new))

        piece_ids = self.piece_to_model_id()
        specials = self.named_special_ids()
        if self.hf is not None:
            specials |= self.hf.special_ids()
        if self.sp is not None:
            specials |= {piece_ids[index] for index in self.sp.special_pieces()}
        add("special tokens", specials)
        add("byte alphabet", self.hf.byte_alphabet_ids() if self.hf else set())
        fallback = self.hf.byte_fallback_ids() if self.hf else set()
        if self.sp is not None:
            fallback |= {piece_ids[index] for index in self.sp.byte_pieces()}
        add("byte fallback", fallback)
        whitespace = self.hf.whitespace_ids() if self.hf else set()
        if self.sp is not None:
            whitespace |= {piece_ids[index] for index in self.sp.whitespace_pieces()}
        add("whitespace piece", whitespace)
        add("unigram characters and lowest piece" if self.model_type() == "Unigram" else "merge closure",
            self.closure_builder()(kept))
        return rules

    def closure_builder(self):
        """ids -> the ids the tokenizer's merges or Unigram pieces need for them; a union over members."""
        hf_closure = self.hf.closure_builder() if self.hf is not None else (lambda kept: set())
        if self.sp is None:
            return hf_closure
        piece_ids = self.piece_to_model_id()
        model_to_piece = {model_id: index for index, model_id in enumerate(piece_ids)}
        sp_closure = self.sp.closure_builder()

        def closure(kept: set[int]) -> set[int]:
            kept_pieces = {model_to_piece[m] for m in kept if m in model_to_piece}
            return hf_closure(kept) | {piece_ids[index] for index in sp_closure(kept_pieces)}

        return closure

    # ---- rewrite ------------------------------------------------------------------------------------

    def rewrite(self, old_to_new: np.ndarray) -> tuple[dict[str, bytes], list[str]]:
        """New contents of every tokenizer file that names ids, and notes for the user."""
        out: dict[str, bytes] = {}
        notes: list[str] = []

        def new_id(old_id: int) -> int:
            return int(old_to_new[old_id]) if 0 <= old_id < len(old_to_new) else -1

        if self.hf is not None:
            text, dropped = self.hf.rewrite(old_to_new)
            out[TOKENIZER_JSON] = text.encode("utf-8")
            if dropped:
                notes.append(f"{TOKENIZER_JSON}: {dropped} merges dropped (an input or result was removed)")
        if self.sp is not None:
            piece_ids = self.piece_to_model_id()
            kept_pieces = [index for index, model_id in enumerate(piece_ids) if new_id(model_id) >= 0]
            raw = self.sp.rewrite(kept_pieces)
            load_check(self.sp_name, raw)
            out[self.sp_name] = raw
        config = self.side.get(TOKENIZER_CONFIG)
        if isinstance(config, dict) and isinstance(config.get("added_tokens_decoder"), dict):
            decoder = {str(new_id(int(k))): v for k, v in config["added_tokens_decoder"].items() if new_id(int(k)) >= 0}
            out[TOKENIZER_CONFIG] = dump_json({**config, "added_tokens_decoder": decoder})
        added = self.side.get(ADDED_TOKENS_JSON)
        if isinstance(added, dict):
            out[ADDED_TOKENS_JSON] = dump_json({k: new_id(v) for k, v in added.items() if new_id(v) >= 0})
        if VOCAB_TXT in self.side:
            lines = self.side[VOCAB_TXT]
            kept_lines = [line for old_id, line in enumerate(lines) if line and new_id(old_id) >= 0]
            out[VOCAB_TXT] = ("\n".join(kept_lines) + "\n").encode("utf-8")
        if isinstance(self.side.get(VOCAB_JSON), dict):
            vocab = {k: new_id(v) for k, v in self.side[VOCAB_JSON].items() if new_id(v) >= 0}
            out[VOCAB_JSON] = dump_json(dict(sorted(vocab.items(), key=lambda item: item[1])))
            if MERGES_TXT in self.side:
                out[MERGES_TXT] = _rewrite_merges_txt(self.side[MERGES_TXT], vocab)
        return out, notes


def _rewrite_merges_txt(lines: list[str], vocab: dict) -> bytes:
    header = [line for line in lines[:1] if line.startswith("#version")]
    body = [line for line in lines[len(header):] if line.strip()]
    pairs = [tuple(line.split(" ", 1)) for line in body]
    kept = [body[index] for index in filter_merge_pairs(pairs, vocab, "")]
    return ("\n".join(header + kept) + "\n").encode("utf-8")


def _token_strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [value["content"]] if isinstance(value.get("content"), str) else [
            s for v in value.values() for s in _token_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _token_strings(v)]
    return []


def _chat_template_text(config: dict) -> str:
    template = config.get("chat_template")
    if isinstance(template, list):
        return "\n".join(t.get("template", "") for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path.name}: cannot read: {e}") from e
