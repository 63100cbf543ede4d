"""Trim synthetic GGUF files with real shapes and types, beside `cp` of the same file, in one run.

    python benchmarks/bench_gguf.py                       # Qwen3-4B Q4_K_M and BF16, Qwen3-0.6B BF16
    python benchmarks/bench_gguf.py qwen3-4b:q4_k_m --repeat 5
    python benchmarks/bench_gguf.py --small --caches all --baseline HEAD~3   # the small files people download

`--small` = Gemma-3-270M Q4_K_M (262k SentencePiece vocabulary) and SmolLM2-135M Q4_1 (49k byte-level BPE),
keeping 30,000 and 15,000 ids spread over the vocabulary (a language's tokens are, and their merge closures
are what costs). Every timing includes `sync` of its output; before each run the source is evicted from the page
cache (or every cache dropped: `--caches all`, see timing.py); the runs of a round are interleaved, and the
median of the rounds is reported with every run listed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_trim import CACHE_TEXT  # noqa: E402
from synthetic import SHAPES  # noqa: E402
from synthetic_gguf import FTYPES, write_gguf  # noqa: E402
from timing import CACHE_MODES, baseline_env, median, prepare_caches, timed  # noqa: E402

# the GGUF files people download are small and quantized: a language's tokens are spread over the vocabulary
SPREAD_KEEP_SEED = 0


def keep_ids(n_vocab: int, n_keep: int, spread: bool) -> list[int]:
    """The first n_keep ids, or (spread) a seeded random sample of them over the whole vocabulary."""
    if not spread:
        return list(range(n_keep))
    return sorted(np.random.default_rng(SPREAD_KEEP_SEED).choice(n_vocab, n_keep, replace=False).tolist())


def bench(spec: str, workdir: Path, n_keep: int, repeat: int, caches: str = "source", spread: bool = False,
          baseline: str | None = None) -> dict:
    shape, ftype = spec.split(":")
    src = workdir / f"{shape}-{ftype}-synthetic.gguf"
    if not src.exists():
        print(f"generating {src} ...", file=sys.stderr)
        write_gguf(shape, ftype, src)
    keep = workdir / f"{shape}-keep{'-spread' if spread else ''}.txt"
    keep.write_text("\n".join(map(str, keep_ids(SHAPES[shape].vocab, n_keep, spread))) + "\n")
    out_cp, out_trim = workdir / "out-cp.gguf", workdir / "out-trim.gguf"
    runs = {"cp": ["cp", str(src), str(out_cp)],
            "surgery trim": [sys.executable, "-m", "surgery", "trim", str(src), "--keep", str(keep), "-o",
                             str(out_trim), "-q", "--force"]}
    # the floor of any Python tool: the interpreter with the modules a trim imports, nothing done
    runs["python + imports"] = [sys.executable, "-c", "import surgery.cli, surgery.tokenizer.gguf_vocab, "
                                "surgery.edit.execute"]
    envs = {}
    if baseline:
        runs[f"trim @{baseline}"] = runs["surgery trim"]
        envs[f"trim @{baseline}"] = baseline_env(baseline, workdir)
    results = {"file": spec, "nbytes": src.stat().st_size, "kept_ids": n_keep, "repeat": repeat,
               "keep": "spread over the vocabulary" if spread else "the first ids", "page_cache": CACHE_TEXT[caches],
               "runs": {}}
    for round_index in range(repeat):
        for name, command in runs.items():
            for out in (out_cp, out_trim):
                out.unlink(missing_ok=True)
            prepare_caches(caches, src)
            print(f"{spec}: {name} (round {round_index + 1}) ...", file=sys.stderr)
            seconds, rss = timed(command, workdir, envs.get(name))
            run = results["runs"].setdefault(name, {"times": [], "peak_rss_bytes": 0})
            run["times"].append(round(seconds, 2))
            run["peak_rss_bytes"] = max(run["peak_rss_bytes"], rss)
            written = out_cp if name == "cp" else out_trim
            run["output_nbytes"] = written.stat().st_size if written.exists() else 0
    for out in (out_cp, out_trim):
        out.unlink(missing_ok=True)
    for run in results["runs"].values():
        run["seconds"] = median(run["times"])
    return results


def report(results: dict) -> str:
    runs = results["runs"]
    cp = runs["cp"]["seconds"]
    lines = [f"{results['file']}: {results['nbytes'] / 2**20:.0f} MiB, keep {results['kept_ids']} ids "
             f"({results['keep']}), {results['page_cache']}, median of {results['repeat']} interleaved rounds",
             f"  {'run':20} {'seconds':>8} {'x cp':>7} {'peak RSS':>10} {'written':>10}"]
    for name, run in runs.items():
        lines.append(f"  {name:20} {run['seconds']:8.2f} {run['seconds'] / cp:7.3f} "
                     f"{run['peak_rss_bytes'] / 2**20:7.0f} MiB {run['output_nbytes'] / 2**20:6.0f} MiB   "
                     f"runs: {run['times']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=["qwen3-4b:q4_k_m", "qwen3-4b:bf16", "qwen3-0.6b:bf16"],
                        help=f"SHAPE:TYPE, TYPE one of {', '.join(FTYPES)}")
    parser.add_argument("--small", action="store_true",
                        help="gemma3-270m:q4_k_m (30,000 ids) and smollm2-135m:q4_1 (15,000 ids), keep spread")
    parser.add_argument("--spread", action="store_true", help="keep a random sample of ids, not the first ones")
    parser.add_argument("--caches", choices=CACHE_MODES, default="source")
    parser.add_argument("--baseline", metavar="REV", help="also time the trim of this git revision, interleaved")
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    parser.add_argument("--keep", type=int, default=None, help="ids kept (default 30,000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delete", action="store_true", help="delete each synthetic file when done")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    all_results = []
    files = [(spec, args.keep or 30_000) for spec in args.files]
    if args.small:
        files = [("gemma3-270m:q4_k_m", args.keep or 30_000), ("smollm2-135m:q4_1", args.keep or 15_000)]
    for spec, n_keep in files:
        results = bench(spec, args.workdir, n_keep, args.repeat, args.caches, args.spread or args.small,
                        args.baseline)
        all_results.append(results)
        print(report(results), flush=True)
        if args.delete:
            shape, ftype = spec.split(":")
            (args.workdir / f"{shape}-{ftype}-synthetic.gguf").unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
