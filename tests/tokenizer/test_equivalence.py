"""The promise, checked on every fixture tokenizer with the real libraries.

For each kind: trim to the tokens of some in-domain text, then (1) every new id names its old token,
(2) every held-back line whose original ids are all kept encodes to the mapped ids, (3) out-of-domain text
decodes the same where bytes are kept, (4) SentencePiece models agree with their tokenizer.json.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from conftest import corpus_lines, run_cli, tokenizer_checkpoint, write_keep

from surgery.tokenizer.hf_json import HfTokenizerJson

KINDS = ["bpe-bytelevel-gpt2", "bpe-bytelevel-llama3", "sp-bpe-llama", "wordpiece-bert", "unigram-hf",
         "wordlevel", "sp-unigram-t5", "sp-unigram-xlmr"]
# kinds that can encode any text without an unknown token: decoding must survive trimming
LOSSLESS = {"bpe-bytelevel-gpt2", "bpe-bytelevel-llama3", "sp-bpe-llama"}
SP_FILES = {"sp-bpe-llama": "tokenizer.model", "sp-unigram-t5": "spiece.model",
            "sp-unigram-xlmr": "sentencepiece.bpe.model"}


def domain_keep_ids(tok: tokenizers.Tokenizer, lines: list[str], share: float = 0.5) -> list[int]:
    """The most frequent tokens of some in-domain lines, half the vocabulary: a lossy keep list."""
    counts = Counter(i for enc in tok.encode_batch(lines, add_special_tokens=False) for i in enc.ids)
    return [i for i, _ in counts.most_common(int(tok.get_vocab_size(with_added_tokens=True) * share))]


def heldout_segments() -> list[str]:
    """Held-back lines and every 3-word window of them: many short texts, so many are fully kept."""
    lines = corpus_lines("heldout.txt")
    windows = [" ".join(words[i : i + 3]) for line in lines for words in [line.split()] for i in range(len(words) - 2)]
    return lines + windows


def trim_tokenizer(kind: str, tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    src = tokenizer_checkpoint(kind, tmp_path / "src")
    original = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    keep = write_keep(tmp_path / "ids.txt", domain_keep_ids(original, corpus_lines("train.txt")[:300]))
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", keep, "-o", out, "-q"])
    old_ids = np.array(__import__("json").loads((out / "surgery_trim.json").read_text())["old_ids"])
    return src, out, old_ids


def equivalence(original, trimmed, old_ids: np.ndarray, lines: list[str]) -> tuple[int, int]:
    """(lines compared, lines that differ) over lines whose original ids, specials included, are all kept."""
    old_to_new = {int(old): new for new, old in enumerate(old_ids)}
    compared = differ = 0
    for line in lines:
        ids = original.encode(line).ids
        if all(i in old_to_new for i in ids):
            compared += 1
            differ += trimmed.encode(line).ids != [old_to_new[i] for i in ids]
    return compared, differ


@pytest.mark.parametrize("kind", KINDS)
def test_trimmed_tokenizer_keeps_the_promise(kind, tmp_path):
    src, out, old_ids = trim_tokenizer(kind, tmp_path)
    original = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    trimmed = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert trimmed.get_vocab_size(with_added_tokens=True) == len(old_ids) < original.get_vocab_size(True)
    # layout: dense, original order, each new id names its old token
    assert list(old_ids) == sorted(old_ids)
    assert [trimmed.id_to_token(new) for new in range(len(old_ids))] == [original.id_to_token(int(o)) for o in old_ids]
    # corpus: held-back lines (never used to choose the keep list)
    compared, differ = equivalence(original, trimmed, old_ids, heldout_segments())
    assert compared >= 300, f"only {compared} held-back texts fully kept: the test would prove little"
    assert differ == 0, f"{differ} of {compared} held-back lines encode differently"
    # single tokens: each kept token that encodes to itself still does
    for new_id, old_id in enumerate(old_ids):
        text = original.decode([int(old_id)], skip_special_tokens=False)
        if original.encode(text, add_special_tokens=False).ids == [int(old_id)]:
            assert trimmed.encode(text, add_special_tokens=False).ids == [new_id], text
    if kind in LOSSLESS:
        for line in corpus_lines("ood.txt") + corpus_lines("heldout.txt"):
            assert trimmed.decode(trimmed.encode(line).ids) == original.decode(original.encode(line).ids), line


@pytest.mark.parametrize("kind", sorted(SP_FILES))
def test_sentencepiece_model_agrees_with_tokenizer_json(kind, tmp_path):
    import sentencepiece

    src, out, old_ids = trim_tokenizer(kind, tmp_path)
    name = SP_FILES[kind]
    original = sentencepiece.SentencePieceProcessor(model_file=str(src / name))
    trimmed = sentencepiece.SentencePieceProcessor(model_file=str(out / name))
    trimmed_json = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    # every kept piece keeps its model id relation (offset 1 for the fairseq layout of XLM-R)
    offset = 1 if kind == "sp-unigram-xlmr" else 0
    for piece_id in range(trimmed.get_piece_size()):
        piece = trimmed.id_to_piece(piece_id)
        if not trimmed.is_control(piece_id) and not trimmed.is_unknown(piece_id):
            assert trimmed_json.token_to_id(piece) == piece_id + offset, piece
    # sentencepiece's own encoder agrees on held-back lines whose pieces are all kept
    kept_pieces = {trimmed.id_to_piece(i) for i in range(trimmed.get_piece_size())}
    compared = 0
    for line in heldout_segments():
        pieces = original.encode(line, out_type=str)
        if all(p in kept_pieces for p in pieces):
            compared += 1
            assert trimmed.encode(line, out_type=str) == pieces, line
    assert compared >= 300
    if original.GetPieceSize() and original.IdToPiece(0) and kind == "sp-bpe-llama":  # byte fallback: lossless
        for line in corpus_lines("ood.txt"):
            assert trimmed.decode(trimmed.encode(line)) == original.decode(original.encode(line)), line


SLOW_CLASSES = {"sp-bpe-llama", "sp-unigram-t5", "sp-unigram-xlmr", "wordpiece-bert", "bpe-bytelevel-gpt2"}


@pytest.mark.parametrize("kind,use_fast", [(k, True) for k in KINDS] + [(k, False) for k in sorted(SLOW_CLASSES)])
def test_transformers_autotokenizer_loads_and_agrees(kind, use_fast, tmp_path):
    from transformers import AutoTokenizer

    src, out, old_ids = trim_tokenizer(kind, tmp_path)
    original = AutoTokenizer.from_pretrained(src, use_fast=use_fast)
    trimmed = AutoTokenizer.from_pretrained(out, use_fast=use_fast)
    assert len(trimmed) == len(old_ids)
    old_to_new = {int(old): new for new, old in enumerate(old_ids)}
    compared = 0
    for line in heldout_segments():
        ids = original(line).input_ids
        if all(i in old_to_new for i in ids):
            compared += 1
            assert trimmed(line).input_ids == [old_to_new[i] for i in ids], line
    assert compared >= 300
    for name in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        old = getattr(original, name)
        if old is not None:
            assert getattr(trimmed, name) == old_to_new[old], name


# ---- the pitfalls of ../shared/TOKENIZERS.md: without each safeguard, these checks must fail ----------

def test_without_merge_closure_kept_text_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(HfTokenizerJson, "closure_builder", lambda self, replays=None: (lambda kept: set()))
    src, out, old_ids = trim_tokenizer("bpe-bytelevel-gpt2", tmp_path)
    original = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    trimmed = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    compared, differ = equivalence(original, trimmed, old_ids, heldout_segments())
    assert differ > compared // 4, (differ, compared)


def test_without_byte_alphabet_out_of_domain_text_is_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(HfTokenizerJson, "byte_alphabet_ids", lambda self: set())
    src, out, _ = trim_tokenizer("bpe-bytelevel-gpt2", tmp_path)
    original = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    trimmed = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    lost = [line for line in corpus_lines("ood.txt")
            if trimmed.decode(trimmed.encode(line).ids) != original.decode(original.encode(line).ids)]
    assert lost


def test_added_tokens_follow_the_model_vocab(tmp_path):
    """Added-only tokens must come after the model vocab, or the library renumbers them silently."""
    src, out, old_ids = trim_tokenizer("bpe-bytelevel-llama3", tmp_path)
    import json

    data = json.loads((out / "tokenizer.json").read_text())
    n_model = len(data["model"]["vocab"])
    added_only = [a for a in data["added_tokens"] if a["content"] not in data["model"]["vocab"]]
    assert added_only and [a["id"] for a in added_only] == list(range(n_model, n_model + len(added_only)))
    trimmed = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    for added in added_only:
        assert trimmed.token_to_id(added["content"]) == added["id"]


@pytest.mark.parametrize("kind", sorted(LOSSLESS))
def test_a_tiny_keep_list_still_round_trips_any_text(kind, tmp_path):
    """Keep almost nothing: every text must still decode to what the original decodes (bytes are kept)."""
    src = tokenizer_checkpoint(kind, tmp_path / "src")
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", write_keep(tmp_path / "ids.txt", [300, 301, 302]), "-o", out, "-q"])
    original = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    trimmed = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert trimmed.get_vocab_size(True) < 300
    for line in corpus_lines("ood.txt") + corpus_lines("heldout.txt")[:100]:
        assert trimmed.decode(trimmed.encode(line).ids) == original.decode(original.encode(line).ids), line


def test_without_whitespace_piece_spaces_decode_as_a_literal_mark(tmp_path, monkeypatch):
    from surgery.tokenizer.sp_model import SpModel

    monkeypatch.setattr(HfTokenizerJson, "whitespace_ids", lambda self: set())
    monkeypatch.setattr(SpModel, "whitespace_pieces", lambda self: set())
    src = tokenizer_checkpoint("sp-bpe-llama", tmp_path / "src")
    vocab = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab()
    inner = sorted(i for t, i in vocab.items() if "\u2581" not in t and len(t) == 2)[:3]  # no word-initial pieces
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", write_keep(tmp_path / "ids.txt", inner), "-o", out, "-q"])
    trimmed = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert "\u2581" in trimmed.decode(trimmed.encode("a b c").ids)


@pytest.mark.parametrize("kind", ["sp-bpe-llama", "sp-unigram-t5"])
def test_sentencepiece_only_checkpoint(kind, tmp_path):
    """No tokenizer.json: the SentencePiece model alone is the authority (T5 sentinels from extra_ids)."""
    import json

    import sentencepiece
    from transformers import AutoTokenizer

    src = tokenizer_checkpoint(kind, tmp_path / "src")
    (src / "tokenizer.json").unlink()
    name = SP_FILES[kind]
    original = sentencepiece.SentencePieceProcessor(model_file=str(src / name))
    ids = [i for enc in original.encode(corpus_lines("train.txt")[:300]) for i in enc]
    keep = write_keep(tmp_path / "ids.txt", [i for i, _ in Counter(ids).most_common(original.get_piece_size() // 2)])
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", keep, "-o", out, "-q"])
    old_ids = json.loads((out / "surgery_trim.json").read_text())["old_ids"]
    old_to_new = {old: new for new, old in enumerate(old_ids)}
    trimmed = sentencepiece.SentencePieceProcessor(model_file=str(out / name))
    compared = 0
    for text in heldout_segments():
        old = original.encode(text)
        if all(i in old_to_new for i in old):
            compared += 1
            assert trimmed.encode(text) == [old_to_new[i] for i in old], text
    assert compared >= 300
    hf_original, hf_trimmed = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    if kind == "sp-unigram-t5":
        assert hf_trimmed.convert_tokens_to_ids("<extra_id_0>") == old_to_new[hf_original.convert_tokens_to_ids("<extra_id_0>")]
    for text in heldout_segments()[:400]:
        old = hf_original(text).input_ids
        if all(i in old_to_new for i in old):
            assert hf_trimmed(text).input_ids == [old_to_new[i] for i in old], text
