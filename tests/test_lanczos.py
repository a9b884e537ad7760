"""Lanczos (Algs. 1–2), its tridiagonal eigensolver and NORMALIZATION (Alg. 4)."""

import gc
import weakref

import numpy as np
import pytest
import scipy.linalg
import torch

from hspec import HspecError
from hspec.numerics.density import gaussian_density, lanczos_approx_spec, smoothing_width
from hspec.numerics.lanczos import fast_lanczos, slow_lanczos, tridiagonal_eigh
from hspec.numerics.linear_operator import LinearOperator
from hspec.numerics.normalization import normalization


def symmetric(n, seed=0):
    g = np.random.default_rng(seed).standard_normal((n, n))
    return torch.tensor((g + g.T) / 2)


def operator(matrix):
    return LinearOperator(lambda v: matrix @ v, matrix.shape[0], dtype=matrix.dtype)


def test_slow_lanczos_gives_the_exact_spectrum():
    a = symmetric(120)
    theta, _ = slow_lanczos(operator(a), generator=torch.Generator().manual_seed(0))
    assert np.allclose(theta, np.linalg.eigvalsh(a.numpy()), atol=1e-10, rtol=0)


def test_fast_lanczos_matches_slow_lanczos_before_orthogonality_is_lost():
    a = symmetric(300)
    start = torch.randn(300, dtype=torch.float64)
    fast = fast_lanczos(operator(a), 20, start=start)
    full = fast_lanczos(operator(a), 20, start=start, reorth="full")
    assert fast.basis is None and full.basis.shape == (300, 20)
    assert np.allclose(fast.alpha, full.alpha, atol=1e-9)
    assert np.allclose(fast.beta, full.beta, atol=1e-9)
    basis = full.basis
    assert torch.allclose(basis.T @ basis, torch.eye(20, dtype=torch.float64), atol=1e-12)
    tri = np.diag(full.alpha) + np.diag(full.beta[:-1], 1) + np.diag(full.beta[:-1], -1)
    assert np.allclose((basis.T @ a @ basis).numpy(), tri, atol=1e-10)


def test_fast_lanczos_keeps_only_three_vectors():
    """No p×M basis: every vector older than the previous one is freed during the run."""
    seen = []

    def matvec(v):
        gc.collect()
        alive = sum(ref() is not None for ref in seen[:-2])
        assert alive == 0, f"{alive} old Lanczos vectors are still held"
        seen.append(weakref.ref(v))
        return torch.linspace(-1, 1, 10_000) * v

    run = fast_lanczos(LinearOperator(matvec, 10_000), 12)
    assert run.basis is None and run.steps == 12 and len(seen) == 12


def test_breakdown_ends_the_run_cleanly():
    diagonal = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0], dtype=torch.float64)
    op = LinearOperator(lambda v: diagonal * v, 6, dtype=torch.float64)
    run = fast_lanczos(op, 6, generator=torch.Generator().manual_seed(0))
    assert run.steps == 3 and run.beta[-1] == 0.0
    theta, tau2, _ = run.ritz()
    assert np.allclose(theta, [1, 2, 3], atol=1e-12)
    assert tau2.sum() == pytest.approx(1.0)


def test_tridiagonal_fallback_when_lapack_fails(monkeypatch):
    d, e = np.arange(5.0), np.ones(4)
    expected = tridiagonal_eigh(d, e)[0]

    def fail(*args, **kwargs):
        raise np.linalg.LinAlgError("eigenvalues did not converge")

    monkeypatch.setattr(scipy.linalg, "eigh_tridiagonal", fail)
    theta, y = tridiagonal_eigh(d, e)
    assert np.allclose(theta, expected, atol=1e-12)
    tri = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
    assert np.allclose(tri @ y, y * theta, atol=1e-12)


def test_normalization_interval_holds_the_spectrum():
    a = symmetric(400, seed=3)
    ev = np.linalg.eigvalsh(a.numpy())
    norm = normalization(operator(a), 64, 0.05, generator=torch.Generator().manual_seed(0))
    assert norm.c - norm.d <= ev[0] and ev[-1] <= norm.c + norm.d
    # Alg. 4's bounds are close to the extremes, and the margin is κ of the width
    width = ev[-1] - ev[0]
    assert abs(norm.lambda_min - ev[0]) < 0.05 * width
    assert abs(norm.lambda_max - ev[-1]) < 0.05 * width
    assert norm.d == pytest.approx((norm.lambda_max - norm.lambda_min) * 0.55)


def test_quadrature_smoothing_matches_the_start_vectors_exact_measure():
    """Alg. 3 with M steps is Gauss quadrature of the start vector's spectral measure
    Σ_i (u_iᵀv)² δ(λ_i): smoothed by the same kernel they agree closely (L1)."""
    a = symmetric(1500, seed=1)
    ev, vecs = np.linalg.eigh(a.numpy())
    v = torch.randn(1500, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v = v / v.norm()
    op = operator(a)
    norm = normalization(op, 64, 0.05, generator=torch.Generator().manual_seed(0))
    run = fast_lanczos(op, 256, start=v)
    theta, tau2, _ = run.ritz()
    grid, density = lanczos_approx_spec(theta, tau2, norm, steps=256, points=1024)
    exact = gaussian_density(ev, (vecs.T @ v.numpy()) ** 2, grid, smoothing_width(256) * norm.d)
    l1 = np.trapezoid(np.abs(density - exact), grid)
    assert l1 <= 0.01, l1
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, culprit", [({"steps": 1}, "steps"), ({"steps": 5, "reorth": "partial"}, "reorth")]
)
def test_bad_lanczos_arguments(kwargs, culprit):
    with pytest.raises(HspecError, match=culprit):
        fast_lanczos(operator(symmetric(10)), **kwargs)
