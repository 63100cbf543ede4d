"""Trim synthetic GGUF files with real shapes and types, beside `cp` of the same file, in one run.

    python benchmarks/bench_gguf.py                       # Qwen3-4B Q4_K_M and BF16, Qwen3-0.6B BF16
    python benchmarks/bench_gguf.py qwen3-4b:q4_k_m --repeat 5

Every timing includes `sync` of its output, the source is evicted from the page cache before each run, the
runs of a round are interleaved, and the median of the rounds is reported with every run listed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_trim import timed  # noqa: E402
from synthetic_gguf import write_gguf  # noqa: E402


def evict_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench(spec: str, workdir: Path, n_keep: int, repeat: int) -> dict:
    shape, ftype = spec.split(":")
    src = workdir / f"{shape}-{ftype}-synthetic.gguf"
    if not src.exists():
        print(f"generating {src} ...", file=sys.stderr)
        write_gguf(shape, ftype, src)
    keep = workdir / f"{shape}-keep.txt"
    keep.write_text("\n".join(str(i) for i in range(n_keep)) + "\n")
    out_cp, out_trim = workdir / "out-cp.gguf", workdir / "out-trim.gguf"
    runs = {"cp": ["cp", str(src), str(out_cp)],
            "surgery trim": [sys.executable, "-m", "surgery", "trim", str(src), "--keep", str(keep), "-o",
                             str(out_trim), "-q", "--force"]}
    results = {"file": spec, "nbytes": src.stat().st_size, "kept_ids": n_keep, "repeat": repeat, "runs": {}}
    for round_index in range(repeat):
        for name, command in runs.items():
            for out in (out_cp, out_trim):
                out.unlink(missing_ok=True)
            os.sync()
            evict_file(src)
            print(f"{spec}: {name} (round {round_index + 1}) ...", file=sys.stderr)
            seconds, rss = timed(command, workdir)
            run = results["runs"].setdefault(name, {"times": [], "peak_rss_bytes": 0})
            run["times"].append(round(seconds, 2))
            run["peak_rss_bytes"] = max(run["peak_rss_bytes"], rss)
            run["output_nbytes"] = (out_cp if name == "cp" else out_trim).stat().st_size
    for out in (out_cp, out_trim):
        out.unlink(missing_ok=True)
    for run in results["runs"].values():
        run["seconds"] = sorted(run["times"])[len(run["times"]) // 2]
    return results


def report(results: dict) -> str:
    runs = results["runs"]
    cp = runs["cp"]["seconds"]
    lines = [f"{results['file']}: {results['nbytes'] / 2**30:.2f} GiB, keep {results['kept_ids']} ids, cold cache, "
             f"median of {results['repeat']} interleaved rounds",
             f"  {'run':14} {'seconds':>8} {'x cp':>7} {'peak RSS':>10} {'written':>10}"]
    for name, run in runs.items():
        lines.append(f"  {name:14} {run['seconds']:8.2f} {run['seconds'] / cp:7.3f} "
                     f"{run['peak_rss_bytes'] / 2**20:7.0f} MiB {run['output_nbytes'] / 2**30:6.2f} GiB   "
                     f"runs: {run['times']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=["qwen3-4b:q4_k_m", "qwen3-4b:bf16", "qwen3-0.6b:bf16"],
                        help="SHAPE:TYPE, TYPE one of bf16, q4_k_m")
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    parser.add_argument("--keep", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delete", action="store_true", help="delete each synthetic file when done")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    all_results = []
    for spec in args.files:
        results = bench(spec, args.workdir, args.keep, args.repeat)
        all_results.append(results)
        print(report(results), flush=True)
        if args.delete:
            shape, ftype = spec.split(":")
            (args.workdir / f"{shape}-{ftype}-synthetic.gguf").unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
