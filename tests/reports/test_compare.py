"""surgery compare: its statistics equal an independent float64 reference computed here with transformers (and
with llama-cpp-python's own logits for GGUF files); a model against itself and a trim against its source give
KL 0 and full agreement; every bad input is one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS, TOKENIZERS, run_cli, write_keep

import surgery
from surgery.errors import InputError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DOCS, LENGTH = 24, 20


def tiny_llama(root: Path, seed: int = 0, noise: float = 0.0) -> Path:
    config = transformers.LlamaConfig(vocab_size=703, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    if noise:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed + 1)
            for param in model.model.layers[1].parameters():
                param.add_(noise * torch.randn(param.shape, generator=generator))
    model.save_pretrained(root)
    for path in (TOKENIZERS / "bpe-bytelevel-llama3").iterdir():
        shutil.copy(path, root / path.name)
    return root


def documents() -> list[str]:
    return [line.rstrip("\n") for line in (CORPUS / "heldout.txt").read_text(encoding="utf-8").splitlines(True)
            if line.strip()][:DOCS]


def reference(src: Path, out: Path, old_ids: list[int] | None = None) -> dict:
    """One document at a time, no padding, every statistic in float64 with torch."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    models = [transformers.AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in (src, out)]
    old_to_new = {old: new for new, old in enumerate(old_ids)} if old_ids is not None else None
    kls, nll_src, nll_out, agree, skipped = [], [], [], [], 0
    for doc in documents():
        ids = tokenizer(doc)["input_ids"][:LENGTH]
        if len(ids) < 2 or (old_to_new is not None and any(i not in old_to_new for i in ids)):
            skipped += 1
            continue
        out_ids = [old_to_new[i] for i in ids] if old_to_new is not None else ids
        with torch.no_grad():
            a = models[0](input_ids=torch.tensor([ids])).logits[0, :-1].double()
            b = models[1](input_ids=torch.tensor([out_ids])).logits[0, :-1].double()
        if old_ids is not None:
            a, b = a[:, old_ids], b[:, : len(old_ids)]
        la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        kls.append((la.exp() * (la - lb)).sum(-1))
        targets = torch.tensor(out_ids[1:])
        nll_src.append(-la[torch.arange(len(targets)), targets])
        nll_out.append(-lb[torch.arange(len(targets)), targets])
        agree.append((la.argmax(-1) == lb.argmax(-1)).double())
    kl = torch.cat(kls).numpy()
    return {"kl": kl, "positions": len(kl), "skipped": skipped, "top1": torch.cat(agree).mean().item(),
            "ppl_src": math.exp(torch.cat(nll_src).mean().item()), "ppl_out": math.exp(torch.cat(nll_out).mean().item())}


def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.txt"
    path.write_text("\n".join(documents()) + "\n", encoding="utf-8")
    return path


