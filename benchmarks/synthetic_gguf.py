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


def tensor_types(shape: Shape, ftype: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, ne, ggml type) in llama.cpp's order."""
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    big, high = ("BF16", "BF16") if ftype == "bf16" else ("Q4_K", "Q6_K")
    tensors = [("token_embd.weight", (h, shape.vocab), big)]
    for layer in range(shape.layers):
        p = f"blk.{layer}."
        use_high = ftype != "bf16" and layer % 2 == 0  # Q4_K_M: more bits for half of attn_v and ffn_down
        tensors += [(p + "attn_norm.weight", (h,), "F32"), (p + "attn_q.weight", (h, q), big),
                    (p + "attn_k.weight", (h, kv), big), (p + "attn_v.weight", (h, kv), high if use_high else big),
                    (p + "attn_output.weight", (q, h), big), (p + "ffn_norm.weight", (h,), "F32"),
                    (p + "ffn_gate.weight", (h, shape.intermediate), big),
                    (p + "ffn_up.weight", (h, shape.intermediate), big),
                    (p + "ffn_down.weight", (shape.intermediate, h), high if use_high else big)]
        if shape.qk_norm:
            tensors += [(p + "attn_q_norm.weight", (shape.head_dim,), "F32"),
                        (p + "attn_k_norm.weight", (shape.head_dim,), "F32")]
    tensors.append(("output_norm.weight", (h,), "F32"))
    if not shape.tied:
        tensors.append(("output.weight", (h, shape.vocab), high))
    return tensors


def metadata(shape: Shape, ftype: str, seed: int) -> list[KeyValue]:
    bpe = synthetic_bpe(shape.n_tokens - 3, seed)
    tokens = list(bpe["model"]["vocab"]) + [a["content"] for a in bpe["added_tokens"]]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), shape.vocab)]
    types = [1] * (shape.n_tokens - 3) + [3, 3, 3] + [5] * (shape.vocab - shape.n_tokens)
    arch = "qwen3"
    return [
        KeyValue("general.architecture", STRING, arch), KeyValue("general.name", STRING, f"synthetic {ftype}"),
        KeyValue(f"{arch}.block_count", UINT32, shape.layers), KeyValue(f"{arch}.embedding_length", UINT32, shape.hidden),
        KeyValue(f"{arch}.feed_forward_length", UINT32, shape.intermediate),
        KeyValue(f"{arch}.attention.head_count", UINT32, shape.heads),
        KeyValue(f"{arch}.attention.head_count_kv", UINT32, shape.kv_heads),
        KeyValue("tokenizer.ggml.model", STRING, "gpt2"), KeyValue("tokenizer.ggml.pre", STRING, "qwen2"),
        KeyValue("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
        KeyValue("tokenizer.ggml.token_type", ARRAY, np.array(types, np.int32), INT32),
        KeyValue("tokenizer.ggml.merges", ARRAY, [f"{a} {b}" for a, b in bpe["model"]["merges"]], STRING),
        KeyValue("tokenizer.ggml.eos_token_id", UINT32, shape.n_tokens - 1),
        KeyValue("tokenizer.ggml.padding_token_id", UINT32, shape.n_tokens - 3),
        KeyValue("tokenizer.ggml.bos_token_id", UINT32, shape.n_tokens - 3),
        KeyValue("general.file_type", UINT32, 15 if ftype == "q4_k_m" else 32),
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
    parser.add_argument("ftype", choices=["bf16", "q4_k_m"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(write_gguf(args.shape, args.ftype, args.out))


if __name__ == "__main__":
    main()
