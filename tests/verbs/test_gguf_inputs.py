"""GGUF inputs that llama.cpp refuses are refused before anything is written: block counts that do not name the
blocks present or are not integers, split parts misnumbered or sharing a tensor, an output that is a folder."""

from __future__ import annotations

import pytest
from conftest import KEEP, small_gguf

import surgery
from surgery.errors import SurgeryError
from surgery.formats.gguf import INT32, STRING, UINT16, UINT32, UINT64, KeyValue, data_offsets, encode_header, read_gguf


def refused(run) -> str:
    with pytest.raises(SurgeryError) as info:
        run()
    return str(info.value)


@pytest.mark.parametrize("kv,message", [
    (KeyValue("llama.block_count", UINT64, 2**62),
     "m.gguf: llama.block_count is 4611686018427387904, but the tensors hold 2 blocks (blk.0 to blk.1)"),
    (KeyValue("llama.block_count", UINT32, 5), "m.gguf: llama.block_count is 5, but the tensors hold 2 blocks "
                                              "(blk.0 to blk.1)"),
    (KeyValue("llama.block_count", STRING, "2"), "m.gguf: key 'llama.block_count' is string; llama.cpp requires an "
                                                "integer"),
])
def test_block_counts_are_checked_against_the_tensors(kv, message, tmp_path):
    path = small_gguf(tmp_path / "m.gguf")
    content = path.read_bytes()
    gguf = read_gguf(path)  # rewritten with the block count replaced
    kvs = [kv if k.key == kv.key else k for k in gguf.kvs.values()]
    offsets = data_offsets([t.nbytes for t in gguf.tensors], 32)
    header = encode_header(3, kvs, [(t.name, t.ne, t.ggml_type, o) for t, o in zip(gguf.tensors, offsets)], 32)
    path.write_bytes(header + content[gguf.header_nbytes:])
    (tmp_path / "imp.json").write_text('{"format": "surgery-importance/1"}')
    assert refused(lambda: surgery.drop_layers(path, tmp_path / "o.gguf", drop="0")) == message
    assert refused(lambda: surgery.prune(path, tmp_path / "imp.json", tmp_path / "o.gguf", intermediate_size=2)) \
        == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imp.json", "m.gguf"]


def split_part(path, no: int, count: int, blocks) -> None:
    small_gguf(path, [KeyValue("split.no", UINT16, no), KeyValue("split.count", UINT16, count),
                      KeyValue("split.tensors.count", INT32, 5)], blocks=blocks)


def test_split_parts_must_be_numbered_as_llama_cpp_demands(tmp_path):
    for index, no in enumerate((0, 2, 2)):
        split_part(tmp_path / f"m-0000{index + 1}-of-00003.gguf", no, 3, blocks=(index,))
    first = tmp_path / "m-00001-of-00003.gguf"
    assert refused(lambda: surgery.trim(first, KEEP / "basic.txt", tmp_path / "o.gguf")) == \
        "m-00002-of-00003.gguf: split.no is 2; part 2 of 3 must say 1"
    for index in range(3):
        split_part(tmp_path / f"m-0000{index + 1}-of-00003.gguf", index, 3, blocks=(index,))
    assert refused(lambda: surgery.trim(first, KEEP / "basic.txt", tmp_path / "o.gguf")) == \
        "m-00002-of-00003.gguf: tensor 'token_embd.weight' is also in m-00001-of-00003.gguf"
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())


def test_a_gguf_output_that_is_a_folder_is_refused_even_with_force(tmp_path):
    path = small_gguf(tmp_path / "m.gguf")
    (tmp_path / "keep.txt").write_text("0\n1\n")
    (tmp_path / "o.gguf").mkdir()
    for run in (lambda: surgery.trim(path, tmp_path / "keep.txt", tmp_path / "o.gguf", force=True),
                lambda: surgery.drop_layers(path, tmp_path / "o.gguf", drop="0", force=True)):
        assert refused(run) == f"{tmp_path / 'o.gguf'}: is a directory; a GGUF output is a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "m.gguf", "o.gguf"]
    assert not list((tmp_path / "o.gguf").iterdir())


def test_split_gguf_outputs_of_every_verb_are_named_like_trims(tmp_path):
    from surgery.formats.paths import default_output

    src = tmp_path / "m-00001-of-00003.gguf"
    assert default_output(src, "trimmed").name == "m-trimmed-00001-of-00003.gguf"
    assert default_output(src, "pruned").name == "m-pruned-00001-of-00003.gguf"
    assert default_output(src, "4layers").name == "m-4layers-00001-of-00003.gguf"
