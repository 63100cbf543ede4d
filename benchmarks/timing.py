"""What every copy-speed benchmark shares: one timed subprocess, the page-cache modes, and a baseline revision.

Cache modes, applied before each run:
- `source`: the source files are evicted from the page cache (posix_fadvise DONTNEED); the interpreter and its
  libraries stay cached, as on a second run.
- `all`: `sync; echo 3 > /proc/sys/vm/drop_caches` (root only): the interpreter, numpy and every module load from
  disk too, as on the first run after a boot. `cp` is measured the same way.
- `warm`: nothing is evicted.

`--baseline REV` adds a run of the same command on another git revision (a worktree in the workdir, run with
PYTHONPATH pointing at it), interleaved with the others: before and after, measured side by side.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CACHE_MODES = ("source", "all", "warm")
REPO = Path(__file__).resolve().parent.parent


def timed(command: list[str], workdir: Path, env: dict | None = None) -> tuple[float, int]:
    """Wall seconds (command + sync) and peak RSS in bytes of one subprocess, run in workdir (so that `python -m
    surgery` imports the installed package, or the baseline's, never the current folder's).

    RSS comes from GNU time: a child forked from this (large) Python process would inherit its high-water mark.
    """
    rss_file = workdir / "rss.txt"
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=workdir,
                            env={**os.environ, **env} if env else None)
    os.sync()
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr}")
    return elapsed, int(rss_file.read_text().split()[-1]) * 1024


def evict(path: Path) -> None:
    """Drop a file's (or a folder's files') pages from the page cache, so the next read comes from disk."""
    for item in [path] if path.is_file() else path.rglob("*"):
        if item.is_file():
            fd = os.open(item, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def prepare_caches(mode: str, source: Path) -> None:
    os.sync()
    if mode == "source":
        evict(source)
    elif mode == "all":
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as e:
            raise SystemExit(f"--caches all needs root (writing /proc/sys/vm/drop_caches: {e.strerror})") from e


def baseline_env(rev: str, workdir: Path) -> dict:
    """A worktree of `rev` in workdir (made once per commit: `HEAD` or a branch is resolved first, so a later run
    does not reuse a worktree of what the name meant then) and the environment that runs `python -m surgery`."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = workdir / f"baseline-{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True,
                       stdout=subprocess.DEVNULL)
    return {"PYTHONPATH": str(tree)}


def median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]