def test_a_perturbed_model_agrees_with_the_reference(tmp_path):
    src, out = tiny_llama(tmp_path / "src"), tiny_llama(tmp_path / "out", noise=0.05)
    report = surgery.compare(src, [out], [corpus(tmp_path)], max_length=LENGTH, batch_size=5)
    ref = reference(src, out)
    entry = report["outputs"][0]
    assert report["format"] == "surgery-compare/1" and entry["relation"] == "same-vocab"
    assert entry["positions"] == ref["positions"] and entry["documents"] + entry["skipped_documents"] == DOCS
    kld = entry["kld"]
    assert kld["mean"] > 1e-3  # the perturbation is visible
    assert kld["mean"] == pytest.approx(ref["kl"].mean(), rel=1e-6)
    assert kld["stderr"] == pytest.approx(ref["kl"].std(ddof=1) / math.sqrt(len(ref["kl"])), rel=1e-5)
    for key, q in (("median", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert kld[key] == pytest.approx(np.quantile(ref["kl"], q), rel=1e-5)
    assert kld["max"] == pytest.approx(ref["kl"].max(), rel=1e-5)
    assert entry["top1_agreement"] == ref["top1"]
    assert entry["ppl_source"] == pytest.approx(ref["ppl_src"], rel=1e-6)
    assert entry["ppl_output"] == pytest.approx(ref["ppl_out"], rel=1e-6)


def test_the_source_against_itself_and_a_trim_against_its_source(tmp_path):
    src = tiny_llama(tmp_path / "src")
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    common = sorted({i for doc in documents()[:12] for i in tokenizer(doc)["input_ids"][:LENGTH]})
    run_cli(["trim", src, "--keep", write_keep(tmp_path / "keep.txt", common), "-o", tmp_path / "trim", "-q"])
    report = surgery.compare(src, [src, tmp_path / "trim"], [corpus(tmp_path)], max_length=LENGTH)
    same, trim = report["outputs"]
    assert same["kld"]["max"] == 0 and same["top1_agreement"] == 1 and same["ppl_source"] == same["ppl_output"]
    old_ids = json.loads((tmp_path / "trim" / "surgery_trim.json").read_text())["old_ids"]
    ref = reference(src, tmp_path / "trim", old_ids)
    assert trim["relation"] == "trim" and trim["skipped_documents"] == ref["skipped"] > 0
    assert trim["positions"] == ref["positions"] and trim["documents"] >= 12
    assert trim["kld"]["max"] < 1e-9 and trim["top1_agreement"] == 1
    assert trim["ppl_output"] == pytest.approx(trim["ppl_source"], rel=1e-9)
    assert trim["ppl_source"] == pytest.approx(ref["ppl_src"], rel=1e-6)


def test_a_device_map_and_a_factored_output_are_compared_like_any_folder(tmp_path):
    """--device auto loads both models with a device map (all on the CPU here); a `surgery factor` output is loaded
    with its own modeling file; at full rank it is the source."""
    src = tiny_llama(tmp_path / "src")
    surgery.factor(src, tmp_path / "full", rank_ratio=1.0)
    surgery.factor(src, tmp_path / "half", param_ratio=0.5)
    cpu = surgery.compare(src, [tmp_path / "half"], [corpus(tmp_path)], max_length=LENGTH)
    auto = surgery.compare(src, [tmp_path / "full", tmp_path / "half"], [corpus(tmp_path)], max_length=LENGTH,
                           device="auto")
    assert auto["outputs"][0]["kld"]["max"] < 1e-6 and auto["outputs"][0]["top1_agreement"] == 1
    assert auto["outputs"][1]["kld"]["mean"] == pytest.approx(cpu["outputs"][0]["kld"]["mean"], rel=1e-9)
    assert cpu["outputs"][0]["kld"]["mean"] > 1e-4


def test_cli_json_is_the_api_document_and_the_table_reads(tmp_path):
    src, out = tiny_llama(tmp_path / "src"), tiny_llama(tmp_path / "out", noise=0.05)
    args = ["compare", src, out, "--corpus", corpus(tmp_path), "--max-length", LENGTH, "--max-docs", 10]
    document = json.loads(run_cli([*args, "--json"]).stdout)
    assert document == surgery.compare(src, [out], [corpus(tmp_path)], max_length=LENGTH, max_docs=10)
    table = run_cli(args).stdout.splitlines()
    assert table[0].split()[:2] == ["output", "relation"] and str(out) in table[1] and "same-vocab" in table[1]


def test_refusals(tmp_path):
    src = tiny_llama(tmp_path / "src")
    other = tmp_path / "other"
    other.mkdir()
    for path in src.iterdir():
        shutil.copy(path, other / path.name)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    token = next(iter(tokenizer["model"]["vocab"]))
    tokenizer["model"]["vocab"]["zz" + token] = tokenizer["model"]["vocab"].pop(token)
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(InputError, match="its vocabulary differs from src's .* and it has no trim record"):
        surgery.compare(src, [other], [corpus(tmp_path)], max_length=LENGTH)
    (tmp_path / "empty.txt").write_text("\n  \n")
    result = run_cli(["compare", src, src, "--corpus", tmp_path / "empty.txt"], 2)
    assert result.stderr.startswith("Error: ") and "no documents" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "neither").mkdir()
    result = run_cli(["compare", src, tmp_path / "neither", "--corpus", corpus(tmp_path)], 1)
    assert result.stderr == f"Error: {tmp_path / 'neither'}: neither a Hugging Face folder (config.json) nor a GGUF file\n"


def test_gguf_pairs_agree_with_a_reference_from_llama_cpp_logits(tmp_path):
    """F16 against Q8_0, both made by llama.cpp's own converter and quantizer; and a trim of the F16 file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp_tools import convert, quantize

    src = tiny_llama(tmp_path / "hf")
    f16 = convert(src, tmp_path / "m-f16.gguf", "f16", "llama-bpe")
    q8 = quantize(f16, tmp_path / "m-q8_0.gguf", "Q8_0")
    report = surgery.compare(f16, [q8], [corpus(tmp_path)], max_length=LENGTH)
    models = [llama_cpp.Llama(model_path=str(p), n_ctx=LENGTH, logits_all=True, verbose=False) for p in (f16, q8)]
    kls, agree, nll = [], [], [[], []]
    for doc in documents():
        ids = models[0].tokenize(doc.encode(), add_bos=True, special=False)[:LENGTH]
        logits = []
        for model in models:
            model.reset()
            model.eval(ids)
            logits.append(torch.log_softmax(torch.tensor(np.array(model.scores[: len(ids)]), dtype=torch.float64)[:-1], -1))
        kls.append((logits[0].exp() * (logits[0] - logits[1])).sum(-1))
        agree.append((logits[0].argmax(-1) == logits[1].argmax(-1)).double())
        for side in (0, 1):
            nll[side].append(-logits[side][torch.arange(len(ids) - 1), torch.tensor(ids[1:])])
    kl = torch.cat(kls).numpy()
    entry = report["outputs"][0]
    assert entry["relation"] == "same-vocab" and entry["positions"] == len(kl) and kl.mean() > 0
    assert entry["kld"]["mean"] == pytest.approx(kl.mean(), rel=1e-6)
    assert entry["kld"]["p99"] == pytest.approx(np.quantile(kl, 0.99), rel=1e-6)
    assert entry["top1_agreement"] == torch.cat(agree).mean().item()
    assert entry["ppl_output"] == pytest.approx(math.exp(torch.cat(nll[1]).mean().item()), rel=1e-6)
    keep = write_keep(tmp_path / "keep.txt", range(0, 703, 2))
    run_cli(["trim", f16, "--keep", keep, "-o", tmp_path / "t.gguf", "-q"])
    trim = surgery.compare(f16, [tmp_path / "t.gguf"], [corpus(tmp_path)], max_length=LENGTH)["outputs"][0]
    assert trim["relation"] == "trim" and trim["documents"] > 0
    assert trim["kld"]["max"] < 1e-6 and trim["top1_agreement"] == 1


def test_two_processes_under_accelerate_give_the_statistics_of_one(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` starts two gloo processes on a CPU host; the documents
    are split between them and the per-position values gathered."""
    import os
    import subprocess
    import sys

    pytest.importorskip("accelerate")
    src, out = tiny_llama(tmp_path / "src"), tiny_llama(tmp_path / "out", noise=0.05)
    one = surgery.compare(src, [out], [corpus(tmp_path)], max_length=LENGTH, batch_size=4)
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "surgery", "compare", str(src),
                             str(out), "--corpus", str(corpus(tmp_path)), "--max-length", str(LENGTH),
                             "--batch-size", "4", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    two = json.loads(result.stdout)
    a, b = one["outputs"][0], two["outputs"][0]
    assert (a["positions"], a["documents"], a["top1_agreement"]) == (b["positions"], b["documents"], b["top1_agreement"])
    for key in a["kld"]:
        assert b["kld"][key] == pytest.approx(a["kld"][key], rel=1e-6), key
    assert b["ppl_output"] == pytest.approx(a["ppl_output"], rel=1e-6)
