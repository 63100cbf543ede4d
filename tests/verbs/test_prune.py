"""surgery prune: MLP and head pruning give the logits of the original model with the pruned units masked
(zeroed down_proj / o_proj columns); hidden and expert pruning load and their tensors are the source slices;
the kept units are the top-N of the importance file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG, Arch, build_tiny, run_cli
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ARCHS = [
    Arch("llama", "LlamaConfig", "LlamaForCausalLM", dict(mlp_bias=True, attention_bias=True)),
    Arch("qwen2-biases", "Qwen2Config", "Qwen2ForCausalLM"),
    Arch("qwen3", "Qwen3Config", "Qwen3ForCausalLM"),
    Arch("phi3-fused", "Phi3Config", "Phi3ForCausalLM", dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)),
]
MOE = Arch("qwen3-moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
           dict(moe_intermediate_size=8, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1))


def build(arch: Arch, root: Path):
    return build_tiny(arch, root, TINY_CONFIG)


def importance(path: Path, n_layers=2, mlp=48, heads=4, hidden=32, experts=4) -> dict:
    rng = np.random.default_rng(7)
    data = {"format": "surgery-importance/1", "layers": rng.random(n_layers).tolist(),
            "mlp": rng.random((n_layers, mlp)).tolist(), "heads": rng.random((n_layers, heads)).tolist(),
            "hidden": rng.random(hidden).tolist(), "experts": rng.random((n_layers, experts)).tolist()}
    path.write_text(json.dumps(data))
    return data


def top_n(scores, n) -> list[int]:
    return sorted(np.argsort(-np.asarray(scores), kind="stable")[:n].tolist())


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


IDS = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_mlp_pruning_equals_masking_the_neurons(arch, tmp_path):
    original = build(arch, tmp_path / "src")
    scores = importance(tmp_path / "imp.json")
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--intermediate-size", "20",
             "-o", tmp_path / "out", "-q"])
    pruned = getattr(transformers, arch.model).from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert pruned.config.intermediate_size == 20
    record = json.loads((tmp_path / "out" / "surgery_prune.json").read_text())
    assert record["kept_mlp"] == [top_n(scores["mlp"][i], 20) for i in range(2)]
    with torch.no_grad():
        for i, layer in enumerate(original.model.layers):
            dropped = [j for j in range(48) if j not in record["kept_mlp"][i]]
            layer.mlp.down_proj.weight[:, dropped] = 0
    torch.testing.assert_close(logits(pruned, IDS), logits(original, IDS), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", [*ARCHS, MOE], ids=lambda a: a.name)
def test_head_pruning_equals_masking_the_heads(arch, tmp_path):
    original = build(arch, tmp_path / "src")
    scores = importance(tmp_path / "imp.json")
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--num-attention-heads", "2",
             "-o", tmp_path / "out", "-q"])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_attention_heads"] == 2 and config["head_dim"] == 8 and config["num_key_value_heads"] == 2
    record = json.loads((tmp_path / "out" / "surgery_prune.json").read_text())
    for i in range(2):  # one query head kept in each of the two key/value groups, the better of its pair
        assert record["kept_heads"][i] == sorted(g * 2 + top_n(scores["heads"][i][g * 2:g * 2 + 2], 1)[0]
                                                 for g in range(2))
    pruned = getattr(transformers, arch.model).from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        for i, layer in enumerate(original.model.layers):
            for head in range(4):
                if head not in record["kept_heads"][i]:
                    layer.self_attn.o_proj.weight[:, head * 8:(head + 1) * 8] = 0
    torch.testing.assert_close(logits(pruned, IDS), logits(original, IDS), rtol=1e-5, atol=1e-6)


def test_hidden_pruning_loads_and_its_tensors_are_the_source_slices(tmp_path):
    build(ARCHS[2], tmp_path / "src")
    scores = importance(tmp_path / "imp.json")
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--hidden-size", "24",
             "-o", tmp_path / "out", "-q"])
    pruned = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert pruned.config.hidden_size == 24 and pruned.config.head_dim == 8
    assert logits(pruned, IDS).shape == (2, 10, 96)
    kept = top_n(scores["hidden"], 24)
    src, out = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert np.array_equal(out["model.embed_tokens.weight"], src["model.embed_tokens.weight"][:, kept])
    assert np.array_equal(out["model.norm.weight"], src["model.norm.weight"][kept])
    assert np.array_equal(out["model.layers.0.self_attn.q_proj.weight"], src["model.layers.0.self_attn.q_proj.weight"][:, kept])
    assert np.array_equal(out["model.layers.1.mlp.down_proj.weight"], src["model.layers.1.mlp.down_proj.weight"][kept])
    assert np.array_equal(out["model.layers.1.self_attn.q_norm.weight"], src["model.layers.1.self_attn.q_norm.weight"])


def test_expert_pruning_renumbers_experts_and_router_rows(tmp_path):
    build(MOE, tmp_path / "src")
    scores = importance(tmp_path / "imp.json")
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--num-experts", "2",
             "--num-attention-heads", "2", "-o", tmp_path / "out", "-q"])
    pruned = transformers.Qwen3MoeForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert pruned.config.num_experts == 2 and logits(pruned, IDS).shape == (2, 10, 96)
    src, out = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    for layer in range(2):
        kept = top_n(scores["experts"][layer], 2)
        p = f"model.layers.{layer}.mlp."
        assert np.array_equal(out[p + "gate.weight"], src[p + "gate.weight"][kept])
        for new, old in enumerate(kept):
            assert np.array_equal(out[f"{p}experts.{new}.down_proj.weight"], src[f"{p}experts.{old}.down_proj.weight"])
        assert f"{p}experts.2.up_proj.weight" not in out


@pytest.mark.parametrize("args,code,message", [
    (["--intermediate-size", "48"], 2, "--intermediate-size 48: must be positive and smaller than the current 48"),
    (["--num-attention-heads", "3"], 2, "--num-attention-heads 3: must be a multiple of the 2 key/value heads "
                                        "(the same number of query heads is kept in each group)"),
    ([], 2, "choose at least one of --intermediate-size, --num-attention-heads, --hidden-size, --num-experts, "
            "--moe-intermediate-size, --shared-expert-intermediate-size"),
    (["--moe-intermediate-size", "4"], 2, "--moe-intermediate-size: this model has no experts (moe_intermediate_size)"),
    (["--hidden-size", "0"], 2, "Invalid value for '--hidden-size': 0 is not in the range x>=1."),
    (["--num-experts", "2"], 2, "--num-experts: this model has no experts (num_experts / n_routed_experts)"),
])
def test_refusals(args, code, message, tmp_path):
    build(ARCHS[0], tmp_path / "src")
    importance(tmp_path / "imp.json")
    result = run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", *args, "-o",
                      tmp_path / "out"], code)
    assert result.stderr.splitlines()[-1] == f"Error: {message}"  # (click prints its usage line first)
    assert not (tmp_path / "out").exists()


def test_a_missing_key_is_named(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    (tmp_path / "imp.json").write_text(json.dumps({"format": "surgery-importance/1", "layers": [1, 2]}))
    result = run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--intermediate-size", "8"], 2)
    assert 'no "mlp" scores in the importance file' in result.stderr


def test_quantized_checkpoints_are_refused(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    importance(tmp_path / "imp.json")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    result = run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--intermediate-size", "8"], 1)
    assert result.stderr.startswith("Error: src: a quantized checkpoint (gptq): its packed weights cannot be cut")


QWEN2_MOE = Arch("qwen2-moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                 dict(moe_intermediate_size=8, shared_expert_intermediate_size=12, num_experts=4, num_experts_per_tok=2))


def test_expert_and_shared_expert_neurons_equal_masking_them(tmp_path):
    kwargs = {k: v for k, v in TINY_CONFIG.items() if k != "head_dim"}
    config = transformers.Qwen2MoeConfig(**kwargs, **QWEN2_MOE.kwargs)
    torch.manual_seed(0)
    original = transformers.Qwen2MoeForCausalLM(config).eval()
    original.save_pretrained(tmp_path / "src")
    rng = np.random.default_rng(5)
    scores = {"format": "surgery-importance/1", "experts_mlp": rng.random((2, 4, 8)).tolist(),
              "shared_expert_mlp": rng.random((2, 12)).tolist()}
    (tmp_path / "imp.json").write_text(json.dumps(scores))
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--moe-intermediate-size", "4",
             "--shared-expert-intermediate-size", "6", "-o", tmp_path / "out", "-q"])
    pruned = transformers.Qwen2MoeForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert pruned.config.moe_intermediate_size == 4 and pruned.config.shared_expert_intermediate_size == 6
    record = json.loads((tmp_path / "out" / "surgery_prune.json").read_text())
    with torch.no_grad():
        for i, layer in enumerate(original.model.layers):
            for expert in range(4):
                kept = top_n(scores["experts_mlp"][i][expert], 4)
                assert record["kept_expert_mlp"][i][expert] == kept
                layer.mlp.experts.down_proj[expert][:, [j for j in range(8) if j not in kept]] = 0
            kept = top_n(scores["shared_expert_mlp"][i], 6)
            layer.mlp.shared_expert.down_proj.weight[:, [j for j in range(12) if j not in kept]] = 0
    torch.testing.assert_close(logits(pruned, IDS), logits(original, IDS), rtol=1e-5, atol=1e-6)


def test_olmo2_head_pruning_slices_its_full_width_q_norm(tmp_path):
    """OLMo-2 normalizes the whole query (heads x head_dim): its q_norm is cut with the heads, k_norm stays.
    (That norm spans every head, so the result is not the masked model: it needs healing like hidden pruning.)"""
    config = transformers.Olmo2Config(**{k: v for k, v in TINY_CONFIG.items() if k != "head_dim"}, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2)
    transformers.Olmo2ForCausalLM(config).save_pretrained(tmp_path / "src")
    importance(tmp_path / "imp.json")
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--num-attention-heads", "2",
             "--hidden-size", "24", "-o", tmp_path / "out", "-q"])
    pruned = transformers.Olmo2ForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert logits(pruned, IDS).shape == (2, 10, 96)
    record = json.loads((tmp_path / "out" / "surgery_prune.json").read_text())
    src, out = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    q_rows = [h * 8 + d for h in record["kept_heads"][0] for d in range(8)]
    assert np.array_equal(out["model.layers.0.self_attn.q_norm.weight"], src["model.layers.0.self_attn.q_norm.weight"][q_rows])
    assert np.array_equal(out["model.layers.0.self_attn.k_norm.weight"], src["model.layers.0.self_attn.k_norm.weight"])


def test_qwen3_moe_expert_neurons_equal_masking_them(tmp_path):
    original = build(MOE, tmp_path / "src")
    rng = np.random.default_rng(9)
    scores = {"format": "surgery-importance/1", "experts_mlp": rng.random((2, 4, 8)).tolist()}
    (tmp_path / "imp.json").write_text(json.dumps(scores))
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--moe-intermediate-size", "4",
             "-o", tmp_path / "out", "-q"])
    pruned = transformers.Qwen3MoeForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        for i, layer in enumerate(original.model.layers):
            for expert in range(4):
                kept = top_n(scores["experts_mlp"][i][expert], 4)
                layer.mlp.experts.down_proj[expert][:, [j for j in range(8) if j not in kept]] = 0
    torch.testing.assert_close(logits(pruned, IDS), logits(original, IDS), rtol=1e-5, atol=1e-6)


def test_fewer_experts_than_routed_per_token_is_refused(tmp_path):
    build(MOE, tmp_path / "src")
    importance(tmp_path / "imp.json")
    result = run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--num-experts", "1"], 2)
    assert result.stderr.startswith("Error: --num-experts 1: below num_experts_per_tok (2)")


def test_a_packed_dtype_is_refused(tmp_path):
    from surgery.formats.safetensors import ShardWriter, TensorSpec, write_all

    src = tmp_path / "src"
    src.mkdir()
    writer = ShardWriter(src / "model.safetensors", {"format": "pt"})
    writer.add(TensorSpec("model.layers.0.mlp.gate_proj.weight", "F4", (4, 4)))
    writer.add(TensorSpec("model.layers.0.mlp.down_proj.weight", "F4", (4, 4)))
    for spec in writer.write_header():
        writer.write_tensor(spec.name, lambda fd: write_all(fd, bytes(8)))
    writer.close()
    (src / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": 4, "intermediate_size": 4,
                                                "num_attention_heads": 1}))
    (tmp_path / "imp.json").write_text(json.dumps({"format": "surgery-importance/1", "mlp": [[1, 2, 3, 4]]}))
    result = run_cli(["prune", src, "--importance", tmp_path / "imp.json", "--intermediate-size", "2", "-o",
                      tmp_path / "out"], 1)
    assert "has F4, a packed dtype: a slice would cut inside a byte" in result.stderr


def test_deepseek_expert_pruning_slices_the_router_bias(tmp_path):
    config = transformers.DeepseekV3Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
        first_k_dense_replace=1, kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
        v_head_dim=8, n_group=1, topk_group=1, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.DeepseekV3ForCausalLM(config).save_pretrained(tmp_path / "src")
    rng = np.random.default_rng(11)
    scores = {"format": "surgery-importance/1", "experts": rng.random((2, 4)).tolist()}
    (tmp_path / "imp.json").write_text(json.dumps(scores))
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--num-experts", "2", "-o",
             tmp_path / "out", "-q"])
    pruned = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert pruned.config.n_routed_experts == 2 and logits(pruned, IDS).shape == (2, 10, 96)
    src, out = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    kept = top_n(scores["experts"][1], 2)
    p = "model.layers.1.mlp.gate."
    assert np.array_equal(out[p + "weight"], src[p + "weight"][kept])
    assert np.array_equal(out[p + "e_score_correction_bias"], src[p + "e_score_correction_bias"][kept])
    assert "model.layers.1.mlp.experts.2.up_proj.weight" not in out
