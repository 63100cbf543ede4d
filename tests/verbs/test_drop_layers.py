"""surgery drop-layers: tiny transformers models with the layers dropped by the CLI give the logits of the
original model with the same layers deleted in memory; every tensor is its source tensor, byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TOKENIZERS, Arch, run_cli
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=800, hidden_size=16, intermediate_size=32, num_hidden_layers=6, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=128)
SEQ = 12  # longer than every sliding window below, so sliding and full layers differ


ARCHS = [
    Arch("llama", "LlamaConfig", "LlamaForCausalLM"),
    Arch("mistral-sharded", "MistralConfig", "MistralForCausalLM", dict(head_dim=8, sliding_window=4),
         shard_size="20KB"),
    Arch("qwen2-sliding", "Qwen2Config", "Qwen2ForCausalLM",
         dict(use_sliding_window=True, sliding_window=4, max_window_layers=3)),
    Arch("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8)),
    Arch("gemma2", "Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=8, sliding_window=4)),
    Arch("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", dict(head_dim=8, sliding_window=4)),
    Arch("phi3", "Phi3Config", "Phi3ForCausalLM", dict(pad_token_id=0)),
    Arch("qwen3-moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
         dict(head_dim=8, moe_intermediate_size=8, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2,
              mlp_only_layers=[4])),
]


def build(arch: Arch, root: Path):
    config = getattr(transformers, arch.config)(**BASE, **arch.kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, arch.model)(config).eval()
    model.save_pretrained(root, **({"max_shard_size": arch.shard_size} if arch.shard_size else {}))
    for path in (TOKENIZERS / "sp-bpe-llama").iterdir():
        shutil.copy(path, root / path.name)
    return model


def delete_in_memory(model, kept: list[int]):
    """The original model with the other layers removed: each kept layer keeps its own modules and type."""
    layer_types = getattr(model.config, "layer_types", None)
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in kept])
    model.config.num_hidden_layers = len(kept)
    if layer_types is not None:
        model.config.layer_types = [layer_types[i] for i in kept]
    return model


def tensors(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(root.glob("*.safetensors")):
        out |= load_file(path)
    return out


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_dropped_layers_give_the_logits_of_the_model_without_them(arch, tmp_path):
    original = build(arch, tmp_path / "src")
    out = tmp_path / "out"
    run_cli(["drop-layers", tmp_path / "src", "--drop", "1,3-4", "-o", out, "-q"])
    kept = [0, 2, 5]
    pruned = getattr(transformers, arch.model).from_pretrained(out, dtype=torch.float32).eval()
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    reference = delete_in_memory(original, kept)
    ids = torch.randint(3, 800, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(input_ids=ids, use_cache=False).logits
        got = pruned(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    source, written = tensors(tmp_path / "src"), tensors(out)
    rename = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate(kept)}
    expected_tensors = {}
    for name, value in source.items():
        if not name.startswith("model.layers."):
            expected_tensors[name] = value
            continue
        prefix = ".".join(name.split(".")[:3]) + "."
        if prefix in rename:
            expected_tensors[name.replace(prefix, rename[prefix], 1)] = value
    assert written.keys() == expected_tensors.keys()
    for name, value in written.items():
        assert value.tobytes() == expected_tensors[name].tobytes() and value.dtype == expected_tensors[name].dtype
    record = json.loads((out / "surgery_drop_layers.json").read_text())
    assert record["kept_layers"] == kept and record["dropped_layers"] == [1, 3, 4]


def test_sharded_output_leaves_out_empty_shards_and_lists_the_rest(tmp_path):
    arch = next(a for a in ARCHS if a.name == "mistral-sharded")
    build(arch, tmp_path / "src")
    index = json.loads((tmp_path / "src" / "model.safetensors.index.json").read_text())
    layers_of = {}
    for name, shard in index["weight_map"].items():
        layers_of.setdefault(shard, set()).add(int(name.split(".")[2]) if name.startswith("model.layers.") else None)
    shard, layers = next((s, ls) for s, ls in sorted(layers_of.items()) if None not in ls and len(ls) < 6)
    out = tmp_path / "out"
    spec = ",".join(str(i) for i in sorted(layers))
    result = json.loads(run_cli(["drop-layers", tmp_path / "src", "--drop", spec, "-o", out, "--json", "-q"]).stdout)
    written = {p.name for p in out.glob("*.safetensors")}
    assert shard not in written and written  # the shard that held only dropped layers is not written
    new_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(new_index["weight_map"].values()) == written
    assert new_index["metadata"]["total_size"] == result["bytes_after"]


def test_qwen_moe_sparse_step_is_made_explicit_when_it_no_longer_fits(tmp_path):
    arch = next(a for a in ARCHS if a.name == "qwen3-moe")
    build(arch, tmp_path / "src")
    run_cli(["drop-layers", tmp_path / "src", "--keep-layers", "1,2,3", "-o", tmp_path / "out", "-q"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    # sparse layers were 1, 3 (step 2; 4 and 5: 5 sparse, 4 listed dense): kept 1, 2, 3 -> sparse, dense, sparse
    assert config["decoder_sparse_step"] == 1 and config["mlp_only_layers"] == [1]


@pytest.mark.parametrize("args,message", [
    (["--drop", "9"], "--drop 9: layer 9 is out of range (the model has 6 layers: 0..5)"),
    (["--drop", "0-5"], "the choice drops every one of the 6 layers"),
    (["--drop", "2-x"], "--drop 2-x: '2-x' is not a layer index or a range like 4-7"),
    (["--drop", "4-2"], "--drop 4-2: range 4-2 runs backwards"),
    (["--drop", "1", "--tail", "2"], "choose exactly one of --drop, --keep-layers, --tail, --importance "
                                     "(got --drop, --tail)"),
    (["--tail", "6"], "--tail 6: must be between 1 and 5 (the last layer is kept)"),
    (["--num-layers", "3", "--drop", "1"], "--importance and --num-layers go together"),
])
def test_bad_choices_are_refused(args, message, tmp_path):
    build(ARCHS[0], tmp_path / "src")
    result = run_cli(["drop-layers", tmp_path / "src", *args, "-o", tmp_path / "out"], 2)
    assert result.stderr.splitlines()[0] == f"Error: {message}"
    assert not (tmp_path / "out").exists()


def test_importance_and_tail(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    imp = tmp_path / "imp.json"
    imp.write_text(json.dumps({"format": "surgery-importance/1", "layers": [9, 1, 5, 2, 3, 8]}))
    plan = json.loads(run_cli(["drop-layers", tmp_path / "src", "--importance", imp, "--num-layers", "3",
                               "--dry-run", "--json"]).stdout)
    assert plan["kept_layers"] == [0, 2, 5]
    plan = json.loads(run_cli(["drop-layers", tmp_path / "src", "--tail", "2", "--dry-run", "--json"]).stdout)
    assert plan["kept_layers"] == [0, 1, 2, 5]
    imp.write_text(json.dumps({"format": "surgery-importance/1", "mlp": []}))
    result = run_cli(["drop-layers", tmp_path / "src", "--importance", imp, "--num-layers", "3"], 2)
    assert 'no "layers" scores' in result.stderr


def test_unrecognised_layer_tensors_are_refused(tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "src"
    src.mkdir()
    save_file({"encoder.block.0.w": np.zeros((2, 2), np.float32)}, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "vocab_size": 2}))
    result = run_cli(["drop-layers", src, "--drop", "0", "-o", tmp_path / "out"], 2)
    assert result.stderr.startswith("Error: the choice drops every one of the 1 layers")
    (src / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "vocab_size": 2}))
    result = run_cli(["drop-layers", src, "--drop", "0", "-o", tmp_path / "out"], 1)
    assert result.stderr.startswith("Error: src: no decoder layer tensors found")


def test_mistral_native_layout_alone(tmp_path):
    """consolidated.safetensors (`layers.N.*`) and params.json (`n_layers`), without config.json."""
    from safetensors.numpy import save_file

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    weights = {"tok_embeddings.weight": rng.standard_normal((10, 4)).astype(np.float32),
               **{f"layers.{i}.attention.wq.weight": rng.standard_normal((4, 4)).astype(np.float32) for i in range(3)}}
    save_file(weights, src / "consolidated.safetensors")
    (src / "params.json").write_text(json.dumps({"dim": 4, "n_layers": 3, "vocab_size": 10}))
    run_cli(["drop-layers", src, "--drop", "1", "-o", tmp_path / "out", "-q"])
    written = load_file(tmp_path / "out" / "consolidated.safetensors")
    assert sorted(written) == ["layers.0.attention.wq.weight", "layers.1.attention.wq.weight", "tok_embeddings.weight"]
    assert np.array_equal(written["layers.1.attention.wq.weight"], weights["layers.2.attention.wq.weight"])
    assert json.loads((tmp_path / "out" / "params.json").read_text())["n_layers"] == 2


def test_the_mtp_layer_moves_with_the_decoder_layers(tmp_path):
    """DeepSeek-V3 / GLM-4.5 store the multi-token-prediction layer at index num_hidden_layers: after a drop it
    is stored at the new count, and first_k_dense_replace counts the kept dense layers."""
    from safetensors.numpy import save_file

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    weights = {f"model.layers.{i}.mlp.w.weight": rng.standard_normal((2, 2)).astype(np.float32) for i in range(5)}
    weights["model.layers.4.shared_head.norm.weight"] = rng.standard_normal(2).astype(np.float32)
    save_file(weights, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps({"model_type": "deepseek_v3", "num_hidden_layers": 4,
                                                 "num_nextn_predict_layers": 1, "first_k_dense_replace": 2}))
    run_cli(["drop-layers", src, "--drop", "1,2", "-o", tmp_path / "out", "-q"])
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(written) == ["model.layers.0.mlp.w.weight", "model.layers.1.mlp.w.weight",
                               "model.layers.2.mlp.w.weight", "model.layers.2.shared_head.norm.weight"]
    assert np.array_equal(written["model.layers.2.mlp.w.weight"], weights["model.layers.4.mlp.w.weight"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["first_k_dense_replace"] == 1


def test_verify_proves_a_drop_layers_output(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    run_cli(["drop-layers", tmp_path / "src", "--drop", "1", "-o", tmp_path / "out", "-q"])
    result = run_cli(["verify", tmp_path / "src", tmp_path / "out", "--json"])
    assert [c["ok"] for c in json.loads(result.stdout)["checks"]] == [True, True]


@pytest.mark.parametrize("params", [{}, {"n_layers": "x"}, {"n_layers": 0}, {"n_layers": 2.0}])
def test_a_native_layout_without_an_integer_layer_count_is_refused(params, tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "src"
    src.mkdir()
    save_file({f"layers.{i}.attention.wq.weight": np.zeros((2, 2), np.float32) for i in range(2)},
              src / "consolidated.safetensors")
    (src / "params.json").write_text(json.dumps({"dim": 2, "vocab_size": 2, **params}))
    result = run_cli(["drop-layers", src, "--drop", "0", "-o", tmp_path / "out"], 1)
    assert result.stderr.startswith(f"Error: src: params.json has no layer count (n_layers is {params.get('n_layers')!r}")
    assert not (tmp_path / "out").exists()
