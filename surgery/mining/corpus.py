"""Read text corpora as a stream of documents: plain text or JSON Lines, gzip'd or not, files, folders, stdin."""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from surgery.errors import InputError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".json", ".ndjson")


@dataclass(frozen=True, slots=True)
class CorpusSpec:
    """One --corpus option: `PATH`, `PATH:WEIGHT` or `PATH:WEIGHT:MAX_DOCS` ('-' is stdin)."""

    path: str
    weight: float = 1.0
    max_docs: int | None = None

    @classmethod
    def parse(cls, text: str) -> CorpusSpec:
        parts = text.split(":")
        path, rest = (parts[0], parts[1:]) if not Path(text).exists() else (text, [])
        try:
            weight = float(rest[0]) if rest and rest[0] else 1.0
            max_docs = int(rest[1]) if len(rest) > 1 and rest[1] else None
        except ValueError as e:
            raise InputError(f"--corpus {text}: expected PATH[:WEIGHT[:MAX_DOCS]]") from e
        if weight <= 0 or (max_docs is not None and max_docs <= 0):
            raise InputError(f"--corpus {text}: weight and MAX_DOCS must be positive")
        return cls(path, weight, max_docs)


def read_documents(spec: CorpusSpec, *, field: str = "text", whole_files: bool = False) -> Iterator[str]:
    """Documents of one corpus: a line each (or a whole file each with whole_files); JSON Lines by `field`."""
    produced = 0
    for name, stream in _open_all(spec.path):
        jsonl = any(name.endswith(s) or name.endswith(s + ".gz") for s in (".jsonl", ".ndjson"))
        try:
            for doc in _documents(name, stream, jsonl, field, whole_files):
                if spec.max_docs is not None and produced >= spec.max_docs:
                    return
                produced += 1
                yield doc
        except UnicodeDecodeError as e:
            raise InputError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start} of a read block)") from e
        except (OSError, EOFError) as e:  # a damaged gzip stream shows up while reading
            raise InputError(f"{name}: cannot read corpus: {e}") from e


def _open_all(path_text: str) -> Iterator[tuple[str, io.TextIOBase]]:
    if path_text == "-":
        yield "<stdin>", sys.stdin
        return
    path = Path(path_text)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.removesuffix(".gz").endswith(TEXT_SUFFIXES))
        if not files:
            raise InputError(f"{path}: no corpus files (.txt, .jsonl, .json, .md, optionally .gz) in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"{path}: corpus not found")
    for file in files:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8", errors="strict") as stream:
            yield str(file), stream


def _documents(name: str, stream, jsonl: bool, field: str, whole_files: bool) -> Iterator[str]:
    if whole_files and not jsonl:
        yield stream.read()
        return
    for line_no, line in enumerate(stream, start=1):
        if not jsonl:
            if line.strip():
                yield line.rstrip("\n")
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{Path(name).name}:{line_no}: not a JSON line ({e.msg})") from e
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise InputError(f"{Path(name).name}:{line_no}: no string field '{field}'", hint="choose it with --field")
        yield value
