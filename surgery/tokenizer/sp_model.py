"""SentencePiece ModelProto files (tokenizer.model, spiece.model, sentencepiece.bpe.model).

Piece order is the piece id. Types: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6
(sentencepiece_model.proto). Model types: UNIGRAM 1, BPE 2, WORD 3, CHAR 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from surgery.errors import CheckpointError
from surgery.tokenizer.bpe import MergeTable, merge_closure

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2


def _pb2():
    # imported lazily: protobuf is only needed when a checkpoint carries a SentencePiece model
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2


@dataclass(frozen=True, slots=True)
class SpModel:
    name: str
    proto: object  # sentencepiece_model_pb2.ModelProto

    @classmethod
    def parse(cls, name: str, raw: bytes) -> SpModel:
        proto = _pb2().ModelProto()
        try:
            proto.ParseFromString(raw)
        except Exception as e:  # protobuf raises DecodeError, or RuntimeError in its C++ backend
            raise CheckpointError(f"{name}: not a SentencePiece model ({e.__class__.__name__})") from e
        if not proto.pieces:
            raise CheckpointError(f"{name}: not a SentencePiece model (no pieces)")
        if proto.trainer_spec.model_type not in (UNIGRAM, BPE):
            raise CheckpointError(f"{name}: SentencePiece model type {proto.trainer_spec.model_type} is not supported "
                                  "(supported: UNIGRAM, BPE)")
        return cls(name, proto)

    def pieces(self) -> list[str]:
        return [p.piece for p in self.proto.pieces]

    def types(self) -> list[int]:
        return [p.type for p in self.proto.pieces]

    def special_pieces(self) -> set[int]:
        """UNKNOWN and CONTROL pieces (unk, bos, eos, pad): loading and encoding depend on them."""
        return {index for index, kind in enumerate(self.types()) if kind in (UNKNOWN, CONTROL)}

    def byte_pieces(self) -> set[int]:
        """With byte_fallback, SentencePiece refuses to load a model with fewer than 256 byte pieces."""
        if not self.proto.trainer_spec.byte_fallback:
            return set()
        return {index for index, kind in enumerate(self.types()) if kind == BYTE}

    def whitespace_pieces(self) -> set[int]:
        """The "▁" piece: without it a space becomes the bytes of U+2581 and decodes as a literal "▁"."""
        return {index for index, p in enumerate(self.proto.pieces) if p.piece == "\u2581" and p.type == NORMAL}

    def closure_pieces(self, kept: set[int]) -> set[int]:
        """BPE: intermediates by the score rule. Unigram: single characters of kept pieces + lowest NORMAL piece."""
        return self.closure_builder()(kept)

    def closure_builder(self, replays: dict | None = None) -> Callable[[set[int]], set[int]]:
        """closure_pieces with its tables built once; the result for a set is the union over its members."""
        pieces = self.proto.pieces
        index_of = {p.piece: index for index, p in enumerate(pieces) if p.type in (NORMAL, USER_DEFINED)}
        if self.proto.trainer_spec.model_type == BPE:
            pair_rank = MergeTable({text: -pieces[index].score for text, index in index_of.items()}, None)

            def closure(kept: set[int]) -> set[int]:
                tokens = [pieces[index].piece for index in kept if pieces[index].type == NORMAL]
                return {index_of[s] for s in merge_closure(tokens, list, pair_rank, replays) if s in index_of}

            return closure
        normal = [index for index, p in enumerate(pieces) if p.type == NORMAL]
        # the unk penalty is min_score - 10 over NORMAL pieces (unigram_model.cc)
        lowest = {min(normal, key=lambda index: pieces[index].score)} if normal else set()

        def support(kept: set[int]) -> set[int]:
            needed = set(lowest)
            for index in kept:
                if pieces[index].type == NORMAL:
                    needed.update(index_of[ch] for ch in pieces[index].piece if ch in index_of)
            return needed

        return support

    def rewrite(self, kept_pieces: list[int]) -> bytes:
        """A new ModelProto with only `kept_pieces` (sorted), trainer_spec ids and vocab_size updated."""
        proto = _pb2().ModelProto()
        proto.CopyFrom(self.proto)
        old_pieces = [p.piece for p in self.proto.pieces]
        del proto.pieces[:]
        proto.pieces.extend([self.proto.pieces[index] for index in kept_pieces])
        new_index = {old_pieces[index]: new for new, index in enumerate(kept_pieces)}
        spec = proto.trainer_spec
        spec.vocab_size = len(kept_pieces)
        for field in ("unk_id", "bos_id", "eos_id", "pad_id"):
            old = getattr(spec, field)
            if 0 <= old < len(old_pieces):
                setattr(spec, field, new_index.get(old_pieces[old], -1))
        if "self_test_data" in [f.name for f in proto.DESCRIPTOR.fields]:
            proto.ClearField("self_test_data")
        proto.DiscardUnknownFields()  # an undeclared self_test_data would be re-checked by some loaders
        return proto.SerializeToString()


def load_check(name: str, raw: bytes) -> int:
    """Load with sentencepiece itself; return its piece count."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(raw)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own text
        raise CheckpointError(f"{name}: SentencePiece cannot load it: {e}") from e
    return processor.get_piece_size()
