"""edit/ops: a Compute op takes decoded values and gives the bytes of its dtype (round to nearest even for BF16
and F16, as torch writes them); a Copy is its source tensor."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from surgery.edit.ops import Compute, Copy, nbytes
from surgery.formats.safetensors import read_header


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_compute_encodes_its_values_in_its_dtype(dtype):
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32) * 7
    op = Compute("w", dtype, (3, 5), "w", lambda prepared: prepared * 2)
    data = op.encoded(values)
    want = (torch.from_numpy(values * 2).to({"F32": torch.float32, "F16": torch.float16,
                                                "BF16": torch.bfloat16}[dtype]).view(torch.uint8).numpy().tobytes())
    assert data == want and len(data) == nbytes(op)


def test_a_copy_is_its_source_entry(tmp_path):
    save_file({"x": np.arange(6, dtype=np.float16).reshape(2, 3)}, tmp_path / "m.safetensors")
    entry = read_header(tmp_path / "m.safetensors").entries[0]
    op = Copy("y", entry, "y")
    assert (op.dtype, op.shape, nbytes(op)) == ("F16", (2, 3), 12)
