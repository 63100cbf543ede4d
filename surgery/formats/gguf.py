"""Read and write GGUF files as bytes: KV metadata of every type, tensor infos, aligned data, split files.

Facts from llama.cpp (ggml/src/gguf.cpp, gguf-py/gguf/constants.py; ../shared/GGUF.md): little-endian;
magic `GGUF`, u32 version, u64 tensor count, u64 KV count; KV = string key, u32 type, value; arrays are u32
element type, u64 count, elements; tensor info = name, u32 n_dims, n_dims x u64 ne (ne0 fastest), u32 ggml
type, u64 offset into the data section. The data section starts at the end of the infos padded to
`general.alignment` (default 32); llama.cpp demands each offset be the running sum of the padded sizes in
info order. Our own reader: gguf-py parses arrays element by element (seconds for a 262k vocabulary).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.dtypes import GGML_TYPES, INTERLEAVED_TYPES
from surgery.errors import CheckpointError
from surgery.formats.paths import SPLIT_NAME, open_regular
from surgery.model.keys import General, Split, Tokenizer

MAGIC = b"GGUF"
_U64 = struct.Struct("<Q")
DEFAULT_ALIGNMENT = 32
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
NUMERIC = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4", FLOAT32: "<f4",
           BOOL: "?", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}



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

    def integer(self, key: str, layer: int | None = None) -> int | None:
        """An integer key (or the entry of a per-layer integer array); None when absent; refused when the
        value has another type, as llama.cpp refuses it."""
        kv = self.kvs.get(key)
        if kv is None:
            return None
        kind = kv.subtype if kv.type == ARRAY else kv.type
        if kind not in INTEGER_TYPES or (kv.type == ARRAY and not len(kv.value)):
            raise CheckpointError(f"{self.path.name}: key '{key}' is {type_name(kv.type, kv.subtype)}; llama.cpp "
                                  "requires an integer")
        if kv.type == ARRAY:
            if layer is not None and not 0 <= layer < len(kv.value):
                raise CheckpointError(f"{self.path.name}: key '{key}' has {len(kv.value)} entries, no entry for "
                                      f"layer {layer}")
            return int(kv.value[layer or 0])
        return int(kv.value)


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


# Bounds checked before anything is allocated, so that memory stays flat whatever a header claims. llama.cpp
# (ggml/src/gguf.cpp) caps a string and an array at 1 GiB and checks both against the bytes that remain; no
# released file comes near our lower caps (a 262k vocabulary is ~4 MB of strings, tokenizer.json ~33 MB).
MAX_STRING_NBYTES = 256 * 2**20
MAX_ARRAY_ITEMS = 2**24
MAX_TENSORS = 2**18
MAX_KVS = 2**16
MIN_KV_NBYTES = 8 + 4 + 1  # key length, value type, the smallest value
MIN_TENSOR_INFO_NBYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
INTEGER_TYPES = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)
# the types llama.cpp demands of the keys surgery reads (gguf.cpp for alignment; llama-vocab.cpp, llama-arch.cpp
# and gguf-py's writer for the others): (value type, element type of an array)
KEY_TYPES = {
    General.ALIGNMENT: (UINT32, None),
    General.ARCHITECTURE: (STRING, None),
    Tokenizer.MODEL: (STRING, None),
    Tokenizer.TOKENS: (ARRAY, STRING),
    Tokenizer.SCORES: (ARRAY, FLOAT32),
    Tokenizer.TOKEN_TYPE: (ARRAY, INT32),
    Tokenizer.MERGES: (ARRAY, STRING),
    Split.NO: (UINT16, None),
    Split.COUNT: (UINT16, None),
    Split.TENSORS: (INT32, None),
}
TYPE_NAMES = ("u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64")


def type_name(kind: int, subtype: int | None = None) -> str:
    name = TYPE_NAMES[kind] if 0 <= kind < len(TYPE_NAMES) else f"type {kind}"
    if kind == ARRAY and subtype is not None:
        name += f" of {TYPE_NAMES[subtype] if 0 <= subtype < len(TYPE_NAMES) else f'type {subtype}'}"
    return name


class _Reader:
    """Reads a header from a buffer that holds the whole file (a memory map: pages are read as they are touched)."""

    def __init__(self, path: Path, buffer) -> None:
        self.path, self.buf, self.pos = path, memoryview(buffer), 0

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> memoryview:
        if n > self.remaining():
            raise CheckpointError(f"{self.path.name}: truncated GGUF header (needs {self.pos + n} bytes, file has "
                                  f"{len(self.buf)})")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, limit: int, min_item_nbytes: int) -> int:
        """A u64 count, checked against `limit` and against the bytes left (each item takes at least
        `min_item_nbytes`) before anything of that size is allocated."""
        n = self.scalar("<Q")
        if n > limit:
            raise CheckpointError(f"{self.path.name}: {what} count {n} is over the limit of {limit}")
        if n * min_item_nbytes > self.remaining():
            raise CheckpointError(f"{self.path.name}: {what} count {n} does not fit in the {self.remaining()} bytes "
                                  "left in the file (truncated or damaged header)")
        return n

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > MAX_STRING_NBYTES or n > self.remaining():
            raise CheckpointError(f"{self.path.name}: a string at byte {self.pos - 8} claims {n} bytes, more than "
                                  + (f"the limit of {MAX_STRING_NBYTES // 2**20} MiB" if n > MAX_STRING_NBYTES else
                                     f"the {self.remaining()} bytes left in the file"))
        try:
            return str(self.take(n), "utf-8")
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
                if pos + n > end or n > MAX_STRING_NBYTES:
                    raise struct.error
                append(str(buf[pos : pos + n], "utf-8"))
                pos += n
        except struct.error:
            raise CheckpointError(f"{self.path.name}: truncated GGUF header (a string array runs past the end of "
                                  f"the file at byte {pos})") from None
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path.name}: a string at byte {pos} is not UTF-8") from e
        self.pos = pos
        return out

    def value(self, kind: int, key: str):
        if kind == STRING:
            return self.string(), None
        if kind == ARRAY:
            subtype = self.scalar("<I")
            if subtype == STRING:
                return self.strings(self.count(f"key '{key}': array", MAX_ARRAY_ITEMS, 8)), subtype
            if subtype not in NUMERIC:
                raise CheckpointError(f"{self.path.name}: key '{key}' is an array of unsupported type {subtype}")
            dtype = np.dtype(NUMERIC[subtype])
            count = self.count(f"key '{key}': array", MAX_ARRAY_ITEMS, dtype.itemsize)
            return np.frombuffer(self.take(count * dtype.itemsize), dtype).copy(), subtype
        if kind not in NUMERIC:
            raise CheckpointError(f"{self.path.name}: key '{key}' has unknown value type {kind}")
        return np.frombuffer(self.take(np.dtype(NUMERIC[kind]).itemsize), NUMERIC[kind])[0].item(), None


def read_gguf(path: Path) -> GgufFile:
    """Parse header, metadata and tensor infos; check that the data offsets are the ones llama.cpp expects.

    The file is memory-mapped, so only the header's pages are ever read, never the tensor data, and nothing is
    allocated from a count or a length before it is checked against the bytes that remain.
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise CheckpointError(f"{path.name}: too short to be a GGUF file ({size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                reader = _Reader(path, mapped)
                try:
                    return _parse(path, reader, size)
                finally:
                    reader.buf.release()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from e


def _check_key_type(path: Path, kv: KeyValue) -> None:
    wanted = KEY_TYPES.get(kv.key)
    if wanted is not None and (kv.type, kv.subtype if kv.type == ARRAY else None) != wanted:
        raise CheckpointError(f"{path.name}: key '{kv.key}' is {type_name(kv.type, kv.subtype)}; llama.cpp requires "
                              f"{type_name(*wanted)}")


def _parse(path: Path, reader: _Reader, size: int) -> GgufFile:
    if bytes(reader.take(4)) != MAGIC:
        raise CheckpointError(f"{path.name}: not a GGUF file (magic {bytes(reader.buf[:4])!r})")
    version = reader.scalar("<I")
    if version not in (2, 3):
        raise CheckpointError(f"{path.name}: GGUF version {version} is not supported (2, 3)")
    n_tensors = reader.count("tensor", MAX_TENSORS, MIN_TENSOR_INFO_NBYTES)
    n_kv = reader.count("key-value", MAX_KVS, MIN_KV_NBYTES)
    kvs: dict[str, KeyValue] = {}
    for _ in range(n_kv):
        key = reader.string()
        kind = reader.scalar("<I")
        value, subtype = reader.value(kind, key)
        if key in kvs:
            raise CheckpointError(f"{path.name}: key '{key}' appears twice")
        kvs[key] = KeyValue(key, kind, value, subtype)
        _check_key_type(path, kvs[key])
    infos, names = [], set()
    for _ in range(n_tensors):
        name = reader.string()
        if name in names:
            raise CheckpointError(f"{path.name}: tensor '{name}' appears twice")
        names.add(name)
        n_dims = reader.scalar("<I")
        if n_dims > 4:
            raise CheckpointError(f"{path.name}: tensor '{name}' has {n_dims} dimensions (at most 4)")
        ne = tuple(reader.scalar("<Q") for _ in range(n_dims))
        infos.append((name, ne, reader.scalar("<I"), reader.scalar("<Q")))
    infos_end = reader.pos
    alignment = int(kvs[General.ALIGNMENT].value) if General.ALIGNMENT in kvs else DEFAULT_ALIGNMENT
    if alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"{path.name}: {General.ALIGNMENT} {alignment} is not a power of two")
    header_end = -(-infos_end // alignment) * alignment
    tensors, expected = [], 0
    for name, ne, ggml_type, offset in infos:
        where = f"{path.name}: tensor '{name}'"
        if any(d >= 2**63 for d in ne):
            raise CheckpointError(f"{where}: a dimension of {max(ne)} elements")
        nbytes = tensor_nbytes(ggml_type, ne, where)
        if offset != expected:
            raise CheckpointError(f"{where} is at data offset {offset}, expected {expected}")
        if header_end + offset + nbytes > size:
            raise CheckpointError(f"{where} runs past the end of the file")
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
