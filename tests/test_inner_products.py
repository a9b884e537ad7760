"""Blocked inner products (hspec.numerics.inner_products) against float64 sums."""

import pytest
import torch

from hspec.numerics.inner_products import BLOCK, dot, gram, norm, orthonormalize

P = 8 * BLOCK * 128 + 123  # 4.2M rows, not a multiple of the block


@pytest.fixture(scope="module")
def tall():
    """Columns of a (P, 6) float32 matrix with nonzero means, the hard case for a float32
    running sum (every term adds to a growing partial sum)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(P, 6, generator=generator) + torch.arange(6.0)


def scaled_error(got, exact, a, b):
    """max |got − exact| / (‖a_i‖ ‖b_j‖), entry by entry."""
    scale = torch.outer(a.double().norm(dim=0), b.double().norm(dim=0))
    return float(((got - exact).abs() / scale).max())


def test_gram_is_accurate_at_large_p(tall):
    a, b = tall[:, :4], tall[:, 3:]  # column slices: strided, not copied
    exact = a.double().T @ b.double()
    got = gram(a, b)
    assert got.dtype == torch.float64
    assert scaled_error(got, exact, a, b) <= 1e-6  # measured ~1e-8


def test_vector_forms(tall):
    a, b = tall[:, 1], tall[:, 2]
    assert abs(dot(a, b) / float(a.double() @ b.double()) - 1) <= 1e-6
    assert abs(norm(a) / float(a.double().norm()) - 1) <= 1e-6
    assert gram(tall[:, :3], b).shape == (3,)
    assert gram(a, tall[:, :3]).shape == (3,)
    assert gram(a, b).shape == ()


@pytest.mark.parametrize("rows", [5, BLOCK, 3 * BLOCK + 7])
def test_float64_equals_the_plain_product(rows):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(rows, 3, dtype=torch.float64, generator=generator)
    b = torch.randn(rows, 2, dtype=torch.float64, generator=generator)
    assert torch.allclose(gram(a, b), a.T @ b, rtol=1e-12, atol=1e-12 * rows)


def test_orthonormalize_is_orthonormal_at_large_p(tall):
    Q = orthonormalize(tall * torch.logspace(0, 5, 6))  # condition number ~1e5
    q = Q.double()
    assert float((q.T @ q - torch.eye(6, dtype=torch.float64)).abs().max()) <= 1e-6


def test_orthonormalize_keeps_the_span_of_the_householder_qr(tall):
    """The Cholesky pass only rotates and rescales within the span of the QR's Q (whose own
    backward error, ~4e-4 here in float32, subspace iteration corrects at every step)."""
    V = tall * torch.logspace(0, 2, 6)
    q, householder = orthonormalize(V).double(), torch.linalg.qr(V)[0].double()
    residual = householder - q @ torch.linalg.lstsq(q, householder).solution
    assert float(residual.norm(dim=0).max()) <= 1e-6


def test_orthonormalize_rank_deficient_columns():
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(1000, 2, dtype=torch.float64, generator=generator)
    V = torch.cat([base, base @ torch.tensor([[1.0], [2.0]], dtype=torch.float64)], 1)
    Q = orthonormalize(V)
    assert torch.allclose(Q.T @ Q, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert float((V - Q @ (Q.T @ V)).norm()) <= 1e-10 * float(V.norm())
