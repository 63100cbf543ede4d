"""The tokenizer files of a checkpoint, taken together: which ids they need kept, and their rewrite.

tokenizer.json (when present) is the authority for ids; a SentencePiece model beside it is matched to it by
piece string, which also covers the fairseq layout (XLM-R, mBART: model id = piece id + 1). Mistral folders
hold a second layout beside the Hugging Face one: `tokenizer.model.v3`/`.v7` SentencePiece copies (rewritten
like tokenizer.model) and `tekken.json` (checked id by id against tokenizer.json, rewritten with it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.errors import CheckpointError
from surgery.formats.hf_folder import dump_json, load_json
from surgery.tokenizer.hf_json import HfTokenizerJson, filter_merge_pairs
from surgery.tokenizer.sp_model import NORMAL, SpModel, load_check
from surgery.tokenizer.tekken import TEKKEN_JSON, TekkenJson
from surgery.tokenizer.tekken import load_check as tekken_load_check

TOKENIZER_JSON = "tokenizer.json"
SP_MODEL_NAMES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model")
SP_VERSIONED_GLOB = "tokenizer.model.v*"  # mistral: tokenizer.model.v3, .v7 (mistral-common and vLLM read these)
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
ADDED_TOKENS_JSON = "added_tokens.json"
VOCAB_TXT = "vocab.txt"
VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # transformers v5 writes templates apart
# Reserved placeholder tokens: special tokens that exist only to be fine-tuned into later. One pattern per
# family; a token matching one is a placeholder only if no template, config or post-processor names it.
RESERVED_PATTERNS = (
    re.compile(r"<unused\d+>"),  # gemma 1/2/3
    re.compile(r"<\|reserved_special_token_\d+\|>"),  # llama-3
    re.compile(r"<SPECIAL_\d+>"),  # mistral tekken fillers
    re.compile(r"<\|dummy_\d+\|>"),  # phi-4
    re.compile(r"<｜place▁holder▁no▁\d+｜>"),  # deepseek-v3
)
NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
LIST_SPECIALS = ("additional_special_tokens", "extra_special_tokens")


@dataclass(frozen=True, slots=True)
class TokenizerFiles:
    root: Path
    hf: HfTokenizerJson | None
    sp: SpModel | None
    sp_name: str | None
    side: dict = field(default_factory=dict)  # file name -> parsed content of the small side files
    tekken: TekkenJson | None = None
    sp_copies: tuple[SpModel, ...] = ()  # further SentencePiece files with the same pieces (tokenizer.model.v3)
    memo: dict = field(default_factory=dict, repr=False, compare=False)  # id maps, computed once (read-only)

    @classmethod
    def load(cls, root: Path) -> TokenizerFiles:
        """Read every tokenizer file present; refuse a checkpoint whose tokenizer we cannot rewrite."""
        hf = None
        if (root / TOKENIZER_JSON).exists():
            hf = HfTokenizerJson.parse(TOKENIZER_JSON, _read_text(root / TOKENIZER_JSON))
            hf.check_layout()
        sp_names = [n for n in SP_MODEL_NAMES if (root / n).exists()]
        sp_names += sorted(p.name for p in root.glob(SP_VERSIONED_GLOB) if p.is_file())
        sp_models = [SpModel.parse(name, (root / name).read_bytes()) for name in sp_names]
        sp, sp_name = (sp_models[0], sp_names[0]) if sp_models else (None, None)
        for copy in sp_models[1:]:
            if copy.pieces() != sp.pieces():
                raise CheckpointError(f"{copy.name}: its pieces differ from {sp_name}; cannot rewrite both consistently")
        tekken = None
        if (root / TEKKEN_JSON).exists():
            tekken = TekkenJson.parse(TEKKEN_JSON, _read_text(root / TEKKEN_JSON))
            if hf is None and sp is not None:
                raise CheckpointError(f"{root}: {TEKKEN_JSON} and {sp_name} but no {TOKENIZER_JSON} to say which ids "
                                      "are right")
        if hf is None and sp is None and tekken is None:
            slow = [n for n in (VOCAB_TXT, VOCAB_JSON, "tokenizer.tiktoken", "qwen.tiktoken")
                    if (root / n).exists()]
            what = f"only {', '.join(slow)}, which surgery does not rewrite alone" if slow else "no tokenizer"
            raise CheckpointError(
                f"{root}: {what}; need {TOKENIZER_JSON}, {TEKKEN_JSON} or a SentencePiece model "
                f"({', '.join(SP_MODEL_NAMES)})",
                hint="save the tokenizer with a fast tokenizer (tokenizer.save_pretrained) to get tokenizer.json",
            )
        side = {}
        for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, ADDED_TOKENS_JSON, VOCAB_JSON):
            if (root / name).exists():
                side[name] = load_json(root / name)
        for name in (VOCAB_TXT, MERGES_TXT, *CHAT_TEMPLATE_FILES):
            if (root / name).exists():
                side[name] = _read_text(root / name).split("\n")
        files = cls(root, hf, sp, sp_name, side, tekken, tuple(sp_models[1:]))
        files.piece_to_model_id()  # validates that the SentencePiece model agrees with tokenizer.json
        if tekken is not None and hf is not None:
            _check_tekken_matches(tekken, hf)
        return files

    # ---- ids ----------------------------------------------------------------------------------------

    def token_to_id(self) -> dict[str, int]:
        """token -> old id (computed once; do not modify the dict returned)."""
        if "token_to_id" not in self.memo:
            self.memo["token_to_id"] = self._token_to_id()
        return self.memo["token_to_id"]

    def _token_to_id(self) -> dict[str, int]:
        if self.hf is not None:
            return self.hf.token_to_id()
        if self.tekken is not None:
            return {token: old_id for old_id, token in enumerate(self.tekken.tokens())}
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
        if "size" not in self.memo:
            self.memo["size"] = max(self.token_to_id().values()) + 1
        return self.memo["size"]

    def id_to_token(self) -> dict[int, str]:
        """old id -> token (computed once; do not modify the dict returned)."""
        if "id_to_token" not in self.memo:
            self.memo["id_to_token"] = {old_id: token for token, old_id in self.token_to_id().items()}
        return self.memo["id_to_token"]

    def kind(self) -> str:
        if self.hf is not None:
            extra = " byte-level" if self.hf.is_byte_level() else ""
            extra += " byte_fallback" if self.hf.model.get("byte_fallback") else ""
            extra += f" (+ {TEKKEN_JSON})" if self.tekken is not None else ""
            return f"tokenizer.json {self.hf.kind}{extra}"
        if self.tekken is not None:
            return f"{TEKKEN_JSON} byte-level BPE"
        return f"SentencePiece {self.model_type()}"

    def model_type(self) -> str:
        """BPE, Unigram, WordPiece or WordLevel: tokenizer.json's model, else the SentencePiece one."""
        if self.hf is not None:
            return self.hf.kind
        if self.tekken is not None:
            return "BPE"
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

    def reserved_ids(self) -> set[int]:
        """Reserved placeholders (<unusedN>, <|reserved_special_token_N|> ...) that nothing names: no chat
        template, tokenizer_config entry, post-processor, padding or unk. Config ids are kept by their own rule."""
        named = self.named_special_ids()
        if self.hf is not None:
            named |= self.hf.named_ids()
        return {old_id for token, old_id in self.token_to_id().items()
                if old_id not in named and any(p.fullmatch(token) for p in RESERVED_PATTERNS)}

    def required_by_rule(self, kept: set[int], *, drop_reserved: bool = False) -> list[tuple[str, set[int]]]:
        """Ids the tokenizer needs beside `kept`, rule by rule, each set disjoint from what came before.

        With drop_reserved, unnamed reserved placeholders are not kept as special tokens."""
        rules = RuleAdditions(kept)
        add = rules.add
        piece_ids = self.piece_to_model_id()
        specials = self.named_special_ids()
        if self.hf is not None:
            specials |= self.hf.special_ids()
        if self.sp is not None:
            specials |= {piece_ids[index] for index in self.sp.special_pieces()}
        if self.tekken is not None:
            specials |= self.tekken.special_ids()
        if drop_reserved:
            specials -= self.reserved_ids()
        add("special tokens", specials)
        add("byte alphabet", (self.hf.byte_alphabet_ids() if self.hf else set())
            | (self.tekken.byte_ids() if self.tekken else set()))
        fallback = self.hf.byte_fallback_ids() if self.hf else set()
        if self.sp is not None:
            fallback |= {piece_ids[index] for index in self.sp.byte_pieces()}
        add("byte fallback", fallback)
        whitespace = self.hf.whitespace_ids() if self.hf else set()
        if self.sp is not None:
            whitespace |= {piece_ids[index] for index in self.sp.whitespace_pieces()}
        add("whitespace piece", whitespace)
        add("unigram characters and lowest piece" if self.model_type() == "Unigram" else "merge closure",
            self.closure_builder()(rules.kept))
        return rules.rules

    def remember_replays(self) -> None:
        """Keep every token's replay from one closure to the next (a source planned many times); costs memory
        (tens of MB for a 30,000-token closure), so a single plan does not."""
        self.memo.setdefault("replays", {"hf": {}, "sp": {}})
        self.memo.pop("closure", None)

    def closure_builder(self):
        """ids -> the ids the tokenizer's merges or Unigram pieces need for them; a union over members. After
        remember_replays, built once and kept with its replays; else built per call and let go (a single plan's
        peak memory does not carry the tables into the rewrite)."""
        if "replays" not in self.memo:
            return self._closure_builder()
        if "closure" not in self.memo:
            self.memo["closure"] = self._closure_builder()
        return self.memo["closure"]

    def _closure_builder(self):
        replays = self.memo.get("replays") or {}
        hf_closure = self.hf.closure_builder(replays.get("hf")) if self.hf is not None else (lambda kept: set())
        if self.tekken is not None:  # tokenizer.json's merges and tekken's ranks: keep what either needs
            tekken_closure = self.tekken.closure_builder()
            return lambda kept: hf_closure(kept) | tekken_closure(kept)
        if self.sp is None:
            return hf_closure
        piece_ids = self.piece_to_model_id()
        model_to_piece = {model_id: index for index, model_id in enumerate(piece_ids)}
        sp_closure = self.sp.closure_builder(replays.get("sp"))

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
            for model in (self.sp, *self.sp_copies):
                raw = model.rewrite(kept_pieces)
                load_check(model.name, raw)
                out[model.name] = raw
        if self.tekken is not None:
            raw = self.tekken.rewrite(new_id)
            old_tokens = self.tekken.tokens()
            new_order = sorted((new_id(old), old) for old in range(self.tekken.size()) if new_id(old) >= 0)
            tekken_load_check(TEKKEN_JSON, raw, [old_tokens[old] for _, old in new_order])
            out[TEKKEN_JSON] = raw
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


class RuleAdditions:
    """The ids each kept-set rule adds, in rule order, each set disjoint from what came before."""

    def __init__(self, kept: set[int]) -> None:
        self.kept = set(kept)
        self.rules: list[tuple[str, set[int]]] = []

    def add(self, rule: str, ids: set[int]) -> None:
        new = set(ids) - self.kept
        self.kept.update(new)
        self.rules.append((rule, new))


def _check_tekken_matches(tekken: TekkenJson, hf: HfTokenizerJson) -> None:
    """tekken.json and tokenizer.json must name the same token at every id, or neither can be trusted."""
    hf_tokens = {old_id: token for token, old_id in hf.token_to_id().items()}
    if hf.size() != tekken.size():
        raise CheckpointError(f"{TEKKEN_JSON}: {tekken.size()} ids but {TOKENIZER_JSON} has {hf.size()}; the two "
                              "tokenizer files disagree")
    for old_id, token in enumerate(tekken.tokens()):
        if hf_tokens.get(old_id) != token:
            raise CheckpointError(f"{TEKKEN_JSON}: id {old_id} is {token!r} but {TOKENIZER_JSON} has "
                                  f"{hf_tokens.get(old_id)!r}; the two tokenizer files disagree")


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
