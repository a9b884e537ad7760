"""hspec.block_spectra: one spectrum per parameter block, against the eigenvalues of the
dense diagonal blocks H_BB of the dense Hessian (float64, a tiny net)."""

import numpy as np
import pytest
import torch
from torch import nn

import hspec
from hspec import HspecError, curvature_operator
from hspec.curvature.exact import dense_matrices
from hspec.numerics import analysis


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer tanh net (6 -> 8 -> 4, 92 parameters) on 40 examples, with its dense H."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    data = (torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 4, (40,)))
    full = curvature_operator(model, data, dtype=torch.float64)
    return model, data, dense_matrices(full, ["hessian"])["hessian"]


def block_eigenvalues(model, hessian, names):
    """Eigenvalues of the rows and columns of ``names`` of the dense Hessian."""
    start, where = 0, {}
    for name, p in model.named_parameters():
        where[name] = torch.arange(start, start + p.numel())
        start += p.numel()
    index = torch.cat([where[n] for n in names])
    return np.linalg.eigvalsh(hessian[index][:, index].numpy())


def check_outliers(result, exact, deflate):
    """The deflated outliers are the block's eigenvalues of largest magnitude (LOWRANKDEFLATION's), to 1e-6 relative."""
    top = exact[np.argsort(-np.abs(exact))][:deflate]
    found = result.outliers[np.argsort(-np.abs(result.outliers))]
    assert np.all(np.abs(found - top) <= 1e-6 * np.abs(top))


def check_distribution(result, exact):
    """The Lanczos quadrature's extreme nodes are the block's extreme eigenvalues (to
    1e-9 of the spread), and the estimated distribution is within 3 % of the spread of the
    block's exact eigenvalues in W1 (measured with 8 start vectors: <= 1.9 %; the other
    block's or the whole Hessian's eigenvalues are >= 12 % away)."""
    spread = exact[-1] - exact[0]
    assert abs(result.nodes.min() - exact[0]) <= 1e-9 * spread
    assert abs(result.nodes.max() - exact[-1]) <= 1e-9 * spread
    atoms, masses = result.atoms()
    distance = analysis.wasserstein1(atoms, masses / masses.sum(), exact, np.ones(len(exact)))
    assert distance <= 0.03 * spread


def test_per_layer_spectra_are_those_of_the_diagonal_blocks(tiny):
    model, data, hessian = tiny
    spectra = hspec.block_spectra(model, data, dtype=torch.float64, steps=40, n_vec=8, seed=1)
    assert list(spectra) == ["0", "2"]  # the two Linear layers
    whole = np.linalg.eigvalsh(hessian.numpy())
    for name, names in (("0", ["0.weight", "0.bias"]), ("2", ["2.weight", "2.bias"])):
        exact = block_eigenvalues(model, hessian, names)
        assert spectra[name].dim == len(exact)
        check_distribution(spectra[name], exact)
        assert whole[0] <= exact[0] and exact[-1] <= whole[-1]  # Cauchy interlacing
        assert exact[-1] < whole[-1] - 0.01  # a block's spectrum is not the whole's


def test_named_blocks_take_any_params_selector(tiny):
    model, data, hessian = tiny
    spectra = hspec.block_spectra(
        model,
        data,
        "hessian",
        {"weights": r".*\.weight", "last": [model[2]]},
        dtype=torch.float64,
        deflate=2,
        deflation="krylov",
        steps=48,
    )
    weights = block_eigenvalues(model, hessian, ["0.weight", "2.weight"])
    assert spectra["weights"].dim == 48 + 32
    check_outliers(spectra["weights"], weights, 2)
    check_outliers(spectra["last"], block_eigenvalues(model, hessian, ["2.weight", "2.bias"]), 2)


def test_a_block_that_selects_nothing_is_named(tiny):
    model, data, _ = tiny
    with pytest.raises(HspecError, match="head"):
        hspec.block_spectra(model, data, blocks={"h": "head.*"}, dtype=torch.float64, steps=8)
