"""Truncated SVDs of one matrix at a time, on torch when it is installed (any device) and numpy otherwise.

Exact LAPACK SVD by default. Randomized SVD (Halko, Martinsson, Tropp 2011: a Gaussian sketch with
RANDOMIZED_OVERSAMPLE extra columns, RANDOMIZED_POWER_ITERATIONS power iterations re-orthonormalised by QR, then
the SVD of the small Qᵀ·W) only where it pays: rank + oversampling at most RANDOMIZED_MAX_FRACTION of min(m, n).
Measured on this 2-core machine (torch 2.13 CPU, float32, flat spectra, the worst case): a 9728 x 2560 matrix
takes 5.0 s exact; randomized at rank 1013 takes 4.3 s with 2 iterations (missing the tail energy by 8.8e-2) and
6.9 s with 4 (3.1e-2), so near half rank the exact SVD is both faster and exact. With 8 iterations the sketch
costs about 2 x 9 products of W with a (r + p)-column block, cheaper than the exact SVD below 1/16 of min(m, n),
where the missed tail energy stays under 1e-3 (tests/lowrank/test_linalg.py measures it).

A matrix W = B·A held as two factors (a factored checkpoint) is decomposed without forming W: QR of B and of Aᵀ,
the SVD of the small product of the two R factors, rotated back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RANDOMIZED_OVERSAMPLE = 10
RANDOMIZED_POWER_ITERATIONS = 8
RANDOMIZED_MAX_FRACTION = 1 / 16
FLOAT64_MAX_ELEMENTS = 2**20  # small matrices are decomposed in float64 (cheap); larger ones in float32


@dataclass(frozen=True)
class Decomposition:
    """The leading singular triplets of one (scaled) matrix: W·D ≈ U diag(S) Vt, plus what the rank rules need.

    `spectrum` holds every singular value when the decomposition was exact (None for a randomized sketch);
    `scale` is the diagonal D (None when unscaled), folded back into the input factor by `factors`."""

    u: np.ndarray  # [m, k]
    s: np.ndarray  # [k]
    vt: np.ndarray  # [k, n]
    spectrum: np.ndarray | None
    scale: np.ndarray | None = None

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(up [m, r], down [r, n]) with up·down the rank-r truncation; √S goes to each side."""
        if rank > len(self.s):
            raise ValueError(f"rank {rank} above the {len(self.s)} singular values computed")
        root = np.sqrt(self.s[:rank])
        up = self.u[:, :rank] * root[None, :]
        down = root[:, None] * self.vt[:rank]
        if self.scale is not None:
            down = down / self.scale[None, :]
        return up.astype(np.float32), down.astype(np.float32)


