"""The GGUF vocabulary tensors: the name table, the multi-token-prediction tables, and the no-guessing guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgery.errors import CheckpointError
from surgery.gguf_io import GgufFile, GgufTensor
from surgery.gguf_trim import default_output, find_gguf_vocab_tensors
from surgery.vocab_tensors import Role

V, E = 800, 256


def gguf(*tensors: tuple[str, tuple[int, ...]]) -> GgufFile:
    return GgufFile(Path("m.gguf"), 3, {}, [GgufTensor(name, 0, ne, Path("m.gguf"), 0, 4) for name, ne in tensors], 32)


def test_name_table_with_mtp_tables():
    found = find_gguf_vocab_tensors([gguf(("token_embd.weight", (E, V)), ("output.weight", (E, V)),
                                          ("blk.2.nextn.embed_tokens.weight", (E, V)),
                                          ("blk.2.nextn.shared_head_head.weight", (E, V)),
                                          ("blk.2.nextn.eh_proj.weight", (2 * E, E)))], V)
    assert found == {"token_embd.weight": Role.EMBED, "output.weight": Role.HEAD,
                     "blk.2.nextn.embed_tokens.weight": Role.EMBED, "blk.2.nextn.shared_head_head.weight": Role.HEAD}


def test_stray_vocab_dimension_is_refused_until_settled():
    parts = [gguf(("token_embd.weight", (E, V)), ("mtp.new_head.weight", (E, V)), ("blk.0.ffn_up.weight", (E, 512)))]
    with pytest.raises(CheckpointError) as info:
        find_gguf_vocab_tensors(parts, V)
    assert str(info.value) == ("1 tensor(s) outside the vocabulary tensors have a dimension of the vocabulary's "
                               "length 800: 'mtp.new_head.weight' [256, 800]")
    assert "--vocab-tensor mtp.new_head.weight" in info.value.hint and "--not-vocab-tensor" in info.value.hint
    assert find_gguf_vocab_tensors(parts, V, named=("mtp.new_head.weight",))["mtp.new_head.weight"] is Role.HEAD
    assert "mtp.new_head.weight" not in find_gguf_vocab_tensors(parts, V, not_vocab=("mtp.*",))


def test_a_vocab_table_of_the_wrong_length_is_refused():
    with pytest.raises(CheckpointError, match="'output.weight' has 799 rows but the tokenizer has 800 tokens"):
        find_gguf_vocab_tensors([gguf(("token_embd.weight", (E, V)), ("output.weight", (E, V - 1)))], V)


def test_default_output_names():
    assert default_output(Path("/m/model-Q4_K_M.gguf")).name == "model-Q4_K_M-trimmed.gguf"
    assert default_output(Path("/m/big-00001-of-00003.gguf")).name == "big-trimmed-00001-of-00003.gguf"
