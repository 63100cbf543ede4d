"""SentencePiece ModelProto rewrites, loaded back by sentencepiece itself."""

from __future__ import annotations

import sentencepiece
from conftest import TOKENIZERS, corpus_lines
from sentencepiece import sentencepiece_model_pb2

from surgery.tokenizer.sp_model import BYTE, CONTROL, UNKNOWN, SpModel


def load(kind: str, name: str) -> SpModel:
    return SpModel.parse(name, (TOKENIZERS / kind / name).read_bytes())


def test_byte_fallback_model_keeps_its_256_bytes_and_ids():
    model = load("sp-bpe-llama", "tokenizer.model")
    assert len(model.byte_pieces()) == 256
    specials = model.special_pieces()
    kept = sorted(specials | model.byte_pieces() | model.whitespace_pieces() | {300, 400})
    kept = sorted(set(kept) | model.closure_pieces(set(kept)))
    raw = model.rewrite(kept)
    processor = sentencepiece.SentencePieceProcessor(model_proto=raw)
    assert processor.get_piece_size() == len(kept)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(raw)
    assert proto.trainer_spec.vocab_size == len(kept)
    assert processor.id_to_piece(proto.trainer_spec.unk_id) == "<unk>"
    assert processor.id_to_piece(proto.trainer_spec.eos_id) == "</s>"
    # out-of-domain text still round-trips through byte fallback
    original = sentencepiece.SentencePieceProcessor(model_proto=model.proto.SerializeToString())
    for line in corpus_lines("ood.txt") + corpus_lines("heldout.txt")[:50]:
        assert processor.decode(processor.encode(line)) == original.decode(original.encode(line))
    # the pitfall: without the "▁" piece a space decodes as a literal "▁"
    without = sentencepiece.SentencePieceProcessor(model_proto=model.rewrite(
        [i for i in kept if i not in model.whitespace_pieces()]))
    assert without.decode(without.encode("a b")) != "a b"


def test_bpe_closure_replays_scores():
    model = load("sp-bpe-llama", "tokenizer.model")
    pieces = model.pieces()
    longest = max((i for i, p in enumerate(model.proto.pieces) if p.type == 1), key=lambda i: len(pieces[i]))
    closure = model.closure_pieces({longest})
    assert longest in closure and len(closure) >= len(pieces[longest])
    kept = sorted(model.special_pieces() | model.byte_pieces() | closure)
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.rewrite(kept))
    text = pieces[longest].replace("▁", " ").strip()
    original = sentencepiece.SentencePieceProcessor(model_proto=model.proto.SerializeToString())
    if original.encode(text, out_type=str) == [pieces[longest]]:
        assert processor.encode(text, out_type=str) == [pieces[longest]]


def test_unigram_support_and_removed_ids():
    model = load("sp-unigram-t5", "spiece.model")
    types = model.types()
    assert {types[i] for i in model.special_pieces()} <= {UNKNOWN, CONTROL}
    target = next(i for i, p in enumerate(model.pieces()) if len(p) >= 4 and types[i] == 1)
    support = model.closure_pieces({target})
    assert all(model.pieces()[i] in model.pieces()[target] or model.proto.pieces[i].score == min(
        p.score for p in model.proto.pieces if p.type == 1) for i in support)
    kept = sorted({target} | support | model.special_pieces())
    raw = model.rewrite(kept)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(raw)
    assert proto.trainer_spec.bos_id == -1  # T5 has no bos; stays -1
    assert sentencepiece.SentencePieceProcessor(model_proto=raw).get_piece_size() == len(kept)
    assert BYTE not in {p.type for p in proto.pieces}
