"""Synthetic checkpoints with the exact tensor names, shapes, dtypes and sharding of real models.

Tensor data is random bytes (zeros or sparse files would make reads unrealistically fast). The tokenizer is
a synthetic byte-level BPE of the right size: 256 byte characters, then tokens built by merges of earlier
tokens, so every id < vocab is a real, reachable token and the merge closure of a low id stays below it.

    python benchmarks/synthetic.py qwen3-4b /data/qwen3-4b-synthetic
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from surgery.formats.safetensors import ShardWriter, TensorSpec, write_all  # noqa: E402
from surgery.tokenizer.bpe import BYTE_LEVEL_ALPHABET  # noqa: E402

CHUNK = 64 * 2**20


@dataclass(frozen=True)
class Shape:
    model_type: str
    architecture: str
    vocab: int  # embedding rows
    n_tokens: int  # tokenizer ids (rows past it are padding, as in Qwen)
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    shard_nbytes: int
    qk_norm: bool = False


SHAPES = {
    # Qwen/Qwen3-4B config.json: bf16, tied, 3 shards
    "qwen3-4b": Shape("qwen3", "Qwen3ForCausalLM", 151936, 151669, 2560, 9728, 36, 32, 8, 128, True, 4 * 10**9,
                      qk_norm=True),
    # meta-llama/Meta-Llama-3-8B config.json: bf16, untied, 4 shards
    "llama3-8b": Shape("llama", "LlamaForCausalLM", 128256, 128256, 4096, 14336, 32, 32, 8, 128, False, 5 * 10**9),
    # Qwen/Qwen3-0.6B config.json: bf16, tied, one shard; the size most people trim
    "qwen3-0.6b": Shape("qwen3", "Qwen3ForCausalLM", 151936, 151669, 1024, 3072, 28, 16, 8, 128, True, 5 * 10**9,
                        qk_norm=True),
    # google/gemma-3-270m config.json: 262k SentencePiece vocabulary, tied; the GGUFs people download are small
    "gemma3-270m": Shape("gemma3_text", "Gemma3ForCausalLM", 262144, 262144, 640, 2048, 18, 4, 1, 256, True,
                         5 * 10**9, qk_norm=True),
    # HuggingFaceTB/SmolLM2-135M config.json: 49k byte-level BPE, tied
    "smollm2-135m": Shape("llama", "LlamaForCausalLM", 49152, 49152, 576, 1536, 30, 9, 3, 64, True, 5 * 10**9),
    # small, for the memory test and CI: the real Qwen vocabulary with a narrow model
    "tiny": Shape("qwen3", "Qwen3ForCausalLM", 151936, 151669, 1024, 1024, 2, 8, 2, 128, True, 300 * 10**6,
                  qk_norm=True),
}


def tensor_specs(shape: Shape) -> list[TensorSpec]:
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    specs = [TensorSpec("model.embed_tokens.weight", "BF16", (shape.vocab, h))]
    for layer in range(shape.layers):
        p = f"model.layers.{layer}."
        specs += [
            TensorSpec(p + "self_attn.q_proj.weight", "BF16", (q, h)),
            TensorSpec(p + "self_attn.k_proj.weight", "BF16", (kv, h)),
            TensorSpec(p + "self_attn.v_proj.weight", "BF16", (kv, h)),
            TensorSpec(p + "self_attn.o_proj.weight", "BF16", (h, q)),
            TensorSpec(p + "mlp.gate_proj.weight", "BF16", (shape.intermediate, h)),
            TensorSpec(p + "mlp.up_proj.weight", "BF16", (shape.intermediate, h)),
            TensorSpec(p + "mlp.down_proj.weight", "BF16", (h, shape.intermediate)),
            TensorSpec(p + "input_layernorm.weight", "BF16", (h,)),
            TensorSpec(p + "post_attention_layernorm.weight", "BF16", (h,)),
        ]
        if shape.qk_norm:
            specs += [TensorSpec(p + "self_attn.q_norm.weight", "BF16", (shape.head_dim,)),
                      TensorSpec(p + "self_attn.k_norm.weight", "BF16", (shape.head_dim,))]
    specs.append(TensorSpec("model.norm.weight", "BF16", (h,)))
    if not shape.tied:
        specs.append(TensorSpec("lm_head.weight", "BF16", (shape.vocab, h)))
    return specs


def plan_shards(specs: list[TensorSpec], shard_nbytes: int) -> list[list[TensorSpec]]:
    """Greedy in checkpoint order, as transformers' save_pretrained does."""
    shards, current, size = [], [], 0
    for spec in specs:
        if current and size + spec.nbytes > shard_nbytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += spec.nbytes
    return shards + [current]


def write_checkpoint(name: str, root: Path, seed: int = 0, values: bool = False) -> Path:
    """`values`: finite BF16 numbers (normal, std 0.02) instead of random bytes, for verbs that compute."""
    shape = SHAPES[name]
    root.mkdir(parents=True, exist_ok=False)
    rng = np.random.default_rng(seed)
    shards = plan_shards(tensor_specs(shape), shape.shard_nbytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for shard_name, specs in zip(names, shards):
        writer = ShardWriter(root / shard_name, {"format": "pt"})
        for spec in specs:
            writer.add(spec)
            weight_map[spec.name] = shard_name
        for spec in writer.write_header():
            fill = _normal_bf16 if values else _random_bytes
            writer.write_tensor(spec.name, lambda fd, n=spec.nbytes, fill=fill: fill(fd, n, rng))
        writer.close()
    total = sum(s.nbytes for specs in shards for s in specs)
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    (root / "config.json").write_text(json.dumps(_config(shape), indent=2))
    (root / "tokenizer.json").write_text(json.dumps(synthetic_bpe(shape.n_tokens - 3, seed), ensure_ascii=False))
    return root


def _random_bytes(fd: int, nbytes: int, rng: np.random.Generator) -> None:
    while nbytes:
        step = min(nbytes, CHUNK)
        write_all(fd, rng.bytes(step))
        nbytes -= step


def _normal_bf16(fd: int, nbytes: int, rng: np.random.Generator) -> None:
    while nbytes:
        step = min(nbytes, CHUNK)
        values = (0.02 * rng.standard_normal(step // 2, dtype=np.float32)).view(np.uint32)
        write_all(fd, (values >> 16).astype("<u2").tobytes())
        nbytes -= step


def _config(shape: Shape) -> dict:
    return {
        "architectures": [shape.architecture], "model_type": shape.model_type, "vocab_size": shape.vocab,
        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate, "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim,
        "tie_word_embeddings": shape.tied, "torch_dtype": "bfloat16", "bos_token_id": shape.n_tokens - 3,
        "eos_token_id": shape.n_tokens - 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    }


def synthetic_bpe(n_model_tokens: int, seed: int = 0) -> dict:
    """A byte-level BPE tokenizer.json with n_model_tokens tokens, then 3 special added tokens."""
    rng = np.random.default_rng(seed)
    tokens = list(BYTE_LEVEL_ALPHABET)
    known = set(tokens)
    merges = []
    while len(tokens) < n_model_tokens:
        left, right = rng.integers(0, len(tokens), 2 * 4096).reshape(2, -1)
        for a, b in zip(left.tolist(), right.tolist()):
            merged = tokens[a] + tokens[b]
            if len(merged) <= 12 and merged not in known and len(tokens) < n_model_tokens:
                known.add(merged)
                tokens.append(merged)
                merges.append([tokens[a], tokens[b]])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": n_model_tokens + i, "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    write_checkpoint(args.shape, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
