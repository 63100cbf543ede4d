"""A fuzzer over the header of a small valid GGUF file (counts, lengths, types, offsets, truncation): the reader,
the trim plan and the drop-layers plan either succeed or raise one SurgeryError of one line, within a time limit
per example and with peak memory bounded."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import pytest
from conftest import small_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import surgery
from surgery.errors import SurgeryError
from surgery.formats.gguf import read_gguf

INTERESTING = [0, 1, 2, 7, 8, 31, 32, 255, 2**16, 2**31 - 1, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1]
EXAMPLE_SECONDS = 20


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[bytes, int]:
    """The valid file and where its header ends (edits land in the header)."""
    path = small_gguf(tmp_path_factory.mktemp("fuzz") / "valid.gguf")
    return path.read_bytes(), read_gguf(path).header_nbytes


def exercise(path: Path, keep: Path) -> int:
    """Read, trim and drop a layer (written and checked): success or one SurgeryError of one line. Returns how
    many of the three succeeded."""
    succeeded = 0
    for run in (lambda: read_gguf(path),
                lambda: surgery.trim(path, keep, path.with_name("out.gguf"), force=True),
                lambda: surgery.drop_layers(path, path.with_name("out2.gguf"), drop="0", force=True)):
        try:
            run()
            succeeded += 1
        except SurgeryError as e:
            assert "\n" not in str(e) and str(e), repr(e)
    return succeeded


def test_the_unedited_file_is_read_trimmed_and_cut(valid, tmp_path):
    path = tmp_path / "valid.gguf"
    path.write_bytes(valid[0])
    keep = tmp_path / "keep.txt"
    keep.write_text("0\n1\n256\n257\n")
    assert exercise(path, keep) == 3


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 4000), st.sampled_from([1, 4, 8]),
                                st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1))),
                      min_size=1, max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 4500)))
def test_fuzzed_gguf_headers_succeed_or_raise_one_line(valid, tmp_path, edits, cut):
    content, header_end = bytearray(valid[0]), valid[1]
    for position, width, value in edits:
        position %= max(1, header_end - width)
        content[position : position + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    if cut is not None:
        content = content[:cut]
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(content))
    keep = tmp_path / "keep.txt"
    keep.write_text("0\n1\n256\n257\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(EXAMPLE_SECONDS)
    try:
        exercise(path, keep)
    except Timeout:
        pytest.fail(f"no answer within {EXAMPLE_SECONDS} s for edits {edits}, cut {cut}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KiB
