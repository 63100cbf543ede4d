"""What trim writes for each fixture, byte for byte, against goldens that only make_fixtures.py --golden writes."""

from __future__ import annotations

import sys

import pytest
from conftest import FIXTURES

sys.path.insert(0, str(FIXTURES))
from make_fixtures import GOLDEN_FIXTURES, trimmed_files  # noqa: E402


@pytest.mark.parametrize("name", GOLDEN_FIXTURES)
def test_trim_output_matches_golden(name, tmp_path):
    golden = FIXTURES / "golden" / name
    produced = trimmed_files(FIXTURES / name, tmp_path)
    assert sorted(produced) == sorted(p.name for p in golden.iterdir())
    for file_name, content in produced.items():
        assert content == (golden / file_name).read_bytes(), f"{name}/{file_name} differs from its golden"
