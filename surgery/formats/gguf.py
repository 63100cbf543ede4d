"""Read and write GGUF files as bytes: KV metadata of every type, tensor infos, aligned data, split files.

Facts from llama.cpp (ggml/src/gguf.cpp, gguf-py/gguf/constants.py; ../shared/GGUF.md): little-endian;
magic `GGUF`, u32 version, u64 tensor count, u64 KV count; KV = string key, u32 type, value; arrays are u32
element type, u64 count, elements; tensor info = name, u32 n_dims, n_dims x u64 ne (ne0 fastest), u32 ggml
type, u64 offset into the data section. The data section starts at the end of the infos padded to
`general.alignment` (default 32); llama.cpp demands each offset be the running sum of the padded sizes in
info order. Our own reader: gguf-py parses arrays element by element (seconds for a 262k vocabulary).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.dtypes import GGML_TYPES, INTERLEAVED_TYPES
from surgery.errors import CheckpointError

MAGIC = b"GGUF"
_U64 = struct.Struct("<Q")
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
NUMERIC = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4", FLOAT32: "<f4",
           BOOL: "?", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}

SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"


@dataclass(slots=True)
class KeyValue:
    key: str
    type: int
    value: object  # scalars as Python values; numeric arrays as numpy arrays; string arrays as lists
    subtype: int | None = None  # element type of an array


@dataclass(frozen=True, slots=True)
class GgufTensor:
    """One tensor: numpy-order `shape` (ne reversed), where its bytes are, and its ggml type."""

    name: str
    ggml_type: int
    ne: tuple[int, ...]
    path: Path
    begin: int  # absolute file position
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def dtype(self) -> str:
        return GGML_TYPES[self.ggml_type][0]

    @property
    def end(self) -> int:
        return self.begin + self.nbytes

    def row_nbytes(self, axis: int = 0) -> int:
        """Bytes of one slice along numpy axis `axis` (axis 0: ne[-1], the slowest)."""
        if axis != 0:
            raise CheckpointError(f"{self.path.name}: tensor '{self.name}': only the outermost axis can be sliced")
        return self.nbytes // self.shape[0] if self.shape[0] else 0


@dataclass(slots=True)
class GgufFile:
    path: Path
    version: int
    kvs: dict[str, KeyValue]  # in file order
    tensors: list[GgufTensor]
    alignment: int
    header_nbytes: int = 0  # bytes before the data section
    extra: dict = field(default_factory=dict)

    def get(self, key: str, default=None):
        kv = self.kvs.get(key)
        return default if kv is None else kv.value


def tensor_nbytes(ggml_type: int, ne: tuple[int, ...], where: str) -> int:
    if ggml_type in INTERLEAVED_TYPES:
        raise CheckpointError(f"{where}: type {INTERLEAVED_TYPES[ggml_type]} interleaves several rows in one block; "
                              "its rows cannot be cut (requantize from a plain type)")
    if ggml_type not in GGML_TYPES:
        raise CheckpointError(f"{where}: unknown ggml type {ggml_type}")
    _, block, block_nbytes = GGML_TYPES[ggml_type]
    if ne and ne[0] % block:
        raise CheckpointError(f"{where}: row length {ne[0]} is not a multiple of the {block}-element block")
    n = 1
    for d in ne:
        n *= d
    return n // block * block_nbytes


class _NeedMore(Exception):
    """The header runs past the bytes read so far: read more of the file and parse again."""


class _Reader:
    def __init__(self, path: Path, buffer: bytes, file_size: int) -> None:
        self.path, self.buf, self.pos, self.file_size = path, memoryview(buffer), 0, file_size

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            if len(self.buf) < self.file_size:
                raise _NeedMore
            raise CheckpointError(f"{self.path.name}: truncated GGUF header (needs {self.pos + n} bytes, file has "
                                  f"{len(self.buf)})")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path.name}: a string at byte {self.pos - n} is not UTF-8") from e

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row: the hot loop of a 262k-token vocabulary, kept free of per-item overhead."""
        buf, pos, end = self.buf, self.pos, len(self.buf)
        unpack = _U64.unpack_from
        out = []
        append = out.append
        try:
            for _ in range(count):
                n = unpack(buf, pos)[0]
                pos += 8
                if pos + n > end:
                    raise struct.error
                append(str(buf[pos : pos + n], "utf-8"))
                pos += n
        except struct.error:
            self.pos = end + 1
            self.take(0)  # raises the truncation error (or asks for more bytes)
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path.name}: a string at byte {pos} is not UTF-8") from e
        self.pos = pos
        return out

    def value(self, kind: int, key: str):
        if kind == STRING:
            return self.string(), None
        if kind == ARRAY:
            subtype, count = self.scalar("<I"), self.scalar("<Q")
            if subtype == STRING:
                return self.strings(count), subtype
            if subtype not in NUMERIC:
                raise CheckpointError(f"{self.path.name}: key '{key}' is an array of unsupported type {subtype}")
            dtype = np.dtype(NUMERIC[subtype])
            return np.frombuffer(self.take(count * dtype.itemsize), dtype).copy(), subtype
        if kind not in NUMERIC:
            raise CheckpointError(f"{self.path.name}: key '{key}' has unknown value type {kind}")
        return np.frombuffer(self.take(np.dtype(NUMERIC[kind]).itemsize), NUMERIC[kind])[0].item(), None


HEADER_READ_NBYTES = 16 * 2**20  # the first read, grown until the header fits (a 152k vocabulary with merges: ~6 MB)


