"""Truncated SVDs (lowrank/linalg.py): the factors are the best rank-r approximation (Eckart-Young), whichever
backend and path computed them; products of factors are decomposed without being formed."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.lowrank.linalg import RANDOMIZED_OVERSAMPLE, Engine, use_randomized


def tail(w: np.ndarray, r: int) -> float:
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    return float(np.sum(s[r:] ** 2))


def matrix(m: int, n: int, decay: float, seed: int = 0) -> np.ndarray:
    """A random matrix with singular values decaying like i ** -decay (0: flat, the hard case)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, min(m, n))))
    v, _ = np.linalg.qr(rng.standard_normal((n, min(m, n))))
    s = (1.0 + np.arange(min(m, n))) ** -decay
    return ((u * s) @ v.T).astype(np.float32)


def engine(name: str) -> Engine:
    if name == "torch":
        pytest.importorskip("torch")
    return Engine("cpu", backend=name)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("shape", [(96, 40), (40, 96), (300, 300)])
def test_exact_factors_reach_the_svd_tail_energy(backend, shape):
    w = matrix(*shape, decay=0.5)
    d = engine(backend).decompose(w, None)
    for r in (1, 7, min(shape) // 2, min(shape)):
        up, down = d.factors(r)
        error = float(np.sum((w.astype(np.float64) - up.astype(np.float64) @ down) ** 2))
        assert error == pytest.approx(tail(w, r), rel=1e-3, abs=1e-6 * float(np.sum(w.astype(np.float64) ** 2)))
    assert np.allclose(d.spectrum, np.linalg.svd(w.astype(np.float64), compute_uv=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("decay", [0.0, 0.5, 1.5])
def test_randomized_factors_miss_the_tail_energy_by_under_1e3(backend, decay):
    m, n, r = 1200, 900, 40
    assert use_randomized(m, n, r) and not use_randomized(m, n, 300)
    w = matrix(m, n, decay)
    d = engine(backend).decompose(w, r)
    assert d.spectrum is None and d.u.shape == (m, r)  # the sketch path, not LAPACK on W
    up, down = d.factors(r)
    error = float(np.sum((w.astype(np.float64) - up.astype(np.float64) @ down) ** 2))
    exact = tail(w, r)
    assert exact <= error * (1 + 1e-6) and (error - exact) / exact < 1e-3, (error - exact) / exact


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_product_is_decomposed_like_the_matrix_it_forms(backend):
    rng = np.random.default_rng(3)
    up, down = rng.standard_normal((80, 12)).astype(np.float32), rng.standard_normal((12, 50)).astype(np.float32)
    scale = rng.random(50) + 0.1
    eng = engine(backend)
    product = up.astype(np.float64) @ down
    via_factors, direct = eng.decompose_product(up, down, scale), eng.decompose(product.astype(np.float32), None, scale)
    assert np.allclose(via_factors.s, direct.s[:12], rtol=1e-5)
    for r in (3, 12):
        a, b = via_factors.factors(r)
        c, d = direct.factors(r)
        assert np.allclose(a @ b, c @ d, atol=1e-4)
    assert np.allclose(eng.product(up, down), product, atol=1e-4)


def test_scaled_factors_are_the_best_approximation_of_w_times_d():
    rng = np.random.default_rng(5)
    w = matrix(64, 48, 0.3)
    scale = np.exp(rng.standard_normal(48))
    up, down = Engine("cpu", backend="numpy").decompose(w, None, scale).factors(10)
    weighted = float(np.sum(((w - up @ down) * scale[None, :]) ** 2))
    assert weighted == pytest.approx(tail(w * scale[None, :], 10), rel=1e-6)
    plain_up, plain_down = Engine("cpu", backend="numpy").decompose(w, None).factors(10)
    assert weighted < float(np.sum(((w - plain_up @ plain_down) * scale[None, :]) ** 2))


def test_oversampling_is_stated():
    assert RANDOMIZED_OVERSAMPLE == 10
