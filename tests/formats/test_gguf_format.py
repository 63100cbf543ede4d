"""The GGUF reader and writer: byte-identical to gguf-py's writer, and every malformed header refused by name."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from llama_cpp_tools import vendored_llama_cpp

from surgery.errors import CheckpointError
from surgery.formats.gguf import (
    ARRAY,
    FLOAT64,
    INT32,
    STRING,
    UINT32,
    UINT64,
    KeyValue,
    data_offsets,
    encode_header,
    read_gguf,
    split_name,
    split_paths,
)


@pytest.fixture(scope="module")
def gguf_py():
    sys.path.insert(0, str(vendored_llama_cpp() / "gguf-py"))
    import gguf

    return gguf


def test_reads_what_gguf_py_writes_and_writes_the_same_bytes(gguf_py, tmp_path):
    path = tmp_path / "t.gguf"
    writer = gguf_py.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab", "Ġx"])
    writer.add_token_scores([0.0, 1.0, 2.0, -1.5])
    writer.add_token_types([1, 1, 1, 3])
    writer.add_uint32("x.count", 5)
    writer.add_float64("x.f", 0.25)
    writer.add_bool("x.flag", True)
    writer.add_array("x.arr", [1, 2, 3])
    writer.add_tensor("token_embd.weight", np.arange(4 * 32, dtype=np.float32).reshape(4, 32))
    writer.add_tensor("output.weight", np.ones((4, 64), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    gguf = read_gguf(path)
    assert gguf.version == 3 and gguf.alignment == 32
    assert gguf.get("tokenizer.ggml.tokens") == ["a", "b", "ab", "Ġx"]
    assert gguf.get("tokenizer.ggml.scores").tolist() == [0.0, 1.0, 2.0, -1.5]
    assert (gguf.get("x.count"), gguf.get("x.f"), gguf.get("x.flag")) == (5, 0.25, True)
    embed = gguf.tensors[0]
    assert (embed.name, embed.shape, embed.dtype, embed.row_nbytes()) == ("token_embd.weight", (4, 32), "F32", 128)
    raw = path.read_bytes()
    assert np.array_equal(np.frombuffer(raw[embed.begin : embed.end], np.float32), np.arange(128, dtype=np.float32))
    offsets = data_offsets([t.nbytes for t in gguf.tensors], gguf.alignment)
    header = encode_header(3, list(gguf.kvs.values()), [(t.name, t.ne, t.ggml_type, o)
                                                        for t, o in zip(gguf.tensors, offsets)], gguf.alignment)
    assert raw[: len(header)] == header and len(header) == gguf.header_nbytes


def write(path: Path, kvs=(), infos=(), data: bytes = b"", version: int = 3, alignment: int = 32) -> Path:
    path.write_bytes(encode_header(version, list(kvs), list(infos), alignment) + data)
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b"GGML" + bytes(40)), "t.gguf: not a GGUF file (magic b'GGML')"),
    (lambda p: p.write_bytes(b"GGUF"), "t.gguf: too short to be a GGUF file (4 bytes)"),
    (lambda p: write(p, version=1), "t.gguf: GGUF version 1 is not supported (2, 3)"),
    (lambda p: p.write_bytes(encode_header(3, [KeyValue("k", STRING, "value")], [], 1)[:-3]),
     "t.gguf: a string at byte 37 claims 5 bytes, more than the 2 bytes left in the file"),
    (lambda p: write(p, [KeyValue("k", UINT32, 1), KeyValue("k", UINT32, 2)]), "t.gguf: key 'k' appears twice"),
    (lambda p: write(p, [KeyValue("general.alignment", UINT32, 24)]),
     "t.gguf: general.alignment 24 is not a power of two"),
    (lambda p: write(p, infos=[("w", (32, 2), 31, 0)], data=bytes(64)),
     "t.gguf: tensor 'w': type Q4_0_4_4 interleaves several rows in one block; its rows cannot be cut "
     "(requantize from a plain type)"),
    (lambda p: write(p, infos=[("w", (16, 2), 8, 0)], data=bytes(64)),
     "t.gguf: tensor 'w': row length 16 is not a multiple of the 32-element block"),
    (lambda p: write(p, infos=[("a", (8,), 0, 0), ("b", (8,), 0, 64)], data=bytes(128)),
     "t.gguf: tensor 'b' is at data offset 64, expected 32"),
    (lambda p: write(p, infos=[("a", (64,), 0, 0)], data=bytes(10)), "t.gguf: tensor 'a' runs past the end of the file"),
    (lambda p: p.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1) + b"k" + struct.pack("<I", 99) + bytes(8)),
     "t.gguf: key 'k' has unknown value type 99"),
])
def test_malformed_headers_are_refused_by_name(make, message, tmp_path):
    path = tmp_path / "t.gguf"
    make(path)
    with pytest.raises(CheckpointError) as info:
        read_gguf(path)
    assert str(info.value) == message


def test_split_names(tmp_path):
    first = tmp_path / "m-00001-of-00003.gguf"
    assert [p.name for p in split_paths(first)] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert split_paths(tmp_path / "m.gguf") == [tmp_path / "m.gguf"]
    with pytest.raises(CheckpointError, match="give the first part"):
        split_paths(tmp_path / "m-00002-of-00003.gguf")
    assert split_name(tmp_path / "out.gguf", 2, 3).name == "out-00002-of-00003.gguf"
    assert split_name(tmp_path / "out-00001-of-00003.gguf", 3, 3).name == "out-00003-of-00003.gguf"


# ---- hostile headers: every length, count and type is checked before anything is allocated -------------------

def header_prefix(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


@pytest.mark.parametrize("content,message", [
    (header_prefix(0, 1) + struct.pack("<Q", 2**40) + bytes(64),
     "t.gguf: a string at byte 24 claims 1099511627776 bytes, more than the limit of 256 MiB"),
    (header_prefix(0, 1) + struct.pack("<Q", 200) + bytes(64),
     "t.gguf: a string at byte 24 claims 200 bytes, more than the 64 bytes left in the file"),
    (header_prefix(2**40, 0) + bytes(64), "t.gguf: tensor count 1099511627776 is over the limit of 262144"),
    (header_prefix(1000, 0) + bytes(64),
     "t.gguf: tensor count 1000 does not fit in the 72 bytes left in the file (truncated or damaged header)"),
    (header_prefix(0, 500) + bytes(64),
     "t.gguf: key-value count 500 does not fit in the 64 bytes left in the file (truncated or damaged header)"),
    (header_prefix(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**30) + bytes(64),
     "t.gguf: key 'k': array count 1073741824 is over the limit of 16777216"),
    (header_prefix(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 6, 1000) + bytes(64),
     "t.gguf: key 'k': array count 1000 does not fit in the 64 bytes left in the file (truncated or damaged "
     "header)"),
])
def test_hostile_lengths_and_counts_are_refused_before_allocating(content, message, tmp_path):
    path = tmp_path / "t.gguf"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_gguf(path)
    assert str(info.value) == message


@pytest.mark.parametrize("kv,message", [
    (KeyValue("general.alignment", STRING, "32"), "key 'general.alignment' is string; llama.cpp requires u32"),
    (KeyValue("general.alignment", UINT64, 32), "key 'general.alignment' is u64; llama.cpp requires u32"),
    (KeyValue("tokenizer.ggml.tokens", ARRAY, np.array([1, 2], np.int32), INT32),
     "key 'tokenizer.ggml.tokens' is array of i32; llama.cpp requires array of string"),
    (KeyValue("tokenizer.ggml.scores", ARRAY, np.array([1, 2], np.float64), FLOAT64),
     "key 'tokenizer.ggml.scores' is array of f64; llama.cpp requires array of f32"),
    (KeyValue("tokenizer.ggml.token_type", ARRAY, np.array([1, 2], np.uint32), UINT32),
     "key 'tokenizer.ggml.token_type' is array of u32; llama.cpp requires array of i32"),
    (KeyValue("tokenizer.ggml.model", UINT32, 2), "key 'tokenizer.ggml.model' is u32; llama.cpp requires string"),
])
def test_keys_of_the_wrong_type_are_refused_as_llama_cpp_refuses_them(kv, message, tmp_path):
    with pytest.raises(CheckpointError) as info:
        read_gguf(write(tmp_path / "t.gguf", [kv]))
    assert str(info.value) == "t.gguf: " + message


def test_duplicate_tensor_names_are_refused(tmp_path):
    path = write(tmp_path / "t.gguf", infos=[("a", (8,), 0, 0), ("a", (8,), 0, 32)], data=bytes(64))
    with pytest.raises(CheckpointError) as info:
        read_gguf(path)
    assert str(info.value) == "t.gguf: tensor 'a' appears twice"


def test_a_pipe_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError) as info:
        read_gguf(fifo)
    assert str(info.value) == f"{fifo}: not a regular file"


def test_a_header_that_claims_the_whole_file_keeps_memory_flat(tmp_path):
    """A string length just under the file size: refused once, never read into memory by growing buffers."""
    import resource

    path = tmp_path / "t.gguf"
    size = 300 * 2**20
    with open(path, "wb") as f:
        f.write(header_prefix(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", STRING)
                + struct.pack("<Q", size - 64))
        f.truncate(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="claims .* bytes, more than the limit of 256 MiB"):
        read_gguf(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB
