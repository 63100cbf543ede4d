"""The tokenizer inside a GGUF file: which ids it needs kept, and its metadata rewritten for the kept ids.

Facts from llama.cpp (src/llama-vocab.cpp, gguf-py/gguf/constants.py; ../shared/GGUF.md). `tokenizer.ggml.model`
`gpt2` is byte-level BPE with `merges` ("a b" strings, rank = index); `llama` is SentencePiece BPE (pieces
merged highest score first, `<0xXX>` byte tokens of type BYTE, which the loader requires). Token types: 1
NORMAL, 2 UNKNOWN, 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, 6 BYTE. The kept-set rules are those of the Hugging
Face side, with the same names; `tokenizer.ggml.pre`, `chat_template` and `general.*` are never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.errors import CheckpointError, InputError
from surgery.formats.gguf import ARRAY, STRING, GgufFile, KeyValue
from surgery.model.keys import LLM, General, Tokenizer, arch_key
from surgery.tokenizer import RESERVED_PATTERNS, RuleAdditions
from surgery.tokenizer.bpe import (
    BYTE_FALLBACK_PIECES,
    BYTE_LEVEL_ALPHABET,
    MergeTable,
    merge_closure,
)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TOKENS, SCORES, TOKEN_TYPE, MERGES = Tokenizer.TOKENS, Tokenizer.SCORES, Tokenizer.TOKEN_TYPE, Tokenizer.MERGES
ID_LISTS = (Tokenizer.SUPPRESS_TOKENS,)  # a removed id is dropped from these
SUPPORTED_MODELS = ("gpt2", "llama")
METASPACE = "\u2581"


@dataclass(frozen=True, slots=True)
class GgufVocab:
    name: str  # the file, for messages
    arch: str
    model: str
    tokens: tuple[str, ...]
    types: np.ndarray  # int32 per id (NORMAL when the file has no token_type)
    scores: np.ndarray | None
    merges: tuple[str, ...] | None
    id_keys: dict[str, object]  # every `*_token_id` (and decoder_start_token_id) key with its value
    template: str
    lookup: dict[str, int]  # token -> its first id
    memo: dict = field(default_factory=dict, repr=False, compare=False)  # tables built once (the closure)

    @classmethod
    def of(cls, gguf: GgufFile) -> GgufVocab:
        name = gguf.path.name
        model = gguf.get(Tokenizer.MODEL)
        tokens = gguf.get(TOKENS)
        if model is None or tokens is None:
            raise CheckpointError(f"{name}: no tokenizer in its metadata ({Tokenizer.MODEL}, {TOKENS})")
        if model not in SUPPORTED_MODELS:
            raise CheckpointError(f"{name}: tokenizer model '{model}' is not supported (supported: "
                                  f"{', '.join(SUPPORTED_MODELS)})")
        n = len(tokens)
        types = gguf.get(TOKEN_TYPE)
        types = np.full(n, NORMAL, np.int32) if types is None else np.asarray(types, np.int32)
        scores = gguf.get(SCORES)
        for key, value in ((TOKEN_TYPE, types), (SCORES, scores)):
            if value is not None and len(value) != n:
                raise CheckpointError(f"{name}: {key} has {len(value)} entries for {n} tokens")
        merges = gguf.get(MERGES)
        id_keys = {kv.key: kv.value for kv in gguf.kvs.values() if _names_ids(kv.key)}
        template = "\n".join(str(kv.value) for kv in gguf.kvs.values() if kv.key.startswith(Tokenizer.CHAT_TEMPLATE)
                             and kv.type == STRING)
        lookup = dict(zip(reversed(tokens), range(n - 1, -1, -1)))  # token -> its first id
        return cls(name, str(gguf.get(General.ARCHITECTURE, "")), model, tuple(tokens), types, scores,
                   tuple(merges) if merges is not None else None, id_keys, template, lookup)

    # ---- the TokenizerFiles protocol that the kept-set rules use -----------------------------------------

    def size(self) -> int:
        return len(self.tokens)

    def token_to_id(self) -> dict[str, int]:
        return self.lookup

    def id_to_token(self) -> dict[int, str]:
        return dict(enumerate(self.tokens))

    def kind(self) -> str:
        return f"GGUF {self.model} ({'byte-level BPE' if self.model == 'gpt2' else 'SentencePiece BPE'})"

    def model_type(self) -> str:
        return "BPE"

    def config(self) -> dict:
        """The id keys as a config document, for the config-id rule and its checks."""
        return dict(self.id_keys)

    def reserved_ids(self) -> set[int]:
        """Reserved placeholders that neither the chat template nor an id key names."""
        named = {v for v in self.id_keys.values() if type(v) is int}
        return {old_id for old_id, token in enumerate(self.tokens)
                if old_id not in named and token not in self.template and any(p.fullmatch(token) for p in RESERVED_PATTERNS)}

    def required_by_rule(self, kept: set[int], *, drop_reserved: bool = False) -> list[tuple[str, set[int]]]:
        rules = RuleAdditions(kept)
        add = rules.add
        specials = set(np.flatnonzero(np.isin(self.types, (UNKNOWN, CONTROL, USER_DEFINED))).tolist())
        if drop_reserved:
            specials -= self.reserved_ids()
        add("special tokens", specials)
        lookup = self.token_to_id()
        add("byte alphabet", {lookup[c] for c in BYTE_LEVEL_ALPHABET if c in lookup} if self.model == "gpt2" else set())
        byte_tokens = set(np.flatnonzero(self.types == BYTE).tolist()) if self.model == "llama" else set()
        add("byte fallback", byte_tokens | ({lookup[p] for p in BYTE_FALLBACK_PIECES if p in lookup}
                                            if self.model == "llama" else set()))
        add("whitespace piece", {lookup[METASPACE]} if self.model == "llama" and METASPACE in lookup else set())
        add("merge closure", self.closure_builder()(rules.kept))
        return rules.rules

    def remember_replays(self) -> None:
        """Keep every token's replay from one closure to the next (a source planned many times); costs memory
        (tens of MB for a 30,000-token closure), so a single plan does not."""
        self.memo.setdefault("replays", {})
        self.memo.pop("closure", None)

    def closure_builder(self) -> Callable[[set[int]], set[int]]:
        """ids -> the ids their merges pass through. After remember_replays, built once and kept with its replays;
        else built per call and let go (a single plan's peak memory does not carry the tables further)."""
        if "closure" in self.memo:
            return self.memo["closure"]
        lookup, tokens, types = self.token_to_id(), self.tokens, self.types.tolist()
        if self.model == "gpt2":
            merges = self.merges or ()  # "a b", as llama.cpp reads them
            pair_rank = MergeTable(dict(zip(merges, range(len(merges)))), " ")
        else:  # a piece merges into the first id of its text when that id is NORMAL or USER_DEFINED
            negated = (-self.scores).tolist() if self.scores is not None else [0.0] * len(tokens)
            ranks = dict(zip(reversed(tokens), reversed(negated)))  # the first id's score
            for old_id in np.flatnonzero(~np.isin(self.types, (NORMAL, USER_DEFINED))).tolist():
                if lookup[tokens[old_id]] == old_id:
                    del ranks[tokens[old_id]]
            pair_rank = MergeTable(ranks, None)

        replays = self.memo.get("replays")  # kept from one call to the next once remember_replays() was called

        def closure(kept: set[int]) -> set[int]:
            words = [tokens[i] for i in kept if 0 <= i < len(tokens) and types[i] == NORMAL]
            return {lookup[s] for s in merge_closure(words, list, pair_rank, replays) if s in lookup}

        if replays is not None:
            self.memo["closure"] = closure
        return closure

    # ---- rewrite ------------------------------------------------------------------------------------------

    def rewrite(self, kvs: list[KeyValue], token_old_ids: np.ndarray, new_rows: int, pad_tokens: list[str]
                ) -> tuple[list[KeyValue], list[str]]:
        """New metadata: token arrays filtered (and padding tokens appended), merges, ids, vocab_size."""
        old_to_new = np.full(len(self.tokens), -1, np.int64)
        old_to_new[token_old_ids] = np.arange(len(token_old_ids))
        new_tokens = [self.tokens[i] for i in token_old_ids] + pad_tokens
        notes: list[str] = []
        out = []
        for kv in kvs:
            kv = KeyValue(kv.key, kv.type, kv.value, kv.subtype)
            if kv.key == TOKENS:
                kv.value = new_tokens
            elif kv.key == SCORES:
                kv.value = np.concatenate([kv.value[token_old_ids], np.zeros(len(pad_tokens), kv.value.dtype)])
            elif kv.key == TOKEN_TYPE:
                kv.value = np.concatenate([kv.value[token_old_ids], np.full(len(pad_tokens), UNUSED, kv.value.dtype)])
            elif kv.key == MERGES:
                kept = kept_merges(kv.value, new_tokens)
                notes.append(f"{MERGES}: {len(kv.value) - len(kept)} merges dropped (an input or result was removed)")
                kv.value = kept
            elif kv.key == Tokenizer.HF_JSON:
                notes.append(f"{Tokenizer.HF_JSON} dropped: it describes the untrimmed vocabulary")
                continue
            elif kv.key == arch_key(LLM.VOCAB_SIZE, self.arch):
                kv.value = new_rows
            elif kv.key in ID_LISTS and kv.type == ARRAY:
                kv.value = np.array([old_to_new[i] for i in kv.value if 0 <= i < len(old_to_new) and old_to_new[i] >= 0],
                                    kv.value.dtype)
            elif _names_ids(kv.key) and kv.type != ARRAY and isinstance(kv.value, int):
                if 0 <= kv.value < len(old_to_new):
                    if old_to_new[kv.value] < 0:
                        raise AssertionError(f"{kv.key} names id {kv.value}, which the plan dropped")
                    kv.value = int(old_to_new[kv.value])
            out.append(kv)
        return out, notes


def _names_ids(key: str) -> bool:
    return ((key.startswith(Tokenizer.ID_PREFIX) and key.endswith(Tokenizer.ID_SUFFIX))
            or key.endswith(Tokenizer.DECODER_START_ID_SUFFIX))


def split_merge(merge: str) -> tuple[str, str] | None:
    """llama.cpp splits a merge at the first space after index 0."""
    split = merge.find(" ", 1)
    return None if split < 0 else (merge[:split], merge[split + 1 :])


def kept_merges(merges: list[str], tokens: list[str]) -> list[str]:
    """The merges whose two inputs and result all stay, in order.

    Found from the kept side: every split of every kept token whose "a b" string is a merge (and splits back to
    a, b by llama.cpp's rule), so the cost follows the kept tokens, not the 150k merges.
    """
    rank_of = dict(zip(merges, range(len(merges))))
    kept_set = set(tokens)
    ranks = set()
    for token in kept_set:
        for cut in range(1, len(token)):
            a, b = token[:cut], token[cut:]
            if a in kept_set and b in kept_set:
                merge = a + " " + b
                rank = rank_of.get(merge)
                if rank is not None and split_merge(merge) == (a, b):
                    ranks.add(rank)
    return [merges[rank] for rank in sorted(ranks)]


def pad_token_names(tokens: set[str], count: int, start: int) -> list[str]:
    """`[PAD{id}]` names for padding rows (as llama.cpp's converter writes them), never clashing with a token."""
    names = []
    candidate = start
    while len(names) < count:
        name = f"[PAD{candidate}]"
        if name not in tokens:
            names.append(name)
        candidate += 1
    return names



def hf_encoder(vocab: GgufVocab, gguf: GgufFile, tokenizer_dir: Path | None):
    """A batch encoder for `keep` on a GGUF file: the tokenizer.json embedded in it, or the one in tokenizer_dir,
    accepted only if it names the same token at every id (extra GGUF ids, such as [PAD] rows, may follow)."""
    import tokenizers

    if tokenizer_dir is not None:
        where = tokenizer_dir / "tokenizer.json"
        if not where.exists():
            raise InputError(f"--tokenizer {tokenizer_dir}: no tokenizer.json there")
        tokenizer = tokenizers.Tokenizer.from_file(str(where))
    elif gguf.get(Tokenizer.HF_JSON) is not None:
        where = Path(f"{vocab.name}:{Tokenizer.HF_JSON}")
        tokenizer = tokenizers.Tokenizer.from_str(gguf.get(Tokenizer.HF_JSON))
    else:
        raise InputError(f"{vocab.name}: keep needs a tokenizer to encode text; this GGUF embeds none "
                         f"({Tokenizer.HF_JSON})", hint="give the Hugging Face tokenizer of the same model: --tokenizer DIR")
    hf_vocab = tokenizer.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in hf_vocab.items()}
    if max(by_id, default=-1) >= vocab.size():
        raise InputError(f"{where}: has {max(by_id) + 1} ids, the GGUF only {vocab.size()}; not the same vocabulary")
    wrong = [i for i, token in by_id.items() if vocab.tokens[i] != token]
    if wrong:
        raise InputError(f"{where}: id {wrong[0]} is {by_id[wrong[0]]!r} but the GGUF has {vocab.tokens[wrong[0]]!r} "
                         f"({len(wrong)} ids differ); not the same vocabulary")
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return lambda docs: [e.ids for e in encode(docs, add_special_tokens=False)]