class Engine:
    """Where the linear algebra runs: torch on `device` when torch is importable, numpy on the CPU otherwise."""

    def __init__(self, device: str = "cpu", backend: str | None = None) -> None:
        self.device = device
        self.torch = None
        if backend != "numpy":
            try:
                import torch
            except ImportError:
                if backend == "torch" or device != "cpu":
                    raise
            else:
                self.torch = torch
        if self.torch is None and device != "cpu":
            raise ValueError(f"device {device}: needs torch")

    @property
    def name(self) -> str:
        return f"torch ({self.device})" if self.torch is not None else "numpy (cpu)"

    # ---- public -----------------------------------------------------------------------------------------
    def decompose(self, w: np.ndarray, rank: int | None, scale: np.ndarray | None = None) -> Decomposition:
        """The top `rank` triplets of W·diag(scale) (every triplet when rank is None: exact)."""
        m, n = w.shape
        dtype = self._dtype(m * n)
        a = self._tensor(w, dtype)
        if scale is not None:
            a = a * self._tensor(scale, dtype)[None, :]
        if rank is not None and use_randomized(m, n, rank):
            u, s, vt = self._randomized(a, rank + RANDOMIZED_OVERSAMPLE)
            return Decomposition(*(self._numpy(t) for t in (u[:, :rank], s[:rank], vt[:rank])), None, scale)
        u, s, vt = self._svd(a)
        s_all = self._numpy(s)
        k = len(s_all) if rank is None else rank
        return Decomposition(self._numpy(u[:, :k]), s_all[:k], self._numpy(vt[:k]), s_all, scale)

    def decompose_product(self, up: np.ndarray, down: np.ndarray, scale: np.ndarray | None = None) -> Decomposition:
        """Every triplet of up·down·diag(scale) (rank <= up's columns), without forming the product."""
        m, r = up.shape
        n = down.shape[1]
        dtype = self._dtype(max(m, n) * r)
        b, a = self._tensor(up, dtype), self._tensor(down, dtype)
        if scale is not None:
            a = a * self._tensor(scale, dtype)[None, :]
        qb, rb = self._qr(b)
        qa, ra = self._qr(a.T)
        uc, s, vct = self._svd(rb @ ra.T)
        s_all = self._numpy(s)
        return Decomposition(self._numpy(qb @ uc), s_all, self._numpy(vct @ qa.T), s_all, scale)

    def singular_values(self, w: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """Every singular value of W·diag(scale) (what --energy needs before any factor is written)."""
        dtype = self._dtype(w.size)
        a = self._tensor(w, dtype)
        if scale is not None:
            a = a * self._tensor(scale, dtype)[None, :]
        if self.torch is not None:
            return self._numpy(self.torch.linalg.svdvals(a))
        return np.linalg.svd(a, compute_uv=False).astype(np.float64)

    def product(self, up: np.ndarray, down: np.ndarray) -> np.ndarray:
        """up·down in float32 (float64 for small matrices): the dense weight of a factored module."""
        dtype = self._dtype(up.shape[0] * down.shape[1])
        return self._numpy(self._tensor(up, dtype) @ self._tensor(down, dtype)).astype(np.float32)

    # ---- backend --------------------------------------------------------------------------------------
    def _dtype(self, elements: int):
        wide = elements <= FLOAT64_MAX_ELEMENTS and self.device == "cpu"
        if self.torch is not None:
            return self.torch.float64 if wide else self.torch.float32
        return np.float64 if wide else np.float32

    def _tensor(self, array: np.ndarray, dtype):
        if self.torch is not None:
            array = np.ascontiguousarray(array)
            if not array.flags.writeable:  # decoded straight from file bytes: torch wants its own copy
                array = array.copy()
            return self.torch.from_numpy(array).to(device=self.device, dtype=dtype)
        return np.asarray(array, dtype=dtype)

    def _numpy(self, t) -> np.ndarray:
        if self.torch is not None:
            return t.detach().to("cpu", self.torch.float64).numpy()
        return np.asarray(t, dtype=np.float64)

    def _svd(self, a):
        if self.torch is not None:
            return self.torch.linalg.svd(a, full_matrices=False)
        return np.linalg.svd(a, full_matrices=False)

    def _qr(self, a):
        if self.torch is not None:
            return self.torch.linalg.qr(a)
        return np.linalg.qr(a)

    def _randomized(self, a, columns: int):
        m, n = a.shape
        if self.torch is not None:
            generator = self.torch.Generator(device=self.device).manual_seed(0)
            omega = self.torch.randn(n, columns, generator=generator, device=self.device, dtype=a.dtype)
        else:
            omega = np.random.default_rng(0).standard_normal((n, columns)).astype(a.dtype)
        q, _ = self._qr(a @ omega)
        for _ in range(RANDOMIZED_POWER_ITERATIONS):
            z, _ = self._qr(a.T @ q)
            q, _ = self._qr(a @ z)
        ub, s, vt = self._svd(q.T @ a)
        return q @ ub, s, vt


def use_randomized(m: int, n: int, rank: int) -> bool:
    return rank + RANDOMIZED_OVERSAMPLE <= RANDOMIZED_MAX_FRACTION * min(m, n)
