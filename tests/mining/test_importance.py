"""surgery importance equals a reference computed here with plain torch hooks, one document at a time."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import CORPUS, TOKENIZERS, corpus_lines, run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def reference(root, texts):
    """Minitron's aggregation written out plainly: per document, mean |x| over its tokens; over documents, the
    square root of the sum of squares; heads: L2 over head_dim of the per-document means; layers: 1 - cos."""
    model = transformers.AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(root)
    n_layers, n_heads, head_dim = 2, 4, 8
    mlp = [torch.zeros(48) for _ in range(n_layers)]
    heads = [torch.zeros(n_heads) for _ in range(n_layers)]
    norms = {}
    layers = [0.0] * n_layers
    captured = {}
    hooks = []
    squares, tokens = {}, 0
    for name, module in model.named_modules():
        if name.endswith("_proj"):
            hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: squares.__setitem__(
                name, squares.get(name, 0) + (a[0][0].double() ** 2).sum(0))))
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(("mlp", i), a[0])))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(("o", i), a[0])))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            hooks.append(getattr(layer, norm).register_forward_hook(
                lambda m, a, out, key=(i, norm): captured.__setitem__(("norm", key), out)))
        hooks.append(layer.register_forward_hook(
            lambda m, a, kw, out, i=i: captured.__setitem__(("layer", i), (kw.get("hidden_states", a[0] if a else None),
                                                                            out[0] if isinstance(out, tuple) else out)),
            with_kwargs=True))
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        tokens += ids.shape[1]
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        for i in range(n_layers):
            mlp[i] += captured[("mlp", i)][0].abs().mean(0) ** 2
            heads[i] += captured[("o", i)][0].abs().mean(0).reshape(n_heads, head_dim).norm(dim=-1) ** 2
            hidden_in, hidden_out = captured[("layer", i)]
            layers[i] += float((1 - torch.nn.functional.cosine_similarity(hidden_in[0], hidden_out[0], dim=-1)).mean())
        for key, value in captured.items():
            if key[0] == "norm":
                norms[key[1]] = norms.get(key[1], 0) + value[0].abs().mean(0) ** 2
    for hook in hooks:
        hook.remove()
    return {"mlp": [v.sqrt().tolist() for v in mlp], "heads": [v.sqrt().tolist() for v in heads],
            "hidden": sum(v.sqrt() for v in norms.values()).tolist(), "layers": layers,
            "input_rms": {name: (v / tokens).sqrt().tolist() for name, v in squares.items()}}


def tiny_llama(root):
    """A seeded 2-layer Llama with the SentencePiece fixture tokenizer, saved to root."""
    config = transformers.LlamaConfig(vocab_size=800, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root)
    for path in (TOKENIZERS / "sp-bpe-llama").iterdir():
        shutil.copy(path, root / path.name)
    return root


def test_importance_equals_the_reference(tmp_path):
    tiny_llama(tmp_path / "src")
    run_cli(["importance", tmp_path / "src", "--corpus", CORPUS / "train.txt", "--max-docs", "12",
             "--batch-size", "5", "-o", tmp_path / "imp.json", "-q"])
    scores = json.loads((tmp_path / "imp.json").read_text())
    assert scores["format"] == "surgery-importance/1" and scores["documents"] == 12
    expected = reference(tmp_path / "src", [t for t in corpus_lines("train.txt") if t.strip()][:12])
    for key in ("mlp", "heads", "hidden", "layers"):
        np.testing.assert_allclose(np.array(scores[key]), np.array(expected[key]), rtol=1e-4, atol=1e-6, err_msg=key)
    assert set(scores["input_rms"]) == set(expected["input_rms"]) and len(expected["input_rms"]) == 14
    for name, rms in expected["input_rms"].items():  # padded batches of 5: the padding is masked out
        np.testing.assert_allclose(scores["input_rms"][name], rms, rtol=1e-4, atol=1e-7, err_msg=name)
    # the file drives prune and drop-layers directly
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--intermediate-size", "32",
             "-o", tmp_path / "pruned", "-q"])
    run_cli(["drop-layers", tmp_path / "src", "--importance", tmp_path / "imp.json", "--num-layers", "1",
             "-o", tmp_path / "one-layer", "-q"])
    run_cli(["factor", tmp_path / "src", "--scaling", tmp_path / "imp.json", "--param-ratio", "0.5",
             "-o", tmp_path / "scaled", "-q"])
    # a factored model is measured too (its own modeling file, trusted), for a progressive scaled step
    run_cli(["importance", tmp_path / "scaled", "--corpus", CORPUS / "train.txt", "--max-docs", "4",
             "-o", tmp_path / "imp2.json", "-q"])
    assert set(json.loads((tmp_path / "imp2.json").read_text())["input_rms"]) == set(expected["input_rms"])
    run_cli(["factor", tmp_path / "scaled", "--scaling", tmp_path / "imp2.json", "--param-ratio", "0.25",
             "-o", tmp_path / "scaled2", "-q"])


def test_moe_importance_drives_expert_pruning(tmp_path):
    config = transformers.Qwen2MoeConfig(vocab_size=800, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=8,
                                         shared_expert_intermediate_size=12, num_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    transformers.Qwen2MoeForCausalLM(config).save_pretrained(tmp_path / "src")
    for path in (TOKENIZERS / "sp-bpe-llama").iterdir():
        shutil.copy(path, tmp_path / "src" / path.name)
    run_cli(["importance", tmp_path / "src", "--corpus", CORPUS / "train.txt", "--max-docs", "6", "-o",
             tmp_path / "imp.json", "-q"])
    scores = json.loads((tmp_path / "imp.json").read_text())
    assert np.array(scores["experts"]).shape == (2, 4) and np.array(scores["experts_mlp"]).shape == (2, 4, 8)
    assert np.array(scores["shared_expert_mlp"]).shape == (2, 12) and "mlp" not in scores
    assert np.all(np.array(scores["experts"]) > 0)
    run_cli(["prune", tmp_path / "src", "--importance", tmp_path / "imp.json", "--num-experts", "2",
             "--moe-intermediate-size", "4", "--shared-expert-intermediate-size", "8", "-o", tmp_path / "out", "-q"])
    pruned = transformers.Qwen2MoeForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert pruned.config.num_experts == 2 and pruned.config.moe_intermediate_size == 4


def test_two_processes_and_a_device_map_give_the_scores_of_one(tmp_path):
    """Under `accelerate launch` the batches are split over 2 gloo processes and the sums added; `--device auto`
    loads the model with a device map (all on the CPU here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("accelerate")
    tiny_llama(tmp_path / "src")
    args = ["importance", tmp_path / "src", "--corpus", CORPUS / "train.txt", "--max-docs", "20", "--batch-size", "3",
            "-q"]
    run_cli([*args, "-o", tmp_path / "one.json"])
    run_cli([*args, "--device", "auto", "-o", tmp_path / "auto.json"])
    launcher = Path(sys.executable).with_name("accelerate")
    done = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "surgery",
                           *map(str, args), "-o", str(tmp_path / "two.json")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[:3000] + done.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    for other in ("two.json", "auto.json"):
        got = json.loads((tmp_path / other).read_text())
        assert (got["documents"], got["tokens"]) == (one["documents"], one["tokens"]) == (20, one["tokens"])
        for key in ("mlp", "heads", "hidden", "layers"):
            np.testing.assert_allclose(got[key], one[key], rtol=1e-5, atol=1e-7, err_msg=f"{other} {key}")
        for name, rms in one["input_rms"].items():
            np.testing.assert_allclose(got["input_rms"][name], rms, rtol=1e-5, atol=1e-7)
