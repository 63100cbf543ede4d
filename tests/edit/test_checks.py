"""Every verb checks its output before moving it into place: a wrong byte means exit 3 and no output. Trim has
its own checks besides (tokenizer, config ids); drop-layers and prune, on folders and GGUF files, go through the
one checker (edit/checks.slice_problem) and are caught here with one wrong row or column."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import KEEP, leftovers, run_cli

from surgery.cli import cli
from surgery.edit import execute


def test_corrupted_rows_are_caught_before_the_rename(runner, copy_fixture, tmp_path, monkeypatch):
    real_gather = execute.gather_rows

    def wrong_rows(fd_in, fd_out, entry, action, row_source):
        real_gather(fd_in, fd_out, entry, action, row_source[::-1].copy())

    monkeypatch.setattr(execute, "gather_rows", wrong_rows)
    src = copy_fixture("llama-untied")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "basic.txt"), "-o", str(out), "-q"])
    assert result.exit_code == 3
    assert result.stderr == ("Error: output model.safetensors: rows of 'lm_head.weight' differ from their source "
                             "rows\n")
    assert not out.exists() and not leftovers(tmp_path)


def test_a_tokenizer_that_names_wrong_tokens_is_caught(runner, copy_fixture, tmp_path, monkeypatch):
    from surgery.tokenizer.hf_json import HfTokenizerJson

    real_rewrite = HfTokenizerJson.rewrite

    def swapped(self, old_to_new):
        text, dropped = real_rewrite(self, old_to_new)
        data = json.loads(text)
        first, second = list(data["model"]["vocab"])[:2]
        vocab = data["model"]["vocab"]
        vocab[first], vocab[second] = vocab[second], vocab[first]
        return json.dumps(data), dropped

    monkeypatch.setattr(HfTokenizerJson, "rewrite", swapped)
    src = copy_fixture("llama-untied")
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "basic.txt"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1].startswith("Error: output tokenizer.json: new id 0 is ")
    assert not (tmp_path / "o").exists()


def test_a_config_id_that_names_another_token_is_caught(runner, copy_fixture, tmp_path, monkeypatch):
    from surgery.verbs import trim as plan_module

    real_patch = plan_module.patch_config

    def off_by_one(file, config, old_to_new, new_vocab_size):
        new, patches = real_patch(file, config, old_to_new, new_vocab_size)
        if file == "config.json":
            new["eos_token_id"] = [i + 1 for i in new["eos_token_id"]]
        return new, patches

    monkeypatch.setattr(plan_module, "patch_config", off_by_one)
    src = copy_fixture("llama-untied")
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "basic.txt"), "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: output config.json: eos_token_id: was ")
    assert not (tmp_path / "o").exists()


# ---- drop-layers and prune, both containers -----------------------------------------------------------------

H, I, N_HEADS, HEAD_DIM, LAYERS = 8, 12, 2, 4, 3


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


def first_copy_corrupted(monkeypatch):
    """The first tensor the executor copies gets one wrong byte in its first row."""
    calls = []

    def corrupt(fd_in, fd_out, begin, nbytes, progress):
        data = bytearray(os.pread(fd_in, nbytes, begin))
        if not calls:
            data[0] ^= 0xFF
        calls.append(nbytes)
        execute.write_all(fd_out, data)
        progress(nbytes)

    monkeypatch.setattr(execute, "copy_range", corrupt)


def columns_reversed(monkeypatch):
    """Every cut tensor gets its kept columns (or rows) in reverse order."""
    real = execute.take_rows_cols

    def reversed_take(fd_in, fd_out, entry, rows, cols):
        if cols is not None:
            cols = cols[::-1].copy()
        elif rows is not None:
            rows = rows[::-1].copy()
        real(fd_in, fd_out, entry, rows, cols)

    monkeypatch.setattr(execute, "take_rows_cols", reversed_take)


@pytest.mark.parametrize("container", ["folder", "gguf"])
@pytest.mark.parametrize("verb", ["drop-layers", "prune-mlp", "prune-hidden"])
def test_a_wrong_row_or_column_of_a_cut_is_caught_before_the_rename(verb, container, tmp_path, monkeypatch):
    src = tiny_folder(tmp_path / "src") if container == "folder" else tiny_gguf(tmp_path / "src.gguf")
    out = tmp_path / ("out" if container == "folder" else "out.gguf")
    if verb == "drop-layers":
        args = ["drop-layers", src, "--drop", "1"]
        first_copy_corrupted(monkeypatch)
    else:
        option = ["--intermediate-size", "6"] if verb == "prune-mlp" else ["--hidden-size", "6"]
        args = ["prune", src, "--importance", importance_file(tmp_path / "imp.json"), *option]
        columns_reversed(monkeypatch)
    result = run_cli([*args, "-o", out], 3)
    assert result.stderr.splitlines()[-1].startswith("Error: output: '")
    assert "differs from its source" in result.stderr
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("container", ["folder", "gguf"])
@pytest.mark.parametrize("verb", ["drop-layers", "prune-mlp", "prune-hidden"])
def test_the_same_cuts_pass_their_checks_and_verify(verb, container, tmp_path):
    """The control: unpatched, every one of those cuts is written, checked and proved by `surgery verify`."""
    src = tiny_folder(tmp_path / "src") if container == "folder" else tiny_gguf(tmp_path / "src.gguf")
    out = tmp_path / ("out" if container == "folder" else "out.gguf")
    if verb == "drop-layers":
        args = ["drop-layers", src, "--drop", "1"]
    else:
        option = ["--intermediate-size", "6"] if verb == "prune-mlp" else ["--hidden-size", "6"]
        args = ["prune", src, "--importance", importance_file(tmp_path / "imp.json"), *option]
    run_cli([*args, "-o", out, "-q"])
    result = run_cli(["verify", src, out])
    assert "ok   tensors:" in result.stderr
