"""Shared test helpers: fixture copies, the CLI runner, and tiny checkpoints built around fixture tokenizers."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from surgery.cli import cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"
CORPUS = FIXTURES / "corpus"
KEEP = FIXTURES / "keep"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def copy_fixture(tmp_path):
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(FIXTURES / name, target)
        return target

    return copy


def run_cli(args: list[str], exit_code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == exit_code, (result.exit_code, result.stderr, result.exception)
    return result


def corpus_lines(name: str) -> list[str]:
    return [line for line in (CORPUS / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_keep(path: Path, ids) -> Path:
    path.write_text("\n".join(str(int(i)) for i in sorted(set(ids))) + "\n")
    return path


def tokenizer_checkpoint(kind: str | Path, root: Path, *, extra_rows: int = 0) -> Path:
    """A minimal checkpoint around a tokenizer (a fixture kind, or a folder): config.json and a random F32 embedding."""
    from surgery.formats.safetensors import ShardWriter, TensorSpec, write_all

    root.mkdir(parents=True)
    for path in (kind if isinstance(kind, Path) else TOKENIZERS / kind).iterdir():
        shutil.copy(path, root / path.name)
    from surgery.tokenizer import TokenizerFiles

    n_rows = TokenizerFiles.load(root).size() + extra_rows
    (root / "config.json").write_text(json.dumps({"vocab_size": n_rows, "model_type": "test"}))
    embed = np.random.default_rng(0).standard_normal((n_rows, 4)).astype(np.float32)
    writer = ShardWriter(root / "model.safetensors", {"format": "pt"})
    writer.add(TensorSpec("model.embed_tokens.weight", "F32", embed.shape))
    writer.write_header()
    writer.write_tensor("model.embed_tokens.weight", lambda fd: write_all(fd, embed.tobytes()))
    writer.close()
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name]


def make_plan(root, keep=KEEP / "basic.txt", **options):
    """The vocabulary trim plan of a checkpoint folder, as trim makes it."""
    from surgery.formats.hf_folder import Checkpoint
    from surgery.model.vocab_tensors import find_vocab_tensors
    from surgery.tokenizer import TokenizerFiles
    from surgery.verbs.keep_list import KeepList
    from surgery.verbs.trim import plan_trim

    ckpt = Checkpoint.open(root)
    vocab = find_vocab_tensors(ckpt)
    return plan_trim(ckpt, vocab, TokenizerFiles.load(root), KeepList.load(keep, vocab.n_rows), **options)


def small_gguf(path: Path, extra_kvs=(), blocks=(0, 1)) -> Path:
    """A Llama GGUF written by our writer: a byte-level BPE tokenizer (258 tokens, two merges), F32 tensors,
    an attention norm for each of `blocks`."""
    from surgery.formats.gguf import ARRAY, FLOAT32, INT32, STRING, UINT32, KeyValue, data_offsets, encode_header
    from surgery.tokenizer.bpe import BYTE_LEVEL_ALPHABET

    tokens = [*BYTE_LEVEL_ALPHABET, "ab", "abc"]
    n = len(tokens)
    kvs = [
        KeyValue("general.architecture", STRING, "llama"),
        KeyValue("llama.block_count", UINT32, 2),
        KeyValue("llama.embedding_length", UINT32, 4),
        KeyValue("tokenizer.ggml.model", STRING, "gpt2"),
        KeyValue("tokenizer.ggml.tokens", ARRAY, tokens, STRING),
        KeyValue("tokenizer.ggml.token_type", ARRAY, np.ones(n, np.int32), INT32),
        KeyValue("tokenizer.ggml.scores", ARRAY, np.zeros(n, np.float32), FLOAT32),
        KeyValue("tokenizer.ggml.merges", ARRAY, ["a b", "ab c"], STRING),
        KeyValue("tokenizer.ggml.bos_token_id", UINT32, 0),
        *extra_kvs,
    ]
    tensors = [("token_embd.weight", (4, n)), *((f"blk.{b}.attn_norm.weight", (4,)) for b in blocks)]
    nbytes = [4 * int(np.prod(ne)) for _, ne in tensors]
    offsets = data_offsets(nbytes, 32)
    header = encode_header(3, kvs, [(name, ne, 0, o) for (name, ne), o in zip(tensors, offsets)], 32)
    data = bytearray(offsets[-1] + nbytes[-1])
    data[:] = np.random.default_rng(0).standard_normal(len(data) // 4).astype(np.float32).tobytes()
    path.write_bytes(header + bytes(data))
    return path


@dataclass(frozen=True)
class Arch:
    """A tiny model family for the verb tests: its transformers config and model classes and their options."""

    name: str
    config: str
    model: str
    kwargs: dict = field(default_factory=dict)
    shard_size: str | None = None  # save_pretrained's max_shard_size, where a test wants several shards


# the sizes of the tiny transformers models that prune and factor prove their logits on (two layers, GQA)
TINY_CONFIG = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, max_position_embeddings=64)


def build_tiny(arch: Arch, root: Path, base: dict, dtype=None):
    """A tiny random model of `arch` saved to `root` (seeded), biases and norms drawn at random so they count;
    phi3-fused takes no head_dim. Returns the model."""
    import torch
    import transformers

    kwargs = {**base, **arch.kwargs}
    if arch.name == "phi3-fused":
        kwargs.pop("head_dim")
    config = getattr(transformers, arch.config)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, arch.model)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.normal_()  # untrained biases are zero and norms one: make them count
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(root)
    return model


# ---- a tiny Llama-shaped model in both containers, for the cut verbs (no torch) -------------------------------

H, I, N_HEADS, HEAD_DIM, LAYERS = 8, 12, 2, 4, 3  # hidden, intermediate, heads, head_dim, layers


def tiny_folder(root):
    """A Llama-shaped folder of F32 tensors (no torch needed): enough for drop-layers and prune to plan and write."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    weights = {"model.embed_tokens.weight": rng.standard_normal((16, H)), "model.norm.weight": rng.standard_normal(H)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        weights.update({p + "self_attn.q_proj.weight": rng.standard_normal((N_HEADS * HEAD_DIM, H)),
                        p + "self_attn.k_proj.weight": rng.standard_normal((HEAD_DIM, H)),
                        p + "self_attn.v_proj.weight": rng.standard_normal((HEAD_DIM, H)),
                        p + "self_attn.o_proj.weight": rng.standard_normal((H, N_HEADS * HEAD_DIM)),
                        p + "mlp.gate_proj.weight": rng.standard_normal((I, H)),
                        p + "mlp.up_proj.weight": rng.standard_normal((I, H)),
                        p + "mlp.down_proj.weight": rng.standard_normal((H, I)),
                        p + "input_layernorm.weight": rng.standard_normal(H),
                        p + "post_attention_layernorm.weight": rng.standard_normal(H)})
    root.mkdir()
    save_file({k: v.astype(np.float32) for k, v in weights.items()}, root / "model.safetensors")
    (root / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 16, "hidden_size": H,
        "intermediate_size": I, "num_hidden_layers": LAYERS, "num_attention_heads": N_HEADS,
        "num_key_value_heads": 1, "head_dim": HEAD_DIM}))
    return root


