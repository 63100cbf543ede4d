"""Synthetic GGUF files with the tensor names, shapes, ggml types and metadata of real ones, random bytes inside.

    python benchmarks/synthetic_gguf.py qwen3-4b q4_k_m /data/qwen3-4b-Q4_K_M.gguf

Types follow llama-quantize's choices for the named file type: Q4_K_M keeps token_embd in Q4_K, output and
half of attn_v / ffn_down in Q6_K (a tied model has no output.weight); BF16 is BF16 with F32 norms. The
tokenizer metadata is the synthetic byte-level BPE of synthetic.py (gpt2 model, `qwen2` pre-tokenizer), padded
with [PAD] tokens to the embedding rows as llama.cpp's converter does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from synthetic import SHAPES, Shape, _random_bytes, synthetic_bpe  # noqa: E402

from surgery.formats.gguf import (  # noqa: E402
    ARRAY,
    FLOAT32,
    GGML_TYPES,
    INT32,
    STRING,
    UINT32,
    KeyValue,
    data_offsets,
    encode_header,
    tensor_nbytes,
)
from surgery.formats.safetensors import write_all  # noqa: E402

TYPE_IDS = {name: number for number, (name, _, _) in GGML_TYPES.items()}


FTYPES = {"bf16": ("BF16", "BF16", 32), "q4_k_m": ("Q4_K", "Q6_K", 15), "q4_1": ("Q4_1", "Q6_K", 3)}
K_QUANT_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}  # llama-quant.cpp: rows not a multiple of 256


def _quant(ggml_type: str, row: int) -> str:
    return K_QUANT_FALLBACK.get(ggml_type, ggml_type) if row % 256 else ggml_type


def tensor_types(shape: Shape, ftype: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, ne, ggml type) in llama.cpp's order, typed as llama-quantize types them: output.weight (or the
    tied token_embd) at the high type, Q4_K_M's high type on half of attn_v and ffn_down."""
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    big, high, _ = FTYPES[ftype]
    tensors = [("token_embd.weight", (h, shape.vocab), _quant(high if shape.tied else big, h))]
    for layer in range(shape.layers):
        p = f"blk.{layer}."
        more = high if ftype == "q4_k_m" and layer % 2 == 0 else big
        tensors += [(p + "attn_norm.weight", (h,), "F32"), (p + "attn_q.weight", (h, q), _quant(big, h)),
                    (p + "attn_k.weight", (h, kv), _quant(big, h)), (p + "attn_v.weight", (h, kv), _quant(more, h)),
                    (p + "attn_output.weight", (q, h), _quant(big, q)), (p + "ffn_norm.weight", (h,), "F32"),
                    (p + "ffn_gate.weight", (h, shape.intermediate), _quant(big, h)),
                    (p + "ffn_up.weight", (h, shape.intermediate), _quant(big, h)),
                    (p + "ffn_down.weight", (shape.intermediate, h), _quant(more, shape.intermediate))]
        if shape.qk_norm:
            tensors += [(p + "attn_q_norm.weight", (shape.head_dim,), "F32"),
                        (p + "attn_k_norm.weight", (shape.head_dim,), "F32")]
    tensors.append(("output_norm.weight", (h,), "F32"))
    if not shape.tied:
        tensors.append(("output.weight", (h, shape.vocab), _quant(high, h)))
    return tensors


def vocabulary(shape: Shape, seed: int) -> list[KeyValue]:
    """A byte-level BPE (gpt2: tokens and merges) or, for SentencePiece families (gemma), a llama-type vocabulary:
    specials, 256 byte pieces, then pieces built by merges, each scored by its merge order."""
    if shape.model_type.startswith("gemma"):
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
        bpe = synthetic_bpe(shape.vocab - len(specials) - 256, seed)
        pieces = list(bpe["model"]["vocab"])
        tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
        types = [3, 3, 3, 2] + [6] * 256 + [1] * len(pieces)
        scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))]
        return [KeyValue("tokenizer.ggml.model", STRING, "llama"), KeyValue("tokenizer.ggml.pre", STRING, "default"),
                KeyValue("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
                KeyValue("tokenizer.ggml.scores", ARRAY, np.array(scores, np.float32), FLOAT32),
                KeyValue("tokenizer.ggml.token_type", ARRAY, np.array(types, np.int32), INT32),
                KeyValue("tokenizer.ggml.bos_token_id", UINT32, 2), KeyValue("tokenizer.ggml.eos_token_id", UINT32, 1),
                KeyValue("tokenizer.ggml.unknown_token_id", UINT32, 3),
                KeyValue("tokenizer.ggml.padding_token_id", UINT32, 0)]
    bpe = synthetic_bpe(shape.n_tokens - 3, seed)
    tokens = list(bpe["model"]["vocab"]) + [a["content"] for a in bpe["added_tokens"]]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), shape.vocab)]
    types = [1] * (shape.n_tokens - 3) + [3, 3, 3] + [5] * (shape.vocab - shape.n_tokens)
    return [KeyValue("tokenizer.ggml.model", STRING, "gpt2"), KeyValue("tokenizer.ggml.pre", STRING, "qwen2"),
            KeyValue("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
            KeyValue("tokenizer.ggml.token_type", ARRAY, np.array(types, np.int32), INT32),
            KeyValue("tokenizer.ggml.merges", ARRAY, [f"{a} {b}" for a, b in bpe["model"]["merges"]], STRING),
            KeyValue("tokenizer.ggml.eos_token_id", UINT32, shape.n_tokens - 1),
            KeyValue("tokenizer.ggml.padding_token_id", UINT32, shape.n_tokens - 3),
            KeyValue("tokenizer.ggml.bos_token_id", UINT32, shape.n_tokens - 3)]


def metadata(shape: Shape, ftype: str, seed: int) -> list[KeyValue]:
    arch = "qwen3"  # the block layout of every shape here; the vocabulary is what differs
    return [
        KeyValue("general.architecture", STRING, arch), KeyValue("general.name", STRING, f"synthetic {ftype}"),
        KeyValue(f"{arch}.block_count", UINT32, shape.layers), KeyValue(f"{arch}.embedding_length", UINT32, shape.hidden),
        KeyValue(f"{arch}.feed_forward_length", UINT32, shape.intermediate),
        KeyValue(f"{arch}.attention.head_count", UINT32, shape.heads),
        KeyValue(f"{arch}.attention.head_count_kv", UINT32, shape.kv_heads),
        *vocabulary(shape, seed),
        KeyValue("general.file_type", UINT32, FTYPES[ftype][2]),
        KeyValue("general.quantization_version", UINT32, 2),
        KeyValue(f"{arch}.rope.freq_base", FLOAT32, 1000000.0),
    ]


def write_gguf(name: str, ftype: str, path: Path, seed: int = 0) -> Path:
    shape = SHAPES[name]
    tensors = tensor_types(shape, ftype)
    nbytes = [tensor_nbytes(TYPE_IDS[t], ne, n) for n, ne, t in tensors]
    offsets = data_offsets(nbytes, 32)
    header = encode_header(3, metadata(shape, ftype, seed), [(n, ne, TYPE_IDS[t], o)
                                                             for (n, ne, t), o in zip(tensors, offsets)], 32)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        write_all(f.fileno(), header)
        for n in nbytes:
            _random_bytes(f.fileno(), n, rng)
            write_all(f.fileno(), b"\0" * (-n % 32))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("ftype", choices=sorted(FTYPES))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(write_gguf(args.shape, args.ftype, args.out))


if __name__ == "__main__":
    main()
