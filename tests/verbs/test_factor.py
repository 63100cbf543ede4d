"""surgery factor: at full rank the factored model gives the source's logits; truncated, every target holds the
best rank-r approximation (its SVD tail energy, computed here independently); families, progressive runs and
activation-aware scaling do what they promise; the output loads without surgery and trains; bad input is one
line and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG, Arch, build_tiny, leftovers, run_cli, snapshot
from click.testing import CliRunner
from safetensors.numpy import load_file

import surgery
from surgery.cli import cli
from surgery.errors import CheckpointError, VerifyError
from surgery.lowrank.linalg import Decomposition
from surgery.model.factored_modeling import MODELING_FILE, trusted_code

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ARCHS = [
    Arch("llama-biases", "LlamaConfig", "LlamaForCausalLM", dict(mlp_bias=True, attention_bias=True)),
    Arch("qwen3", "Qwen3Config", "Qwen3ForCausalLM"),
    Arch("phi3-fused", "Phi3Config", "Phi3ForCausalLM", dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    Arch("gemma3-text", "Gemma3TextConfig", "Gemma3ForCausalLM", dict(sliding_window=4)),
    Arch("qwen3-moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
         dict(moe_intermediate_size=8, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1)),
]
IDS = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))


def build(arch: Arch, root: Path, dtype=None):
    return build_tiny(arch, root, TINY_CONFIG, dtype)


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def load_factored(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()


def tail_energy(w: np.ndarray, r: int) -> float:
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    return float(np.sum(s[r:] ** 2))


def product(tensors: dict, module: str) -> np.ndarray:
    return tensors[f"{module}.up.weight"].astype(np.float64) @ tensors[f"{module}.down.weight"].astype(np.float64)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_full_rank_gives_the_source_logits(arch, tmp_path):
    model = build(arch, tmp_path / "src")
    result = surgery.factor(tmp_path / "src", tmp_path / "out", rank_ratio=1.0)
    ranks = result.summary["outputs"][0]["ranks"]
    src, out = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    dense = {name.removesuffix(".weight") for name, value in src.items() if value.ndim == 2
             and name.removesuffix(".weight") in ranks}
    assert dense == set(ranks) and len(ranks) >= 8  # every projection of both layers
    assert not any(".experts." in module or "embed" in module or "lm_head" in module for module in ranks)
    for name, value in src.items():  # non-targets byte-identical, biases stay biases
        if name.removesuffix(".weight") not in ranks:
            assert out[name].dtype == value.dtype and out[name].tobytes() == value.tobytes(), name
    factored = load_factored(tmp_path / "out")
    assert torch.allclose(logits(factored), logits(model), atol=1e-4)


def test_loads_and_generates_where_surgery_cannot_be_imported(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    surgery.factor(tmp_path / "src", tmp_path / "out", param_ratio=0.5)
    script = (
        "import sys; sys.modules['surgery'] = None\n"
        "try:\n    import surgery\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('surgery imported')\n"
        "import torch, transformers\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'out')!r}, trust_remote_code=True)\n"
        "print(type(m).__name__, m.model.layers[0].self_attn.q_proj.rank)\n"
        "print(m.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False).shape[1])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["FactoredLlamaForCausalLM", "8", "6"]


@pytest.mark.parametrize("rule", [dict(param_ratio=0.5), dict(rank_ratio=0.25), dict(energy=0.8),
                                  dict(rank_ratio=0.3, rank_multiple=4)], ids=str)
def test_each_target_holds_its_best_rank_r_approximation(rule, tmp_path):
    build(ARCHS[1], tmp_path / "src")
    result = surgery.factor(tmp_path / "src", tmp_path / "out", **rule)
    summary = result.summary["outputs"][0]
    src, out = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["surgery_factor"]["ranks"] == summary["ranks"]
    for target in summary["targets"]:
        module, (m, n), r = target["name"], target["shape"], target["rank"]
        w = src[f"{module}.weight"]
        s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        if "param_ratio" in rule:
            want = max(1, int(np.floor(rule["param_ratio"] * m * n / (m + n))))
        elif "energy" in rule:
            energy = np.cumsum(s ** 2) / np.sum(s ** 2)
            want = int(np.argmax(energy >= rule["energy"] - 1e-12)) + 1
        else:
            want = max(1, round(rule["rank_ratio"] * min(m, n)))
            want = -(-want // rule.get("rank_multiple", 1)) * rule.get("rank_multiple", 1)
        want = min(want, min(m, n))
        if want * (m + n) >= m * n:  # would not be smaller: stays dense, byte-identical
            assert r is None and out[f"{module}.weight"].tobytes() == w.tobytes()
            continue
        assert r == want, module
        assert out[f"{module}.up.weight"].shape == (m, r) and out[f"{module}.down.weight"].shape == (r, n)
        error = float(np.sum((w.astype(np.float64) - product(out, module)) ** 2))
        assert error == pytest.approx(tail_energy(w, r), rel=1e-3), module
        assert target["params_after"] == r * (m + n)
    assert summary["params_after"] == sum(t["params_after"] for t in summary["targets"])


def test_a_family_equals_separate_runs_and_decomposes_each_matrix_once(tmp_path, monkeypatch):
    build(ARCHS[0], tmp_path / "src")
    from surgery.lowrank.linalg import Engine

    calls = []
    original = Engine.decompose
    monkeypatch.setattr(Engine, "decompose", lambda self, w, *a, **k: calls.append(w.shape) or original(self, w, *a, **k))
    family = surgery.factor(tmp_path / "src", tmp_path / "fam", rank_ratio=[0.5, 0.25, 0.125])
    assert [str(p.name) for p in family.output] == ["fam-r0.5", "fam-r0.25", "fam-r0.125"]
    assert len(calls) == len(family.summary["outputs"][0]["targets"])  # once per matrix, not per member
    for value in (0.5, 0.25, 0.125):
        single = tmp_path / f"single-{value}"
        surgery.factor(tmp_path / "src", single, rank_ratio=value)
        assert snapshot(single) == snapshot(tmp_path / f"fam-r{value}")


def test_progressive_equals_factoring_the_dense_product_and_unfactor_returns_it(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    surgery.factor(tmp_path / "src", tmp_path / "half", rank_ratio=0.5)
    with torch.no_grad():  # "training" since: the factors are no longer an SVD of anything
        model = load_factored(tmp_path / "half")
        for name, param in model.named_parameters():
            if name.endswith(("up.weight", "down.weight")):
                param.add_(0.05 * torch.randn_like(param))
        model.save_pretrained(tmp_path / "trained")
    assert trusted_code(tmp_path / "trained")  # save_pretrained carried our modeling file unchanged
    surgery.unfactor(tmp_path / "trained", tmp_path / "dense")
    surgery.factor(tmp_path / "trained", tmp_path / "prog", rank_ratio=0.25)
    surgery.factor(tmp_path / "dense", tmp_path / "direct", rank_ratio=0.25)
    trained, dense = load_file(tmp_path / "trained" / "model.safetensors"), load_file(tmp_path / "dense" / "model.safetensors")
    prog, direct = load_file(tmp_path / "prog" / "model.safetensors"), load_file(tmp_path / "direct" / "model.safetensors")
    ranks = json.loads((tmp_path / "prog" / "config.json").read_text())["surgery_factor"]["ranks"]
    assert ranks == json.loads((tmp_path / "direct" / "config.json").read_text())["surgery_factor"]["ranks"]
    trained_ranks = json.loads((tmp_path / "trained" / "config.json").read_text())["surgery_factor"]["ranks"]
    assert 0 < len(trained_ranks) < len(ranks)  # square projections stayed dense at 0.5, factored at 0.25
    for module in ranks:
        if module in trained_ranks:  # unfactor = the product of the trained factors
            assert np.allclose(dense[f"{module}.weight"], product(trained, module), atol=1e-6)
        else:
            assert dense[f"{module}.weight"].tobytes() == trained[f"{module}.weight"].tobytes()
        assert np.allclose(product(prog, module), product(direct, module), atol=1e-5), module
    # unfactor: the source's config exactly, its tensor names and dtypes, no modeling file, the factored logits
    assert json.loads((tmp_path / "dense" / "config.json").read_text()) == json.loads(
        (tmp_path / "src" / "config.json").read_text()) | {"transformers_version": json.loads(
            (tmp_path / "dense" / "config.json").read_text())["transformers_version"]}
    assert not (tmp_path / "dense" / MODELING_FILE).exists()
    src = load_file(tmp_path / "src" / "model.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in src.items()} == {k: (v.shape, v.dtype) for k, v in dense.items()}
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    assert torch.allclose(logits(plain), logits(model), atol=1e-4)


def test_unfactor_of_a_fresh_factor_restores_the_config_byte_for_byte(tmp_path):
    build(ARCHS[1], tmp_path / "src", dtype=torch.bfloat16)
    surgery.factor(tmp_path / "src", tmp_path / "f", param_ratio=0.5)
    surgery.unfactor(tmp_path / "f", tmp_path / "d")
    assert (tmp_path / "d" / "config.json").read_bytes() == (tmp_path / "src" / "config.json").read_bytes()
    from safetensors.torch import load_file as load_torch

    factored, dense = load_torch(tmp_path / "f" / "model.safetensors"), load_torch(tmp_path / "d" / "model.safetensors")
    assert {v.dtype for v in factored.values()} == {v.dtype for v in dense.values()} == {torch.bfloat16}


def test_activation_aware_scaling_lowers_the_output_error(tmp_path):
    """Input channels of very different scales (as in trained models): the scaled factors lose less of W·x."""
    arch = ARCHS[0]
    model = build(arch, tmp_path / "src")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(4)
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(torch.exp(2 * torch.randn(norm.weight.shape, generator=generator)))
    model.save_pretrained(tmp_path / "src")
    ids = torch.randint(3, 96, (8, 24), generator=torch.Generator().manual_seed(1))
    inputs = {}
    hooks = [module.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, args[0]))
             for name, module in model.named_modules() if name.endswith(("_proj",))]
    logits(model, ids)
    for hook in hooks:
        hook.remove()
    rms = {name: torch.sqrt((x.double() ** 2).reshape(-1, x.shape[-1]).mean(0)).tolist() for name, x in inputs.items()}
    (tmp_path / "imp.json").write_text(json.dumps({"format": "surgery-importance/1", "input_rms": rms}))
    surgery.factor(tmp_path / "src", tmp_path / "plain", param_ratio=0.4)
    surgery.factor(tmp_path / "src", tmp_path / "scaled", param_ratio=0.4, scaling=tmp_path / "imp.json")
    plain, scaled = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "scaled" / "model.safetensors")
    src = load_file(tmp_path / "src" / "model.safetensors")
    errors = np.zeros(2)
    for module, x in inputs.items():
        x = x.double().reshape(-1, x.shape[-1]).numpy()
        w = src[f"{module}.weight"].astype(np.float64)
        errors += [float(np.sum((x @ (w - product(t, module)).T) ** 2)) for t in (plain, scaled)]
        d = np.asarray(rms[module])  # exactly the best rank-r approximation of W·D
        assert float(np.sum(((w - product(scaled, module)) * d) ** 2)) == pytest.approx(
            tail_energy(w * d, scaled[f"{module}.up.weight"].shape[1]), rel=1e-3)
    assert errors[1] < 0.8 * errors[0]  # summed over the targets, on the activations the statistics came from
    kl = []
    for out in ("plain", "scaled"):
        a = torch.log_softmax(logits(model, ids).double(), -1)
        b = torch.log_softmax(logits(load_factored(tmp_path / out), ids).double(), -1)
        kl.append(float((a.exp() * (a - b)).sum(-1).mean()))
    assert kl[1] < kl[0]


def test_the_factored_model_trains_with_peft_and_trainer(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    surgery.factor(tmp_path / "src", tmp_path / "out", param_ratio=0.5)
    model = load_factored(tmp_path / "out").train()
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    factors = {n: p for n, p in model.named_parameters() if n.endswith(("up.weight", "down.weight"))}
    assert len(factors) == 2 * 14 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in factors.values())
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(load_factored(tmp_path / "out"), peft.LoraConfig(r=2, target_modules=["up", "down"]))
    lora(input_ids=IDS, labels=IDS).loss.backward()
    assert sum(1 for n, p in lora.named_parameters() if p.requires_grad and p.grad is not None) == 2 * 2 * 14

    dataset = [{"input_ids": IDS[i], "labels": IDS[i]} for i in range(2)] * 2
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=2, per_device_train_batch_size=2,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True)
    trainer = transformers.Trainer(model=load_factored(tmp_path / "out"), args=args, train_dataset=dataset)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n in before if n.endswith(("up.weight", "down.weight"))} <= changed
    trainer.save_model(str(tmp_path / "trained"))
    assert trusted_code(tmp_path / "trained")
    load_factored(tmp_path / "trained")


def test_dry_run_json_decomposes_nothing_and_counts(tmp_path, monkeypatch):
    build(ARCHS[0], tmp_path / "src")
    from surgery.lowrank.linalg import Engine

    monkeypatch.setattr(Engine, "decompose", lambda *a, **k: pytest.fail("a dry run decomposed"))
    monkeypatch.setattr(Engine, "singular_values", lambda *a, **k: pytest.fail("a dry run took a spectrum"))
    result = run_cli(["factor", str(tmp_path / "src"), "--param-ratio", "0.5,0.25", "--targets", "*.mlp.*",
                      "-o", str(tmp_path / "out"), "--dry-run", "--json"])
    plan = json.loads(result.output)
    assert [o["output"] for o in plan["outputs"]] == [str(tmp_path / "out-p0.5"), str(tmp_path / "out-p0.25")]
    first = plan["outputs"][0]
    assert set(first["ranks"]) == {f"model.layers.{i}.mlp.{p}" for i in (0, 1) for p in ("gate_proj", "up_proj",
                                                                                              "down_proj")}
    assert first["params_before"] == 6 * 32 * 48 and first["params_after"] == 6 * 9 * (32 + 48)
    assert first["bytes_after"] == 4 * first["params_after"] and first["dense"] == []
    assert not (tmp_path / "out-p0.5").exists()


def test_energy_dry_run_reports_the_spectrum_cost_only(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    plan = surgery.prepare_factor(tmp_path / "src", tmp_path / "out", energy=0.9).to_json()
    assert all(t["rank"] is None or t["rank"] >= 1 for t in plan["outputs"][0]["targets"])


@pytest.mark.parametrize("where", ["up-row", "down-column"])
def test_a_wrong_row_or_column_is_caught_before_the_rename(where, tmp_path, monkeypatch):
    build(ARCHS[0], tmp_path / "src")
    original = Decomposition.factors

    def corrupted(self, rank):
        up, down = original(self, rank)
        if up.shape == (48, 9):  # one MLP projection's factors
            if where == "up-row":
                up = up.copy()
                up[17] += 0.5
            else:
                down = down.copy()
                down[:, 3] *= -1
        return up, down

    monkeypatch.setattr(Decomposition, "factors", corrupted)
    with pytest.raises(VerifyError, match="not a truncated SVD"):
        surgery.factor(tmp_path / "src", tmp_path / "out", param_ratio=0.5)
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    before = snapshot(tmp_path / "src")
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    (tmp_path / "exists").mkdir()
    cases = [
        (["factor", str(tmp_path / "m.gguf"), "--rank-ratio", "0.5"], "llama.cpp cannot run factored layers"),
        (["factor", str(tmp_path / "src"), "--rank-ratio", "1.5"], "must be in (0, 1]"),
        (["factor", str(tmp_path / "src"), "--rank-ratio", "0"], "must be in (0, 1]"),
        (["factor", str(tmp_path / "src")], "exactly one of"),
        (["factor", str(tmp_path / "src"), "--rank-ratio", "0.5", "--energy", "0.9"], "exactly one of"),
        (["factor", str(tmp_path / "src"), "--rank-ratio", "0.5", "--targets", "*.mlp.nothing"], "matches none"),
        (["factor", str(tmp_path / "src"), "--rank-ratio", "0.5", "-o", str(tmp_path / "exists")], "already exists"),
        (["factor", str(tmp_path / "src"), "--rank-ratio", "0.5", "--scaling", str(tmp_path / "none.json")],
         "not found"),
        (["unfactor", str(tmp_path / "src")], "not written by surgery factor"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code in (1, 2) and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert snapshot(tmp_path / "src") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "m.gguf", "src"]


def test_packed_or_quantized_weights_are_refused(tmp_path):
    from safetensors.numpy import save_file

    build(ARCHS[0], tmp_path / "src")
    tensors = load_file(tmp_path / "src" / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].astype(np.int8)
    save_file(tensors, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="I8; factor decomposes F32, F16, BF16"):
        surgery.factor(tmp_path / "src", tmp_path / "out", rank_ratio=0.5)
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq"}
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="quantized"):
        surgery.factor(tmp_path / "src", tmp_path / "out", rank_ratio=0.5)
    config.pop("quantization_config")
    config["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="custom modeling code"):
        surgery.factor(tmp_path / "src", tmp_path / "out", rank_ratio=0.5)


def test_remote_code_is_trusted_only_when_it_is_surgerys_own_file(tmp_path):
    build(ARCHS[0], tmp_path / "src")
    surgery.factor(tmp_path / "src", tmp_path / "out", param_ratio=0.5)
    assert trusted_code(tmp_path / "out") and not trusted_code(tmp_path / "src")
    path = tmp_path / "out" / MODELING_FILE
    path.write_text(path.read_text() + "\nimport os  # anything else\n")
    assert not trusted_code(tmp_path / "out")


def test_sharded_sources_keep_their_shards_and_index(tmp_path):
    model = build(ARCHS[1], tmp_path / "one")
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").exists()
    surgery.factor(tmp_path / "src", tmp_path / "out", rank_ratio=1.0)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "src").glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == shards == sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert index["metadata"]["total_size"] == sum(
        v.nbytes for shard in shards for v in load_file(tmp_path / "out" / shard).values())
    assert torch.allclose(logits(load_factored(tmp_path / "out")), logits(model), atol=1e-4)


def test_numpy_and_torch_engines_write_the_same_factors(tmp_path):
    """Without torch the linear algebra runs on numpy: the same ranks and, within float32 noise, the same product."""
    from surgery.formats.hf_folder import Checkpoint
    from surgery.lowrank.linalg import Engine
    from surgery.lowrank.ranks import parse_rules
    from surgery.verbs.factor import decompose, plan_factor

    build(ARCHS[1], tmp_path / "src")
    ckpt = Checkpoint.open(tmp_path / "src")
    rules = parse_rules(None, "0.4", None)
    plans = [plan_factor(ckpt, rules, [tmp_path / "out"], engine=Engine("cpu", backend=b)) for b in ("numpy", "torch")]
    assert plans[0].members[0].ranks == plans[1].members[0].ranks
    for module, rank in plans[0].members[0].factored.items():
        a, b = (np.matmul(*decompose(plan, module).factors(rank)) for plan in plans)
        assert np.allclose(a, b, atol=1e-5), module