def tiny_gguf(path):
    """The same model as a GGUF file written by our writer (F32, llama names and keys)."""
    from surgery.formats.gguf import STRING, UINT32, KeyValue, data_offsets, encode_header

    kvs = [KeyValue("general.architecture", STRING, "llama"), KeyValue("llama.block_count", UINT32, LAYERS),
           KeyValue("llama.embedding_length", UINT32, H), KeyValue("llama.feed_forward_length", UINT32, I),
           KeyValue("llama.attention.head_count", UINT32, N_HEADS),
           KeyValue("llama.attention.head_count_kv", UINT32, 1),
           KeyValue("llama.attention.key_length", UINT32, HEAD_DIM)]
    tensors = [("token_embd.weight", (H, 16)), ("output_norm.weight", (H,))]
    for i in range(LAYERS):
        tensors += [(f"blk.{i}.attn_q.weight", (H, N_HEADS * HEAD_DIM)), (f"blk.{i}.attn_k.weight", (H, HEAD_DIM)),
                    (f"blk.{i}.attn_v.weight", (H, HEAD_DIM)), (f"blk.{i}.attn_output.weight", (N_HEADS * HEAD_DIM, H)),
                    (f"blk.{i}.ffn_gate.weight", (H, I)), (f"blk.{i}.ffn_up.weight", (H, I)),
                    (f"blk.{i}.ffn_down.weight", (I, H)), (f"blk.{i}.attn_norm.weight", (H,)),
                    (f"blk.{i}.ffn_norm.weight", (H,))]
    nbytes = [4 * int(np.prod(ne)) for _, ne in tensors]
    offsets = data_offsets(nbytes, 32)
    header = encode_header(3, kvs, [(name, ne, 0, o) for (name, ne), o in zip(tensors, offsets)], 32)
    data = np.random.default_rng(1).standard_normal((offsets[-1] + nbytes[-1]) // 4).astype(np.float32)
    path.write_bytes(header + data.tobytes())
    return path


def importance_file(path):
    rng = np.random.default_rng(2)
    path.write_text(json.dumps({"format": "surgery-importance/1", "layers": rng.random(LAYERS).tolist(),
                                "mlp": rng.random((LAYERS, I)).tolist(), "heads": rng.random((LAYERS, N_HEADS)).tolist(),
                                "hidden": rng.random(H).tolist()}))
    return path
