"""`surgery keep` throughput against bare `encode_batch` over the same corpus, in one run.

    python benchmarks/bench_keep.py              # a 64 MB corpus, the llama-untied fixture tokenizer

The corpus is generated from local text (the fixture corpus and Python's own docstrings, shuffled and
repeated) into --workdir; it is never committed. Both sides read the same file from a warm page cache.
Target: keep throughput / encode_batch throughput >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import pydoc
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_corpus(path: Path, nbytes: int) -> None:
    lines = (ROOT / "fixtures" / "corpus" / "train.txt").read_text(encoding="utf-8").splitlines()
    for name in ("json", "os", "re", "collections", "itertools", "pathlib", "argparse", "logging", "typing"):
        doc = pydoc.getdoc(__import__(name))
        lines += [" ".join(p.split()) for p in doc.split("\n\n") if len(p) > 40]
    rng = random.Random(0)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < nbytes:
            rng.shuffle(lines)
            for i in range(0, len(lines) - 3, 3):
                doc = " ".join(lines[i : i + 3]) + "\n"
                f.write(doc)
                written += len(doc.encode("utf-8"))


def bare_encode_batch(tokenizer_json: Path, corpus: Path, batch_docs: int = 2000) -> float:
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    started = time.perf_counter()
    batch = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            batch.append(line.rstrip("\n"))
            if len(batch) == batch_docs:
                tokenizer.encode_batch(batch, add_special_tokens=False)
                batch = []
    if batch:
        tokenizer.encode_batch(batch, add_special_tokens=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=ROOT / "fixtures" / "llama-untied")
    parser.add_argument("--mb", type=int, default=64, help="corpus size in MB (>= 50 for the target)")
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / f"corpus-{args.mb}mb.txt"
    if not corpus.exists():
        make_corpus(corpus, args.mb * 10**6)
    nbytes = corpus.stat().st_size
    bare_encode_batch(args.ckpt / "tokenizer.json", corpus)  # warm the page cache and the allocator
    bare = bare_encode_batch(args.ckpt / "tokenizer.json", corpus)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "surgery", "keep", str(args.ckpt), "--corpus", str(corpus),
                             "--coverage", "0.99", "-o", str(args.workdir / "ids.txt"), "--json", "-q"],
                            capture_output=True, text=True, check=True)
    keep = time.perf_counter() - started
    figures = json.loads(result.stdout)
    print(f"corpus {nbytes / 1e6:.1f} MB, {figures['documents']:,} documents, {figures['tokens']:,} tokens")
    print(f"  bare encode_batch   {bare:7.2f} s  {nbytes / bare / 1e6:7.2f} MB/s")
    print(f"  surgery keep        {keep:7.2f} s  {nbytes / keep / 1e6:7.2f} MB/s  (whole command: start-up, "
          "reading, counting, selection, plan figures)")
    print(f"  throughput ratio keep / encode_batch: {bare / keep:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
