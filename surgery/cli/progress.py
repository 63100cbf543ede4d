"""The CLI's meters on stderr: bytes written while a verb writes, documents read while a corpus is mined.

Both draw only when stderr is a terminal (and not --quiet), at most five times a second.
"""

from __future__ import annotations

import sys
import threading
import time


class progress_bar:
    """Bytes written and rate on stderr, only when stderr is a terminal and not --quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.last = total, 0, 0.0
        self.enabled = not quiet and sys.stderr.isatty()
        self.started = time.monotonic()
        self.lock = threading.Lock()  # shards are written by two threads

    def __enter__(self):
        return self.update

    def update(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.2 or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.started, 1e-9) / 2**20
            share = 100 * self.done / self.total if self.total else 100
            sys.stderr.write(f"\r{self.done / 2**30:6.2f} / {self.total / 2**30:.2f} GiB  {share:5.1f}%  {rate:7.1f} MiB/s")
            sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class CorpusMeter:
    """Documents and MB/s on stderr when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.docs = self.nbytes = 0
        self.started = self.last = time.monotonic()

    def __call__(self, docs: int, nbytes: int) -> None:
        self.docs += docs
        self.nbytes += nbytes
        now = time.monotonic()
        if self.enabled and now - self.last > 0.2:
            self.last = now
            rate = self.nbytes / max(now - self.started, 1e-9) / 2**20
            sys.stderr.write(f"\r{self.docs:,} documents, {self.nbytes / 2**20:,.1f} MiB, {rate:.1f} MiB/s")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.docs:
            sys.stderr.write("\n")
