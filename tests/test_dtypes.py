"""decode/encode of F32/F16/BF16 values (dtypes.py) agree bit for bit with torch, specials included."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.dtypes import decode, encode

torch = pytest.importorskip("torch")

VALUES = torch.cat([torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 300,
                    torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-40, -1e-42, 3.0e38, 65504.0, 65520.0,
                                  1.00390625, 1.01171875])])  # halfway cases round to even


@pytest.mark.parametrize("dtype,torch_dtype,int_view", [("F32", torch.float32, torch.int32),
                                                        ("F16", torch.float16, torch.int16),
                                                        ("BF16", torch.bfloat16, torch.int16)])
def test_encode_rounds_like_torch_and_decode_reads_it_back(dtype, torch_dtype, int_view):
    want = VALUES.to(torch_dtype)
    raw = encode(VALUES.numpy(), dtype)
    assert raw == want.view(int_view).numpy().tobytes()
    back = decode(raw, dtype, (len(VALUES),))
    assert back.dtype == np.float32 and np.array_equal(back, want.float().numpy())


def test_nan_stays_nan_and_other_dtypes_are_refused():
    assert np.isnan(decode(encode(np.array([np.nan], np.float32), "BF16"), "BF16", (1,))).all()
    with pytest.raises(ValueError):
        encode(np.zeros(2), "I8")
    with pytest.raises(ValueError):
        decode(b"\0\0", "F8_E4M3", (2,))
