"""surgery verify on drop-layers and prune output folders: the cut replayed from its record, every tensor compared
whole with numpy views; one changed byte, row, column or config size is found and named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import surgery
from surgery.formats.hf_folder import Checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny(root: Path, moe: bool = False) -> Path:
    kwargs = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)
    if moe:
        config = transformers.Qwen3MoeConfig(**kwargs, moe_intermediate_size=8, num_experts=4, num_experts_per_tok=2,
                                             decoder_sparse_step=1)
        model = transformers.Qwen3MoeForCausalLM(config)
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs, mlp_bias=True))
    torch.manual_seed(0)
    model.save_pretrained(root, max_shard_size="40KB")
    return root


def importance(path: Path, experts: int = 4) -> Path:
    rng = np.random.default_rng(3)
    path.write_text(json.dumps({"format": "surgery-importance/1", "mlp": rng.random((3, 48)).tolist(),
                                "heads": rng.random((3, 4)).tolist(), "hidden": rng.random(32).tolist(),
                                "experts": rng.random((3, experts)).tolist(),
                                "experts_mlp": rng.random((3, experts, 8)).tolist()}))
    return path


def damage(root: Path, tensor: str, row: int) -> None:
    """Flip one byte of one row of an output tensor, in place."""
    entry = Checkpoint.open(root).tensors()[tensor]
    offset = entry.begin + row * entry.row_nbytes(0)
    with open(entry.path, "r+b") as f:
        value = os.pread(f.fileno(), 1, offset)
        os.pwrite(f.fileno(), bytes([value[0] ^ 0x40]), offset)


@pytest.mark.parametrize("cut", ["drop-layers", "prune-mlp-heads", "prune-hidden", "prune-experts"])
def test_a_cut_is_proved_and_one_changed_row_is_named(cut, tmp_path):
    src = tiny(tmp_path / "src", moe=cut == "prune-experts")
    out = tmp_path / "out"
    if cut == "drop-layers":
        surgery.drop_layers(src, out, drop="1")
        tensor, row = "model.layers.1.mlp.down_proj.weight", 5  # the old layer 2, renamed
    elif cut == "prune-mlp-heads":
        surgery.prune(src, importance(tmp_path / "imp.json"), out, intermediate_size=32, num_attention_heads=2)
        tensor, row = "model.layers.2.mlp.down_proj.weight", 7  # its columns were cut
    elif cut == "prune-hidden":
        surgery.prune(src, importance(tmp_path / "imp.json"), out, hidden_size=24)
        tensor, row = "model.embed_tokens.weight", 40
    else:
        surgery.prune(src, importance(tmp_path / "imp.json"), out, num_experts=2, moe_intermediate_size=4)
        tensor, row = "model.layers.0.mlp.experts.1.down_proj.weight", 3
    result = surgery.verify(src, out)
    assert result.ok, result.to_json()
    assert "equal their source slices" in result.findings[0].detail
    damage(out, tensor, row)
    result = surgery.verify(src, out)
    assert result.failed == ["tensors"]
    assert f"'{tensor}'" in result.findings[0].detail and f"(output row {row})" in result.findings[0].detail
    printed = run_cli(["verify", src, out], exit_code=3)
    assert f"'{tensor}'" in printed.stderr and "FAIL tensors" in printed.stderr


def test_a_config_that_does_not_match_its_tensors_is_caught(tmp_path):
    src = tiny(tmp_path / "src")
    surgery.prune(src, importance(tmp_path / "imp.json"), tmp_path / "out", intermediate_size=32)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    config["intermediate_size"] = 48
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    result = surgery.verify(src, tmp_path / "out")
    assert result.failed == ["configs"] and "config.json" in result.findings[1].detail


def test_a_cut_with_a_corpus_is_refused(tmp_path):
    src = tiny(tmp_path / "src")
    surgery.drop_layers(src, tmp_path / "out", drop="0")
    with pytest.raises(surgery.InputError, match="keeps the source's tokenizer"):
        surgery.verify(src, tmp_path / "out", ["text.txt"])


def llama_gguf(path: Path) -> Path:
    """A 2-block Llama GGUF written by our writer (F32 and a Q8_0 embedding), sizes a prune can cut."""
    from surgery.formats.gguf import STRING, UINT32, KeyValue, data_offsets, encode_header

    h, ff, heads, kv, hd, vocab = 32, 64, 4, 2, 8, 40
    kvs = [KeyValue("general.architecture", STRING, "llama"), KeyValue("llama.block_count", UINT32, 2),
           KeyValue("llama.embedding_length", UINT32, h), KeyValue("llama.feed_forward_length", UINT32, ff),
           KeyValue("llama.attention.head_count", UINT32, heads),
           KeyValue("llama.attention.head_count_kv", UINT32, kv)]
    tensors = [("token_embd.weight", (h, vocab), 8), ("output_norm.weight", (h,), 0)]
    for b in range(2):
        tensors += [(f"blk.{b}.attn_norm.weight", (h,), 0), (f"blk.{b}.attn_q.weight", (h, heads * hd), 0),
                    (f"blk.{b}.attn_k.weight", (h, kv * hd), 0), (f"blk.{b}.attn_v.weight", (h, kv * hd), 0),
                    (f"blk.{b}.attn_output.weight", (heads * hd, h), 0), (f"blk.{b}.ffn_norm.weight", (h,), 0),
                    (f"blk.{b}.ffn_gate.weight", (h, ff), 0), (f"blk.{b}.ffn_up.weight", (h, ff), 0),
                    (f"blk.{b}.ffn_down.weight", (ff, h), 0)]
    nbytes = [int(np.prod(ne)) * 4 if t == 0 else int(np.prod(ne)) // 32 * 34 for _, ne, t in tensors]
    offsets = data_offsets(nbytes, 32)
    header = encode_header(3, kvs, [(name, ne, t, o) for (name, ne, t), o in zip(tensors, offsets)], 32)
    rng = np.random.default_rng(1)
    data = bytearray(rng.integers(0, 256, offsets[-1] + nbytes[-1], dtype=np.uint8).tobytes())
    for (name, ne, t), offset, n in zip(tensors, offsets, nbytes):
        if t == 0:
            data[offset : offset + n] = rng.standard_normal(n // 4).astype(np.float32).tobytes()
    path.write_bytes(header + bytes(data))
    return path


@pytest.mark.parametrize("cut", ["drop-layers", "prune"])
def test_a_gguf_cut_is_proved_and_one_changed_row_or_key_is_named(cut, tmp_path):
    src = llama_gguf(tmp_path / "m.gguf")
    out = tmp_path / "out.gguf"
    if cut == "drop-layers":
        surgery.drop_layers(src, out, drop="0")
        tensor, row = "blk.0.ffn_down.weight", 9  # the old block 1, renamed
    else:
        imp = {"format": "surgery-importance/1", "mlp": np.random.default_rng(0).random((2, 64)).tolist(),
               "heads": np.random.default_rng(1).random((2, 4)).tolist()}
        (tmp_path / "imp.json").write_text(json.dumps(imp))
        surgery.prune(src, tmp_path / "imp.json", out, intermediate_size=32, num_attention_heads=2)
        tensor, row = "blk.1.attn_output.weight", 30  # its columns were cut
    result = surgery.verify(src, out)
    assert result.ok, result.to_json()
    assert [f.check for f in result.findings] == ["tensors", "metadata"]
    from surgery.edit.gguf_edit import open_gguf

    entry = {t.name: t for t in open_gguf(out)[0].tensors}[tensor]
    good = out.read_bytes()
    with open(out, "r+b") as f:
        offset = entry.begin + row * entry.row_nbytes(0) + 1
        os.pwrite(f.fileno(), bytes([os.pread(f.fileno(), 1, offset)[0] ^ 0x20]), offset)
    result = surgery.verify(src, out)
    assert result.failed == ["tensors"] and f"'{tensor}' differs" in result.findings[0].detail
    assert f"(output row {row})" in result.findings[0].detail
    key = b"llama.block_count" if cut == "drop-layers" else b"llama.feed_forward_length"
    position = good.index(key) + len(key) + 4  # the u32 value after the type
    out.write_bytes(good[:position] + bytes([good[position] + 1]) + good[position + 1:])
    result = surgery.verify(src, out)
    assert "metadata" in result.failed and key.decode() in result.findings[1].detail


def test_a_record_that_keeps_units_the_source_lacks_is_a_finding(tmp_path):
    """A tampered prune record (a neuron past the MLP's width) is reported, never a traceback."""
    from conftest import importance_file, tiny_folder

    src, out = tiny_folder(tmp_path / "src"), tmp_path / "out"
    run_cli(["prune", src, "--importance", importance_file(tmp_path / "imp.json"), "--intermediate-size", "6",
             "-o", out, "-q"])
    record = json.loads((out / "surgery_prune.json").read_text())
    record["kept_mlp"][0][-1] = 999
    (out / "surgery_prune.json").write_text(json.dumps(record))
    result = run_cli(["verify", src, out], 3)
    assert "FAIL tensors: 'model.layers.0.mlp." in result.stderr and "outside its source" in result.stderr


def test_verify_compares_like_with_like(tmp_path):
    """A GGUF output against a folder source (or the reverse) is refused in one line before anything is read."""
    from conftest import tiny_folder, tiny_gguf

    folder, gguf = tiny_folder(tmp_path / "src"), tiny_gguf(tmp_path / "src.gguf")
    run_cli(["drop-layers", folder, "--drop", "1", "-o", tmp_path / "f", "-q"])
    run_cli(["drop-layers", gguf, "--drop", "1", "-o", tmp_path / "g.gguf", "-q"])
    result = run_cli(["verify", folder, tmp_path / "g.gguf"], 2)
    assert result.stderr.startswith("Error: ") and "a GGUF file, but its source src is a folder" in result.stderr
    result = run_cli(["verify", gguf, tmp_path / "f"], 2)
    assert "a folder, but its source src.gguf is a GGUF file" in result.stderr
