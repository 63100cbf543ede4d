"""ids.txt parsing and the old_to_new map."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.errors import InputError
from surgery.verbs.keep_list import KeepList, build_old_to_new


def test_comments_commas_blank_lines_and_duplicates(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# header\n\n5, 3 9  # trailing\n3\n+7\n")
    keep = KeepList.load(path, 10)
    assert keep.ids == (3, 5, 7, 9) and keep.duplicates == 1


@pytest.mark.parametrize("text,message", [
    ("1\n10\n", "ids.txt:2: id 10 is out of range (vocab has 10 ids: 0..9)"),
    ("-1\n", "ids.txt:1: id -1 is negative"),
    ("1.5\n", "ids.txt:1: '1.5' is not an integer token id"),
    ("# only a comment\n", "ids.txt: keep list has no ids"),
])
def test_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "ids.txt"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        KeepList.load(path, 10)
    assert str(info.value) == message


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(InputError, match="keep list not found"):
        KeepList.load(tmp_path / "nope.txt", 10)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="cannot read keep list"):
        KeepList.load(tmp_path / "bin.txt", 10)


def test_old_to_new_keeps_order():
    old_to_new = build_old_to_new(np.array([1, 4, 5]), 7)
    assert old_to_new.tolist() == [-1, 0, -1, -1, 1, 2, -1] and old_to_new.dtype == np.int64