def read_gguf(path: Path) -> GgufFile:
    """Parse header, metadata and tensor infos; check that the data offsets are the ones llama.cpp expects.

    The header is read into memory (never the tensor data), growing the read until it fits.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise CheckpointError(f"{path.name}: too short to be a GGUF file ({size} bytes)")
            nbytes = HEADER_READ_NBYTES
            while True:
                try:
                    return _parse(path, os.pread(f.fileno(), min(nbytes, size), 0), size)
                except _NeedMore:
                    nbytes *= 4
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from e


def _parse(path: Path, buf: bytes, size: int) -> GgufFile:
    reader = _Reader(path, buf, size)
    if bytes(reader.take(4)) != MAGIC:
        raise CheckpointError(f"{path.name}: not a GGUF file (magic {bytes(buf[:4])!r})")
    version = reader.scalar("<I")
    if version not in (2, 3):
        raise CheckpointError(f"{path.name}: GGUF version {version} is not supported (2, 3)")
    n_tensors, n_kv = reader.scalar("<Q"), reader.scalar("<Q")
    kvs: dict[str, KeyValue] = {}
    for _ in range(n_kv):
        key = reader.string()
        kind = reader.scalar("<I")
        value, subtype = reader.value(kind, key)
        if key in kvs:
            raise CheckpointError(f"{path.name}: key '{key}' appears twice")
        kvs[key] = KeyValue(key, kind, value, subtype)
    infos = []
    for _ in range(n_tensors):
        name = reader.string()
        n_dims = reader.scalar("<I")
        if n_dims > 4:
            raise CheckpointError(f"{path.name}: tensor '{name}' has {n_dims} dimensions (at most 4)")
        ne = tuple(reader.scalar("<Q") for _ in range(n_dims))
        infos.append((name, ne, reader.scalar("<I"), reader.scalar("<Q")))
    infos_end = reader.pos
    alignment = int(kvs[ALIGNMENT_KEY].value) if ALIGNMENT_KEY in kvs else DEFAULT_ALIGNMENT
    if alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"{path.name}: general.alignment {alignment} is not a power of two")
    header_end = -(-infos_end // alignment) * alignment
    tensors, expected = [], 0
    for name, ne, ggml_type, offset in infos:
        nbytes = tensor_nbytes(ggml_type, ne, f"{path.name}: tensor '{name}'")
        if offset != expected:
            raise CheckpointError(f"{path.name}: tensor '{name}' is at data offset {offset}, expected {expected}")
        if header_end + offset + nbytes > size:
            raise CheckpointError(f"{path.name}: tensor '{name}' runs past the end of the file")
        tensors.append(GgufTensor(name, ggml_type, ne, path, header_end + offset, nbytes))
        expected = offset + -(-nbytes // alignment) * alignment
    return GgufFile(path, version, kvs, tensors, alignment, header_end)


# ---- writing ----------------------------------------------------------------------------------------------


def _encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _encode_value(kind: int, value, subtype: int | None) -> bytes:
    if kind == STRING:
        return _encode_string(value)
    if kind == ARRAY:
        if subtype == STRING:
            return struct.pack("<IQ", STRING, len(value)) + b"".join(_encode_string(v) for v in value)
        data = np.asarray(value, dtype=NUMERIC[subtype])
        return struct.pack("<IQ", subtype, len(data)) + data.tobytes()
    return np.asarray(value, dtype=NUMERIC[kind]).tobytes()


def encode_header(version: int, kvs: list[KeyValue], infos: list[tuple[str, tuple[int, ...], int, int]],
                  pad_to: int) -> bytes:
    """Magic, counts, metadata and tensor infos, padded with zeros to `pad_to`."""
    parts = [MAGIC, struct.pack("<IQQ", version, len(infos), len(kvs))]
    for kv in kvs:
        parts += [_encode_string(kv.key), struct.pack("<I", kv.type), _encode_value(kv.type, kv.value, kv.subtype)]
    for name, ne, ggml_type, offset in infos:
        parts += [_encode_string(name), struct.pack("<I", len(ne)), struct.pack(f"<{len(ne)}Q", *ne),
                  struct.pack("<IQ", ggml_type, offset)]
    header = b"".join(parts)
    return header + b"\0" * (-len(header) % pad_to)


def data_offsets(nbytes: list[int], alignment: int) -> list[int]:
    """Each tensor's offset in the data section: the running sum of sizes padded to the alignment."""
    offsets, position = [], 0
    for n in nbytes:
        offsets.append(position)
        position += -(-n // alignment) * alignment
    return offsets


def split_paths(first: Path) -> list[Path]:
    """`name-00001-of-0000N.gguf` -> every part; a plain file -> itself."""
    match = SPLIT_NAME.match(first.name)
    if not match:
        return [first]
    count = int(match["count"])
    if int(match["no"]) != 1:
        raise CheckpointError(f"{first.name}: give the first part of a split GGUF (-00001-of-{count:05d}.gguf)")
    return [first.with_name(f"{match['stem']}-{no:05d}-of-{count:05d}.gguf") for no in range(1, count + 1)]


def split_name(out: Path, no: int, count: int) -> Path:
    """The name of part `no` of `out` (1-based); `out` may already name the first part."""
    match = SPLIT_NAME.match(out.name)
    stem = match["stem"] if match else out.name.removesuffix(".gguf")
    return out.with_name(f"{stem}-{no:05d}-of-{count:05d}.gguf")


@dataclass(frozen=True, slots=True)
class GgufParts:
    """A GGUF file and its split parts, as the container protocol (formats/base.py) sees them."""

    parts: tuple[GgufFile, ...]

    def tensor_files(self) -> list[tuple[Path, list[GgufTensor]]]:
        return [(part.path, list(part.tensors)) for part in self.parts]
