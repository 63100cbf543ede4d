"""One table of element layouts for both containers: safetensors dtype codes and ggml types.

A slice of a tensor (a row, or a run of columns) can be cut as bytes only when it holds whole bytes (packed
safetensors dtypes F4, F6) or whole blocks (quantized ggml types); columns only when each element is its own
block. Every verb asks these questions here.
"""

from __future__ import annotations

# Bits per element, in the order of safetensors' `Dtype` enum (safetensors/src/tensor.rs). The writer sorts
# tensors by this order, descending, then by name, exactly as `safetensors.serialize` does.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
# ggml type -> (name, elements per block, bytes per block): gguf-py GGML_QUANT_SIZES. A row (ne0 elements) is a
# whole number of blocks. Types 31-33 and 36-38 (Q4_0_4_4 ... IQ4_NL_8_8) interleaved rows and were removed.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}
INTERLEAVED_TYPES = {31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8",
                     38: "IQ4_NL_8_8"}


def whole_bytes(dtype: str, elements: int) -> int | None:
    """Bytes of `elements` consecutive safetensors elements, or None when they do not fill whole bytes."""
    bits = DTYPE_BITS[dtype] * elements
    return bits // 8 if bits % 8 == 0 else None


def columns_cuttable(dtype: str | int) -> bool:
    """Whether single columns can be cut out: each element whole bytes (safetensors) or its own block (ggml)."""
    if isinstance(dtype, int):
        return dtype in GGML_TYPES and GGML_TYPES[dtype][1] == 1
    return DTYPE_BITS[dtype] % 8 == 0


# ---- values: the float dtypes a computing verb decodes and encodes -------------------------------------------
FLOAT_DTYPES = ("F32", "F16", "BF16")


def decode(raw, dtype: str, shape: tuple[int, ...]):
    """Little-endian F32/F16/BF16 bytes as a float32 numpy array of `shape` (BF16 is the top half of an F32)."""
    import numpy as np

    if dtype == "F32":
        values = np.frombuffer(raw, "<f4")
    elif dtype == "F16":
        values = np.frombuffer(raw, "<f2").astype(np.float32)
    elif dtype == "BF16":
        values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        raise ValueError(f"decode: {dtype} is not one of {', '.join(FLOAT_DTYPES)}")
    return values.reshape(shape)


def encode(values, dtype: str) -> bytes:
    """A float array as little-endian F32/F16/BF16 bytes, rounded to nearest even (as torch rounds)."""
    import numpy as np

    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        with np.errstate(over="ignore"):  # beyond 65504 is inf, as in torch
            return values.astype("<f2").tobytes()
    if dtype == "BF16":
        bits = values.view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
        nan = np.isnan(values)
        if nan.any():
            rounded[nan] = 0x7FC0
        return rounded.tobytes()
    raise ValueError(f"encode: {dtype} is not one of {', '.join(FLOAT_DTYPES)}")
