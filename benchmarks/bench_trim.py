"""Trim time and memory against `cp -r` and a transformers-based trim, measured side by side in one run.

    python benchmarks/bench_trim.py                      # qwen3-4b and llama3-8b (needs ~70 GB of disk)
    python benchmarks/bench_trim.py tiny --no-transformers

Each run is a subprocess; its wall time includes `sync` of what it wrote, and its peak RSS comes from GNU
time. Before each run the source files are evicted from the page cache (`--caches source`), or every cache is
dropped (`--caches all`, root: the interpreter and numpy load from disk too, as on a first run), or nothing
(`--caches warm`); see timing.py. `--baseline REV` times another revision's trim in the same rounds.
Synthetic checkpoints are cached in --workdir (default benchmarks/out/, ignored by git) and never committed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synthetic import SHAPES, write_checkpoint  # noqa: E402
from timing import CACHE_MODES, baseline_env, median, prepare_caches, timed  # noqa: E402

TRANSFORMERS_TRIM = HERE / "transformers_trim.py"
CACHE_TEXT = {"source": "cold source (evicted before each run)",
              "all": "all caches dropped before each run (interpreter and libraries too)", "warm": "warm"}


def folder_nbytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def bench(shape: str, workdir: Path, n_keep: int, transformers: bool, caches: str, repeat: int,
          baseline: str | None = None) -> dict:
    src = workdir / f"{shape}-synthetic"
    if not (src / "config.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        print(f"generating {src} ...", file=sys.stderr)
        write_checkpoint(shape, src)
    keep = workdir / f"{shape}-keep.txt"
    keep.write_text("\n".join(str(i) for i in range(n_keep)) + "\n")
    surgery = [sys.executable, "-m", "surgery", "trim", str(src), "--keep", str(keep), "-q", "--force"]
    runs = {
        "cp -r": ["cp", "-r", str(src), str(workdir / "out-cp")],
        "surgery trim": surgery + ["-o", str(workdir / "out-surgery")],
        "surgery trim --link-unchanged": surgery + ["-o", str(workdir / "out-link"), "--link-unchanged"],
        # the floor of any Python tool: the interpreter importing what a folder trim imports, nothing done
        "python + imports": [sys.executable, "-c", "import surgery.cli, surgery.verbs.trim, surgery.edit.checks, "
                             "tokenizers"],
    }
    envs = {}
    if baseline:
        name = f"surgery trim @{baseline}"
        runs[name] = surgery + ["-o", str(workdir / "out-baseline")]
        envs[name] = baseline_env(baseline, workdir)
    if transformers:
        runs["transformers trim"] = [sys.executable, str(TRANSFORMERS_TRIM), str(src), str(keep),
                                     str(workdir / "out-transformers")]
    results = {"shape": shape, "checkpoint_nbytes": folder_nbytes(src), "kept_ids": n_keep, "repeat": repeat,
               "page_cache": CACHE_TEXT[caches], "runs": {}}
    for round_index in range(repeat):  # rounds interleave the runs, so a slow spell hits them alike
        for name, command in runs.items():
            if name == "transformers trim" and round_index:
                continue  # slow and memory-hungry: once is enough to compare
            out = (Path(command[command.index("-o") + 1]) if "-o" in command else
                   Path(command[-1]) if name == "cp -r" else None)
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            prepare_caches(caches, src)
            print(f"{shape}: {name} (round {round_index + 1}) ...", file=sys.stderr)
            seconds, rss = timed(command, workdir, envs.get(name))
            run = results["runs"].setdefault(name, {"times": [], "peak_rss_bytes": 0})
            run["times"].append(round(seconds, 2))
            run["peak_rss_bytes"] = max(run["peak_rss_bytes"], rss)
            run["output_nbytes"] = folder_nbytes(out) if out is not None else 0
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
    for run in results["runs"].values():
        run["seconds"] = median(run["times"])
    return results


def report(results: dict) -> str:
    runs, size = results["runs"], results["checkpoint_nbytes"]
    cp = runs["cp -r"]["seconds"]
    lines = [f"{results['shape']}: checkpoint {size / 2**30:.2f} GiB, keep {results['kept_ids']} ids, "
             f"page cache {results['page_cache']}, median of {results['repeat']} interleaved rounds",
             f"  {'run':32} {'seconds':>8} {'x cp -r':>8} {'peak RSS':>10} {'RSS/ckpt':>9} {'written':>10}"]
    for name, run in runs.items():
        lines.append(f"  {name:32} {run['seconds']:8.2f} {run['seconds'] / cp:8.3f} "
                     f"{run['peak_rss_bytes'] / 2**20:7.0f} MiB {run['peak_rss_bytes'] / size:9.4f} "
                     f"{run['output_nbytes'] / 2**30:6.2f} GiB   runs: {run['times']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="*", default=["qwen3-4b", "llama3-8b"], help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    parser.add_argument("--keep", type=int, default=30_000, help="number of ids kept (the first N)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers-based trim")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the cp and surgery runs (median kept)")
    parser.add_argument("--caches", choices=CACHE_MODES, default="source",
                        help="before each run evict the source (default), drop every cache (root), or nothing")
    parser.add_argument("--baseline", metavar="REV", help="also time the trim of this git revision, interleaved")
    parser.add_argument("--delete", action="store_true", help="delete each synthetic checkpoint when done")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    all_results = []
    for shape in args.shapes:
        results = bench(shape, args.workdir, args.keep, not args.no_transformers, args.caches, args.repeat,
                        args.baseline)
        all_results.append(results)
        print(report(results), flush=True)
        if args.delete:
            shutil.rmtree(args.workdir / f"{shape}-synthetic")
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
