"""top_eigenpairs (thick-restart Lanczos) against exact spectra and against Alg. 5."""

import numpy as np
import pytest
import torch

from hspec import HspecError
from hspec.numerics.deflation import low_rank_deflation
from hspec.numerics.lanczos import fast_lanczos
from hspec.numerics.linear_operator import LinearOperator
from hspec.numerics.outliers import NotConvergedWarning, top_eigenpairs

C = 10
BUDGET = 4 * C + 64  # products allowed for C = 10 outliers (Alg. 5 at T = 256: 2,560)


def operator(matrix):
    return LinearOperator(lambda v: matrix @ v, matrix.shape[0], dtype=matrix.dtype)


def largest_magnitude(spectrum, count):
    """The ``count`` eigenvalues of largest |λ|, descending."""
    return np.sort(spectrum[np.argsort(-np.abs(spectrum))[:count]])[::-1]


def spiked_matrix(spikes, seed=0):
    """2000×2000: a Wishart bulk of rank 500 (eigenvalues 0 ×1500 and ~[1, 9]) plus
    rank-one spikes at the given strengths along random orthonormal directions."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2000, 500)) / np.sqrt(500)
    u = np.linalg.qr(rng.standard_normal((2000, len(spikes))))[0]
    matrix = x @ x.T + u @ np.diag(spikes) @ u.T
    return torch.tensor(matrix), np.linalg.eigvalsh(matrix)


@pytest.fixture(scope="module")
def spiked():
    return spiked_matrix([60.0, 45, 38, 32, 27, 23, 20, 17, 15, 13])


def check_pairs(matrix, values, vectors, expected, rtol):
    """Values within rtol of ``expected``; orthonormal vectors with small residuals."""
    assert values.shape == (len(expected),) and vectors.shape == (matrix.shape[0], len(expected))
    assert np.all(np.diff(values) <= 0), "values must be sorted descending"
    assert np.max(np.abs(values - expected) / np.abs(expected)) <= rtol
    gram = vectors.T @ vectors
    assert torch.allclose(gram, torch.eye(len(expected), dtype=gram.dtype), atol=1e-10)
    residual = (matrix @ vectors - vectors * torch.tensor(values)).norm(dim=0).numpy()
    # ‖A v − λ v‖ ≤ √(tol·|λ|·gap) by the gap criterion: here ≤ 1e-3·|λ| for tol = 1e-6
    assert np.all(residual <= 10 * np.sqrt(rtol) * np.abs(values)), residual


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8])
def test_spiked_outliers_match_eigvalsh_within_budget(spiked, tol):
    matrix, spectrum = spiked
    op = operator(matrix)
    values, vectors, products = top_eigenpairs(
        op, C, tol=tol, generator=torch.Generator().manual_seed(0)
    )
    check_pairs(matrix, values, vectors, spectrum[::-1][:C], tol)
    assert products == op.hvp_count <= BUDGET  # measured: 20, 22, 23
    print(f"spiked tol={tol:g}: {products} products")


def test_outliers_close_to_the_bulk_and_thick_restarts():
    """Spikes from 20 down into the bulk ([1, 9]): slower, and with a basis of only
    count + 4 vectors the iteration restarts several times and still converges."""
    matrix, spectrum = spiked_matrix(np.linspace(20, 6, 10), seed=1)
    expected = largest_magnitude(spectrum, C)
    for basis_size, budget in ((None, BUDGET), (C + 4, 2 * BUDGET)):
        values, vectors, products = top_eigenpairs(
            operator(matrix),
            C,
            tol=1e-6,
            basis_size=basis_size,
            generator=torch.Generator().manual_seed(0),
        )
        check_pairs(matrix, values, vectors, expected, 1e-6)
        assert products <= budget  # measured: 52 (default basis), 81 (14 vectors)
        print(f"close spikes, basis {basis_size}: {products} products")


def test_large_negative_eigenvalues_count_by_magnitude():
    spikes = [60.0, 45, 38, -50, 27, 23, 20, 17, -15, 13]
    matrix, spectrum = spiked_matrix(spikes, seed=2)
    expected = largest_magnitude(spectrum, C)
    assert (expected < 0).sum() == 2
    values, vectors, products = top_eigenpairs(
        operator(matrix), C, tol=1e-6, generator=torch.Generator().manual_seed(0)
    )
    check_pairs(matrix, values, vectors, expected, 1e-6)
    assert values[-2] == pytest.approx(expected[-2]) and values[-1] < -45
    assert products <= BUDGET  # measured: 20
    print(f"negative spikes: {products} products")


def test_same_outliers_as_low_rank_deflation(spiked):
    matrix, _ = spiked
    reference, basis = low_rank_deflation(
        operator(matrix), C, 64, generator=torch.Generator().manual_seed(1)
    )
    values, vectors, products = top_eigenpairs(
        operator(matrix), C, tol=1e-8, generator=torch.Generator().manual_seed(0)
    )
    assert np.max(np.abs(values - reference) / np.abs(reference)) <= 1e-6
    # the same eigenvectors up to sign: |⟨v_i, q_i⟩| = 1
    overlap = (vectors.T @ basis).diagonal().abs()
    assert torch.allclose(overlap, torch.ones(C, dtype=overlap.dtype), atol=1e-4)
    assert products <= BUDGET  # against 640 here (T = 64), 2,560 at the paper's T = 256


@pytest.mark.parametrize(
    "spikes,count,expected_products",
    [
        ([5.0, 4, -3, 2, 1], 3, 7),  # Krylov space of dim 6 (5 + the null direction) + 1
        ([5.0, 4, -3, 2, 1], 8, 9),  # more than the rank: zeros fill up
        ([1.0, 1, 1, 1, 1], 3, 7),  # a repeated eigenvalue, found through breakdowns
        ([2.0, 2, 1, 1, -3], 4, 8),
    ],
)
def test_breakdown_on_low_rank_matrices_is_exact(spikes, count, expected_products):
    rng = np.random.default_rng(3)
    u = np.linalg.qr(rng.standard_normal((300, len(spikes))))[0]
    matrix = torch.tensor(u @ np.diag(spikes) @ u.T)
    expected = largest_magnitude(np.concatenate([spikes, np.zeros(300 - len(spikes))]), count)
    values, vectors, products = top_eigenpairs(
        operator(matrix), count, generator=torch.Generator().manual_seed(0)
    )
    assert np.allclose(values, expected, atol=1e-12)
    residual = (matrix @ vectors - vectors * torch.tensor(values)).norm(dim=0)
    assert residual.max() < 1e-12
    assert torch.allclose(vectors.T @ vectors, torch.eye(count, dtype=torch.float64), atol=1e-12)
    # at most: when the last β lands just above the breakdown threshold (100·ε·scale, a
    # matter of rounding) the residual test stops one confirmation product earlier
    assert expected_products - 1 <= products <= expected_products


def test_diagonal_with_repeated_eigenvalues():
    diagonal = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0], dtype=torch.float64)
    op = LinearOperator(lambda v: diagonal * v, 6, dtype=torch.float64)
    values, vectors, _ = top_eigenpairs(op, 5, generator=torch.Generator().manual_seed(0))
    assert np.allclose(values, [3, 3, 2, 2, 1], atol=1e-12)
    assert torch.allclose(diagonal[:, None] * vectors, vectors * torch.tensor(values), atol=1e-12)


def test_cnn_hessian_outliers_match_the_dense_spectrum(one_thread, digits_cnn_hessian):
    op, matrix, spectrum = digits_cnn_hessian
    counted = LinearOperator.wrap(op)
    values, vectors, products = top_eigenpairs(
        counted, C, tol=1e-6, generator=torch.Generator().manual_seed(0)
    )
    check_pairs(matrix, values, vectors, largest_magnitude(spectrum, C), 1e-6)
    assert products == counted.hvp_count <= BUDGET  # measured: 21
    print(f"CNN Hessian: {products} products")


def test_a_lanczos_run_with_its_basis_saves_its_products(spiked):
    matrix, spectrum = spiked
    expected = spectrum[::-1][:C]
    fresh = top_eigenpairs(
        operator(matrix), C, tol=1e-8, generator=torch.Generator().manual_seed(0)
    )[2]
    op = operator(matrix)
    run = fast_lanczos(op, 16, reorth="full", generator=torch.Generator().manual_seed(0))
    values, _, products = top_eigenpairs(op, C, tol=1e-8, start=run)
    assert np.max(np.abs(values - expected) / expected) <= 1e-8
    assert 16 + products == fresh + 1  # the run's first 15 products are reused
    values, _, products = top_eigenpairs(
        operator(matrix), C, tol=1e-8, start=torch.ones(2000, dtype=torch.float64)
    )
    assert np.max(np.abs(values - expected) / expected) <= 1e-8
    with pytest.raises(HspecError, match="start: a LanczosRun needs its basis"):
        top_eigenpairs(op, C, start=fast_lanczos(op, 4))
    with pytest.raises(HspecError, match="start"):
        top_eigenpairs(op, C, start=torch.zeros(2000, dtype=torch.float64))


def test_float32_operator():
    matrix, spectrum = spiked_matrix([60.0, 45, 38, 32, 27, 23, 20, 17, 15, 13])
    op = operator(matrix.float())
    values, vectors, products = top_eigenpairs(op, C, generator=torch.Generator().manual_seed(0))
    assert vectors.dtype == torch.float32 and values.dtype == np.float64
    assert np.max(np.abs(values - spectrum[::-1][:C]) / spectrum[::-1][:C]) <= 1e-4
    assert products <= BUDGET


def test_max_products_spent_warns_and_returns_estimates(spiked):
    matrix, _ = spiked
    with pytest.warns(NotConvergedWarning, match="max_products"):
        values, vectors, products = top_eigenpairs(operator(matrix), C, tol=1e-12, max_products=12)
    assert products == 12 and values.shape == (C,) and vectors.shape == (2000, C)


def test_plain_callable_needs_dim():
    diagonal = torch.arange(1.0, 51.0, dtype=torch.float64)
    values, _, _ = top_eigenpairs(lambda v: diagonal * v, 3, dim=50, dtype=torch.float64, tol=1e-10)
    assert np.allclose(values, [50, 49, 48])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"deflate": 50}, "deflate: must be an integer in \\[1, dim\\) = \\[1, 50\\)"),
        ({"deflate": 0}, "deflate"),
        ({"deflate": 2.0}, "deflate"),
        ({"deflate": 3, "tol": 0}, "tol"),
        ({"deflate": 3, "criterion": "best"}, "criterion"),
        ({"deflate": 3, "basis_size": 4}, "basis_size"),
        ({"deflate": 3, "max_products": 2}, "max_products"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    op = operator(torch.eye(50, dtype=torch.float64))
    with pytest.raises(HspecError, match=match):
        top_eigenpairs(op, **kwargs)
