"""tekken.json (Mistral's tiktoken-style byte BPE, read by mistral-common, vLLM and mistral-inference).

Ids: the special tokens first (rank = id, `default_num_special_tokens` of them; a file without a list uses
mistral-common's 20 defaults, and `<SPECIAL_N>` fillers complete it), then the vocabulary, id = rank +
number of specials. Only the first `default_vocab_size - default_num_special_tokens` ranks are tokens of the
model; the rest of `vocab` is cut when the file is loaded. The merges are implicit: encoding merges the
adjacent pair whose concatenation has the lowest rank, so a kept token needs every token that this merge
passes through when it builds the token from its bytes, and the 256 single bytes (ranks 0..255) stay.
Token strings here are byte-level strings (GPT-2's byte -> character table), as in a tokenizer.json made
from the same file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

from surgery.errors import CheckpointError
from surgery.tokenizer.bpe import bytes_to_unicode, merge_closure

TEKKEN_JSON = "tekken.json"
# mistral-common's Tekkenizer.DEPRECATED_SPECIAL_TOKENS: the specials of a file (<= v7) that lists none
DEFAULT_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[TOOL_CONTENT]")
FILLER = "<SPECIAL_{}>"
BYTE_TO_CHAR = bytes_to_unicode()


@dataclass(frozen=True, slots=True)
class TekkenJson:
    name: str
    data: dict
    specials: tuple[dict, ...]  # every special token, fillers included; rank = id
    token_bytes: tuple[bytes, ...]  # the vocabulary tokens of the model, by rank

    @classmethod
    def parse(cls, name: str, text: str) -> TekkenJson:
        try:
            data = json.loads(text)
            config = data["config"]
            n_special = int(config["default_num_special_tokens"])
            n_inner = int(config["default_vocab_size"]) - n_special
            listed = data.get("special_tokens")
            specials = [dict(s) for s in listed] if listed is not None else [
                {"rank": rank, "token_str": token, "is_control": True} for rank, token in enumerate(DEFAULT_SPECIALS)]
            specials += [{"rank": rank, "token_str": FILLER.format(rank), "is_control": True}
                         for rank in range(len(specials), n_special)]
            vocab = data["vocab"][:n_inner]
            token_bytes = tuple(base64.b64decode(entry["token_bytes"]) for entry in vocab)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{name}: not a tekken tokenizer file ({e.__class__.__name__}: {e})") from e
        if [s["rank"] for s in specials] != list(range(n_special)) or len(token_bytes) != n_inner:
            raise CheckpointError(f"{name}: special token ranks are not 0..{n_special - 1}, or the vocabulary has "
                                  f"fewer than {n_inner} tokens")
        if [entry["rank"] for entry in vocab] != list(range(n_inner)) or token_bytes[:256] != tuple(
                bytes([b]) for b in range(256)):
            raise CheckpointError(f"{name}: vocabulary ranks are not 0..{n_inner - 1} starting with the 256 bytes")
        return cls(name, data, tuple(specials), token_bytes)

    @property
    def n_special(self) -> int:
        return len(self.specials)

    def size(self) -> int:
        return self.n_special + len(self.token_bytes)

    def tokens(self) -> list[str]:
        """The string of every id: special token strings, then byte-level strings of the vocabulary."""
        return [s["token_str"] for s in self.specials] + [_byte_level(b) for b in self.token_bytes]

    def special_ids(self) -> set[int]:
        return set(range(self.n_special))

    def byte_ids(self) -> set[int]:
        """The 256 single bytes: without them text outside the kept tokens would be lost."""
        return set(range(self.n_special, self.n_special + 256))

    def closure_builder(self) -> Callable[[set[int]], set[int]]:
        """ids -> the tokens the rank-ordered byte-pair merge passes through when building them."""
        strings = [_byte_level(b) for b in self.token_bytes]
        rank_of = {token: rank for rank, token in enumerate(strings)}
        offset = self.n_special

        def pair_rank(a: str, b: str):
            rank = rank_of.get(a + b)
            return None if rank is None else (rank, a + b)

        def closure(kept: set[int]) -> set[int]:
            tokens = [strings[i - offset] for i in kept if offset <= i < offset + len(strings)]
            return {rank_of[s] + offset for s in merge_closure(tokens, list, pair_rank)}

        return closure

    def rewrite(self, new_id) -> bytes:
        """The file with only the kept ids (new_id(old) >= 0), renumbered; other sections unchanged."""
        specials = [{**s, "rank": new_id(old)} for old, s in enumerate(self.specials) if new_id(old) >= 0]
        vocab = self.data["vocab"]
        kept = [rank for rank in range(len(self.token_bytes)) if new_id(rank + self.n_special) >= 0]
        new_vocab = [{**vocab[rank], "rank": new_rank} for new_rank, rank in enumerate(kept)]
        for new_rank, rank in enumerate(kept):
            if new_id(rank + self.n_special) != new_rank + len(specials):
                raise AssertionError("tekken ids must be the specials first, then the vocabulary")
        config = {**self.data["config"], "num_vocab_tokens": len(new_vocab),
                  "default_vocab_size": len(specials) + len(new_vocab), "default_num_special_tokens": len(specials)}
        data = {**self.data, "config": config, "vocab": new_vocab, "special_tokens": specials}
        return (json.dumps(data, ensure_ascii=False, indent=4) + "\n").encode("utf-8")


def _byte_level(token: bytes) -> str:
    return "".join(BYTE_TO_CHAR[b] for b in token)


def load_check(name: str, raw: bytes, expected_tokens: list[str]) -> None:
    """Reparse a rewritten file and check that each id names the expected token."""
    reparsed = TekkenJson.parse(name, raw.decode("utf-8"))
    got = reparsed.tokens()
    if got != expected_tokens:
        wrong = next(i for i, (a, b) in enumerate(zip(got, expected_tokens)) if a != b) if len(got) == len(
            expected_tokens) else min(len(got), len(expected_tokens))
        raise CheckpointError(f"{name}: rewritten file names the wrong token at id {wrong}")

