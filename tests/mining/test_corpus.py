"""Corpus specs and document streams."""

from __future__ import annotations

import gzip

import pytest

from surgery.errors import InputError
from surgery.mining.corpus import CorpusSpec, read_documents


def test_spec_parsing(tmp_path):
    assert CorpusSpec.parse("a.txt") == CorpusSpec("a.txt", 1.0, None)
    assert CorpusSpec.parse("a.txt:0.5") == CorpusSpec("a.txt", 0.5, None)
    assert CorpusSpec.parse("a.txt:2:100") == CorpusSpec("a.txt", 2.0, 100)
    assert CorpusSpec.parse("a.txt::100") == CorpusSpec("a.txt", 1.0, 100)
    odd = tmp_path / "name:with:colons.txt"
    odd.write_text("x\n")
    assert CorpusSpec.parse(str(odd)).path == str(odd)  # an existing path is taken whole
    for bad in ("a.txt:x", "a.txt:-1", "a.txt:1:0"):
        with pytest.raises(InputError):
            CorpusSpec.parse(bad)


def test_documents_lines_whole_files_jsonl_and_caps(tmp_path):
    (tmp_path / "t.txt").write_text("one\n\ntwo\nthree\n")
    assert list(read_documents(CorpusSpec(str(tmp_path / "t.txt")))) == ["one", "two", "three"]
    assert list(read_documents(CorpusSpec(str(tmp_path / "t.txt"), max_docs=2))) == ["one", "two"]
    assert list(read_documents(CorpusSpec(str(tmp_path / "t.txt")), whole_files=True)) == ["one\n\ntwo\nthree\n"]
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write('{"text": "a"}\n\n{"text": "b"}\n')
    assert list(read_documents(CorpusSpec(str(tmp_path / "d.jsonl.gz")))) == ["a", "b"]
    (tmp_path / "broken.txt.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="broken.txt.gz: cannot read corpus"):
        list(read_documents(CorpusSpec(str(tmp_path / "broken.txt.gz"))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no corpus files"):
        list(read_documents(CorpusSpec(str(tmp_path / "empty"))))
