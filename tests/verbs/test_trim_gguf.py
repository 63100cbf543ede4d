"""The GGUF vocabulary tensors: the name table, the multi-token-prediction tables, and the no-guessing guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgery.errors import CheckpointError
from surgery.formats.gguf import GgufFile, GgufTensor
from surgery.model.vocab_tensors import Role
from surgery.verbs.trim import find_gguf_vocab_tensors

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
    from surgery.formats.paths import default_output

    assert default_output(Path("/m/model-Q4_K_M.gguf"), "trimmed").name == "model-Q4_K_M-trimmed.gguf"
    assert default_output(Path("/m/big-00001-of-00003.gguf"), "trimmed").name == "big-trimmed-00001-of-00003.gguf"


def test_drop_layers_slices_per_block_arrays_and_moves_mtp_blocks(tmp_path):
    import numpy as np

    from surgery.formats.gguf import (
        ARRAY,
        INT32,
        STRING,
        UINT32,
        KeyValue,
        data_offsets,
        encode_header,
        read_gguf,
    )
    from surgery.edit.sources import GgufSource
    from surgery.verbs.drop_layers import plan_drop_layers

    tensors = [("token_embd.weight", (4, 8))] + [(f"blk.{i}.ffn_up.weight", (4, 4)) for i in range(5)]
    kvs = [KeyValue("general.architecture", STRING, "glm4moe"), KeyValue("glm4moe.block_count", UINT32, 5),
           KeyValue("glm4moe.nextn_predict_layers", UINT32, 1),
           KeyValue("glm4moe.leading_dense_block_count", UINT32, 2),
           KeyValue("glm4moe.attention.head_count", ARRAY, np.array([1, 2, 3, 4, 5], np.int32), INT32)]
    nbytes = [4 * 4 * 8] + [4 * 16] * 5
    header = encode_header(3, kvs, [(n, ne, 0, o) for (n, ne), o in zip(tensors, data_offsets(nbytes, 32))], 32)
    path = tmp_path / "m.gguf"
    path.write_bytes(header + b"".join(bytes([i]) * n + bytes(-n % 32) for i, n in enumerate(nbytes)))
    plan = plan_drop_layers(GgufSource((read_gguf(path),)), [0, 3])
    assert [a.name for a in plan.actions] == ["token_embd.weight", "blk.0.ffn_up.weight", "blk.1.ffn_up.weight",
                                              "blk.2.ffn_up.weight"]
    assert plan.actions[3].tensor.name == "blk.4.ffn_up.weight"  # the MTP block follows the kept ones
    kvs = {kv.key: kv.value for kv in plan.kvs[0]}
    assert kvs["glm4moe.block_count"] == 3 and kvs["glm4moe.leading_dense_block_count"] == 1
    assert kvs["glm4moe.attention.head_count"].tolist() == [1, 4, 5]
