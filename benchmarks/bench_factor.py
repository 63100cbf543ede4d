"""surgery factor against the plain operation it wraps (one SVD per target), side by side in one run.

A synthetic checkpoint with a real model's tensor names and shapes (BF16 values drawn from a normal law: a flat
spectrum, the worst case for truncation and for randomized SVD) is factored at --param-ratio; the same run times
torch.linalg.svd of every target read from the same file (the work any SVD script must do; for the 4B shape one
layer's targets, times the layer count), a family of three ranks, and a low-rank run where the randomized path is
taken (the family's single-rank run is its largest member). Each surgery run is a separate process: its wall time and peak RSS (ru_maxrss) are measured by wait4.

    python benchmarks/bench_factor.py qwen3-0.6b [--family 0.75,0.5,0.25] [--low-rank 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.synthetic import SHAPES, write_checkpoint  # noqa: E402
from surgery.dtypes import decode  # noqa: E402
from surgery.formats.hf_folder import Checkpoint  # noqa: E402
from surgery.model.factor_targets import candidate_module  # noqa: E402


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one `surgery` process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "surgery", *args, "-q"], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"surgery {' '.join(args)} failed")
    return time.perf_counter() - started, usage.ru_maxrss / 2**20


def plain_svds(root: Path, layers: set[int] | None) -> tuple[float, int]:
    """torch.linalg.svd of each target (float32), read and decoded from the shards: the cost being wrapped."""
    import torch

    seconds, count = 0.0, 0
    for shard in Checkpoint.open(root).shards:
        for entry in shard.entries:
            if candidate_module(entry.name, entry.shape) is None:
                continue
            if layers is not None and int(entry.name.split(".")[2]) not in layers:
                continue
            started = time.perf_counter()
            with open(entry.path, "rb") as f:
                raw = os.pread(f.fileno(), entry.nbytes, entry.begin)
            torch.linalg.svd(torch.from_numpy(decode(raw, entry.dtype, entry.shape).copy()), full_matrices=False)
            seconds += time.perf_counter() - started
            count += 1
    return seconds, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES), nargs="?", default="qwen3-0.6b")
    parser.add_argument("--param-ratio", default="0.5")
    parser.add_argument("--family", default="0.75,0.5,0.25", help="parameter ratios of the family run ('' to skip)")
    parser.add_argument("--low-rank", default="0.05", help="a rank ratio on the randomized path ('' to skip)")
    parser.add_argument("--sample-layers", type=int, default=None,
                        help="time the plain SVDs on this many layers and scale up (default: all, 1 for 4B+)")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        src = Path(tmp) / "src"
        started = time.perf_counter()
        write_checkpoint(args.shape, src, values=True)
        print(f"{args.shape}: synthetic checkpoint written in {time.perf_counter() - started:.0f}s", flush=True)
        sample = args.sample_layers or (1 if shape.hidden >= 2048 else shape.layers)
        svd_seconds, count = plain_svds(src, None if sample >= shape.layers else set(range(sample)))
        svd_total = svd_seconds * shape.layers / sample
        print(f"plain torch.linalg.svd of {count} targets: {svd_seconds:.1f}s"
              + (f" -> {svd_total:.0f}s for {shape.layers} layers" if sample < shape.layers else ""), flush=True)
        results = {"shape": args.shape, "plain_svd_seconds": round(svd_total, 1)}
        seconds, rss = run(["factor", str(src), "--param-ratio", args.param_ratio, "-o", str(Path(tmp) / "one")])
        results["param_ratio"] = {"value": args.param_ratio, "seconds": round(seconds, 1),
                                  "vs_plain_svd": round(seconds / svd_total, 3), "peak_rss_gib": round(rss, 2)}
        print(f"factor --param-ratio {args.param_ratio}: {seconds:.1f}s = {seconds / svd_total:.2f}x the plain SVDs, "
              f"peak RSS {rss:.2f} GiB", flush=True)
        if args.family:
            one, _ = run(["factor", str(src), "--param-ratio", args.family.split(",")[0], "-o", str(Path(tmp) / "r1")])
            family, rss = run(["factor", str(src), "--param-ratio", args.family, "-o", str(Path(tmp) / "fam")])
            results["family"] = {"values": args.family, "seconds": round(family, 1), "one_rank_seconds": round(one, 1),
                                 "vs_one_rank": round(family / one, 3), "peak_rss_gib": round(rss, 2)}
            print(f"family --param-ratio {args.family}: {family:.1f}s = {family / one:.2f}x one rank ({one:.1f}s), "
                  f"peak RSS {rss:.2f} GiB", flush=True)
        if args.low_rank:
            seconds, rss = run(["factor", str(src), "--rank-ratio", args.low_rank, "-o", str(Path(tmp) / "low")])
            results["low_rank"] = {"value": args.low_rank, "seconds": round(seconds, 1),
                                   "vs_plain_svd": round(seconds / svd_total, 3), "peak_rss_gib": round(rss, 2)}
            print(f"factor --rank-ratio {args.low_rank} (randomized where rank + 10 <= min(m, n) / 16): "
                  f"{seconds:.1f}s = {seconds / svd_total:.2f}x the plain SVDs", flush=True)
        out = Path(__file__).resolve().parent / "out"
        out.mkdir(exist_ok=True)
        (out / f"factor-{args.shape}.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
