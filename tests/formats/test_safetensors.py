"""Our reader and writer against the safetensors library, and every malformed header named exactly."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from surgery.errors import CheckpointError
from surgery.formats.safetensors import (
    ShardWriter,
    TensorSpec,
    pread_rows,
    read_header,
    read_rows,
    write_all,
)

NP_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32",
            np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8"}


def write_with_ours(path: Path, tensors: dict[str, np.ndarray], metadata=None) -> None:
    writer = ShardWriter(path, metadata)
    for name, array in tensors.items():
        writer.add(TensorSpec(name, NP_CODES[array.dtype], array.shape))
    for spec in writer.write_header():
        writer.write_tensor(spec.name, lambda fd, a=tensors[spec.name]: write_all(fd, np.ascontiguousarray(a).tobytes()))
    writer.close()


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "model.embed_tokens.weight": rng.standard_normal((7, 3)).astype(np.float32),
        "a.half": rng.standard_normal((5,)).astype(np.float16),
        "b.int": np.arange(6, dtype=np.int32).reshape(2, 3),
        "c.long": np.arange(3, dtype=np.int64),
        "d.bytes": np.arange(9, dtype=np.uint8),
        "e.empty": np.zeros((0, 4), np.float32),
        "z.scalar": np.array(1.5, dtype=np.float32),
    }


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_writer_is_byte_identical_to_safetensors(tmp_path, metadata):
    tensors = sample_tensors()
    save_file(tensors, tmp_path / "ref.safetensors", metadata=metadata)
    write_with_ours(tmp_path / "ours.safetensors", tensors, metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_reader_reads_what_safetensors_writes(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, tmp_path / "ref.safetensors")
    header = read_header(tmp_path / "ref.safetensors")
    assert {e.name for e in header.entries} == set(tensors)
    for entry in header.entries:
        expected = np.ascontiguousarray(tensors[entry.name]).tobytes()
        assert read_rows(entry).tobytes() == expected
        assert entry.dtype == NP_CODES[tensors[entry.name].dtype]


def test_bf16_and_f8_rows_are_bytes(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save

    t = {"bf": torch.randn(4, 3).to(torch.bfloat16), "f8": torch.randn(2, 5).to(torch.float8_e4m3fn),
         "f32": torch.randn(3)}
    torch_save(t, tmp_path / "t.safetensors")
    header = read_header(tmp_path / "t.safetensors")
    for entry in header.entries:
        raw = t[entry.name].contiguous().view(torch.uint8).numpy().tobytes()
        assert read_rows(entry).tobytes() == raw
    # and our writer lays them out as safetensors does
    writer = ShardWriter(tmp_path / "ours.safetensors", None)
    for entry in header.entries:
        writer.add(TensorSpec(entry.name, entry.dtype, entry.shape))
    for spec in writer.write_header():
        entry = header.entry(spec.name)
        writer.write_tensor(spec.name, lambda fd, e=entry: write_all(fd, read_rows(e).tobytes()))
    writer.close()
    torch_save(t, tmp_path / "ref.safetensors", metadata=None)
    with safe_open(tmp_path / "ours.safetensors", "pt") as ours:
        for name in t:
            assert torch.equal(ours.get_tensor(name).view(torch.uint8), t[name].view(torch.uint8))


def test_writer_refuses_tensors_out_of_order(tmp_path):
    writer = ShardWriter(tmp_path / "x.safetensors")
    writer.add(TensorSpec("model.norm.weight", "F32", (2,)))
    writer.add(TensorSpec("lm_head.weight", "F32", (2,)))
    writer.write_header()
    with pytest.raises(RuntimeError, match="ShardWriter: expected 'lm_head.weight', got 'model.norm.weight'"):
        writer.write_tensor("model.norm.weight", lambda fd: None)


# ---- malformed files: one exact message each -----------------------------------------------------------

def raw_file(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CASES = [
    ("short", lambda p: p.write_bytes(b"\x01\x02"), "bad.safetensors: file is 2 bytes, too short for a safetensors header"),
    ("absurd", lambda p: raw_file(p, {}, length=200 * 2**20),
     "bad.safetensors: header length 209715200 is absurd (limit 104857600 bytes); not a safetensors file"),
    ("past-end", lambda p: raw_file(p, {}, length=1000),
     "bad.safetensors: header length 1000 runs past the end of the file (10 bytes)"),
    ("not-json", lambda p: raw_file(p, b"{not json"), None),
    ("not-object", lambda p: raw_file(p, [1, 2]), "bad.safetensors: header is not a JSON object"),
    ("dtype", lambda p: raw_file(p, {"t": entry(dtype="Q7")}, b"\0" * 8),
     "bad.safetensors: tensor 't': unknown dtype 'Q7'"),
    ("size", lambda p: raw_file(p, {"t": entry(shape=(3,))}, b"\0" * 8),
     "bad.safetensors: tensor 't': shape [3] of F32 needs 12 bytes but data_offsets span 8"),
    ("overlap", lambda p: raw_file(p, {"a": entry(), "b": entry(offsets=(4, 12))}, b"\0" * 12),
     "bad.safetensors: tensor 'b' overlaps the tensor before it"),
    ("gap", lambda p: raw_file(p, {"a": entry(), "b": entry(offsets=(12, 20))}, b"\0" * 20),
     "bad.safetensors: gap of 4 bytes before tensor 'b'"),
    ("trailing", lambda p: raw_file(p, {"a": entry()}, b"\0" * 9),
     "bad.safetensors: 1 trailing bytes after the last tensor"),
    ("shape", lambda p: raw_file(p, {"a": entry(shape=(-2,))}, b"\0" * 8),
     "bad.safetensors: tensor 'a': shape [-2] is not a list of non-negative integers"),
    ("offsets", lambda p: raw_file(p, {"a": entry(offsets=(8, 0))}, b"\0" * 8),
     "bad.safetensors: tensor 'a': data_offsets [8, 0] is not a [begin, end] pair"),
]


@pytest.mark.parametrize("name,make,message", CASES, ids=[c[0] for c in CASES])
def test_malformed_header_is_named(tmp_path, name, make, message):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    if message is None:  # messages that quote a parser's own words
        assert str(info.value).startswith("bad.safetensors: ")
    else:
        assert str(info.value) == message


def test_truncated_data_is_named(tmp_path):
    path = raw_file(tmp_path / "bad.safetensors", {"a": entry()}, b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"tensor data runs to byte \d+ but the file has \d+ bytes \(truncated\?\)"):
        read_header(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_fuzzed_headers_raise_only_checkpoint_errors(tmp_path, data, cut, flip):
    """Random bytes, and a valid file truncated or with one byte changed: parsed, or a CheckpointError."""
    valid = tmp_path / "valid.safetensors"
    if not valid.exists():
        save_file(sample_tensors(), valid)
    base = bytearray(valid.read_bytes())
    if flip < len(base):
        base[flip] ^= 0xFF
    for content in (data, bytes(base[:cut]), bytes(base), struct.pack("<Q", len(data)) + data):
        path = tmp_path / "fuzz.safetensors"
        path.write_bytes(content)
        try:
            read_header(path)
        except CheckpointError as e:
            assert str(e).startswith("fuzz.safetensors: ")


def test_pread_rows_reads_any_rows_in_any_order(tmp_path, monkeypatch):
    """Runs, gaps read through, spans capped at a block, repeated and descending rows: each row lands in place."""
    import surgery.formats.safetensors as safetensors_format

    row_nbytes, n_rows = 24, 5000
    data = np.random.default_rng(0).integers(0, 256, (n_rows, row_nbytes), np.uint8)
    path = tmp_path / "rows.bin"
    path.write_bytes(b"xyz" + data.tobytes())
    monkeypatch.setattr(safetensors_format, "SPAN_NBYTES", 100 * row_nbytes)  # spans of at most 100 rows
    monkeypatch.setattr(safetensors_format, "GAP_NBYTES", 8 * row_nbytes)
    rng = np.random.default_rng(1)
    cases = [np.arange(n_rows), np.sort(rng.choice(n_rows, 700, replace=False)), rng.integers(0, n_rows, 900),
             np.arange(n_rows)[::-3], np.array([7, 7, 7, 8, 4000, 4001, 4009, 0]), np.array([n_rows - 1])]
    with open(path, "rb") as f:
        for rows in cases:
            out = bytearray(len(rows) * row_nbytes)
            pread_rows(f.fileno(), 3, row_nbytes, rows, memoryview(out))
            assert bytes(out) == data[rows].tobytes()
