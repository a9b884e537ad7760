"""The paper's claims as numbers (hspec.numerics.claims), on Lanczos output of known spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hspec.errors import HspecError
from hspec.numerics import claims
from hspec.numerics.spectrum import spectral_density


def lanczos(eigenvalues, **kwargs):
    """spectral_density of the diagonal operator with these eigenvalues (float64)."""
    values = torch.tensor(eigenvalues)
    options = dict(steps=64, n_vec=2, points=256, dtype=torch.float64, check_symmetric=False)
    return spectral_density(lambda v: values * v, len(eigenvalues), **{**options, **kwargs})


def wishart(entries, p=300, n=750, seed=0):
    x = entries(np.random.default_rng(seed), (p, n))
    return np.linalg.eigvalsh(x @ x.T / n)


@pytest.mark.parametrize("source", ["exact", "lanczos"])
def test_a_wishart_bulk_is_marchenko_pastur_and_a_heavy_tailed_one_is_not(source):
    gaussian = wishart(lambda rng, shape: rng.standard_normal(shape))
    heavy = wishart(lambda rng, shape: rng.standard_t(1.5, size=shape))  # infinite variance
    fits = {}
    for name, eigenvalues in (("gaussian", gaussian), ("heavy", heavy)):
        if source == "exact":
            fits[name] = claims.bulk_law(eigenvalues, np.ones_like(eigenvalues))
        else:
            result = lanczos(eigenvalues)
            fits[name] = claims.bulk_law(result.nodes, result.weights)
    mp = fits["gaussian"]["marchenko_pastur"]
    assert fits["gaussian"]["preferred"] == "marchenko-pastur"
    assert fits["gaussian"]["w1_ratio"] < 0.2
    # the law it came from: ratio p/n = 0.4, unit variance (measured: exact 0.399 and 1.002;
    # two start vectors of 64 steps: 0.361 and 1.006)
    tol = 0.02 if source == "exact" else 0.06
    assert mp["ratio"] == pytest.approx(0.4, abs=tol) and mp["sigma2"] == pytest.approx(1, abs=tol)
    assert mp["w1_relative"] < 0.03 and mp["ks"] < 0.06
    assert fits["heavy"]["preferred"] == "heavy-tailed" and fits["heavy"]["w1_ratio"] > 1.3
    assert fits["heavy"]["frechet"]["alpha"] < 2  # a tail heavier than any with a variance


def test_the_marchenko_pastur_quantiles_match_its_density():
    u = (np.arange(2000) + 0.5) / 2000
    q = claims.mp_quantiles(0.25, u)
    # the support [(1 − √λ)², (1 + √λ)²] (the first/last midpoint lie inside it)
    assert 0.25 < q[0] < 0.26 and 2.23 < q[-1] < 2.25
    assert np.mean(q) == pytest.approx(1.0, abs=1e-3)  # E[x] = σ² = 1
    assert np.mean(q**2) == pytest.approx(1.25, abs=2e-3)  # E[x²] = σ⁴ (1 + λ)


def test_symmetry_comes_with_its_standard_error_and_a_bootstrap_interval():
    rng = np.random.default_rng(2)
    half = rng.gamma(2.0, size=1000)
    symmetric = claims.symmetry(lanczos(np.concatenate([half, -half]), n_vec=6))
    skewed = claims.symmetry(lanczos(np.concatenate([half, -0.5 * half]), n_vec=6))
    for found in (symmetric, skewed):
        assert len(found["per_run"]) == 6 and found["standard_error"] > 0
        low, high = found["interval"]
        assert low <= found["asymmetry"] <= high
    # exact asymmetry: 0 and W1(μ, −μ)/(2E|λ|) = (1 − 0.5)·E x / (1.5 E x) = 1/3
    assert symmetric["asymmetry"] < 0.05 and symmetric["interval"][1] < skewed["interval"][0]
    assert skewed["asymmetry"] == pytest.approx(1 / 3, abs=3 * skewed["standard_error"] + 0.02)
    single = claims.symmetry(lanczos(np.concatenate([half, -half]), n_vec=1))
    assert single["standard_error"] is None and single["interval"] is None
    with pytest.raises(HspecError, match="needs its Lanczos runs"):
        claims.symmetry(lanczos(half, method="kpm"))


def power_law(dim, b=2.6, x0=0.01, x1=10.0):
    """dim eigenvalues at the quantiles of the density ∝ x^(−b) on [x0, x1]."""
    q = (np.arange(dim) + 0.5) / dim
    lo, hi = x0 ** (1 - b), x1 ** (1 - b)
    return (lo + q * (hi - lo)) ** (1 / (1 - b))


def test_the_tail_exponent_and_its_interval_hold_at_256_and_2048_steps():
    dim = 3000
    eigenvalues = power_law(dim)
    fits = {}
    for steps in (256, 2048):
        result = lanczos(eigenvalues, steps=steps)
        fits[steps] = claims.tail_exponent(result.nodes, result.weights, dim, n_vec=2)
    for fit in fits.values():
        low, high = fit["interval"]
        # measured: b = 2.69 in [2.39, 3.00] at 256 steps, 2.73 in [2.54, 2.91] at 2048
        assert low < 2.6 < high and high - low < 0.7
        assert fit["hi"] / 10 <= fit["lo"] <= fit["hi"] / 10**0.5
        assert fit["eigenvalues_in_range"] > 150
    # the range is a quantile of the measure: the same at both step counts
    assert fits[256]["hi"] == pytest.approx(fits[2048]["hi"], rel=0.05)
    assert fits[256]["b"] == pytest.approx(fits[2048]["b"], abs=0.1)
    exact = claims.tail_exponent(eigenvalues, np.ones(dim), dim, fit_range=[0.02, 0.2])
    assert exact["b"] == pytest.approx(2.6, abs=0.03) and exact["rule"] == "given"
    with pytest.raises(HspecError, match="fewer than 10"):
        claims.tail_exponent(eigenvalues, np.ones(dim), dim, fit_range=[5.0, 10.0])


def test_train_versus_test_magnitude_ratio():
    rng = np.random.default_rng(3)
    train = np.concatenate([rng.gamma(2.0, size=800), [30.0, 40.0]])
    results = [lanczos(train, n_vec=4, seed=1), lanczos(0.5 * train, n_vec=4, seed=2)]
    ratio = claims.magnitude_ratio(*results)
    assert ratio["top"]["ratio"] == pytest.approx(0.5, rel=1e-9)
    for key in ("mean", "rms"):
        error = ratio[key]["standard_error"]
        assert 0 < error < 0.05 and ratio[key]["ratio"] == pytest.approx(0.5, abs=4 * error)
    # deflated outliers carry their residuals into the top ratio's error
    deflated = [lanczos(train, deflate=2, n_vec=2), lanczos(0.5 * train, deflate=2, n_vec=2)]
    top = claims.magnitude_ratio(*deflated)["top"]
    assert top["ratio"] == pytest.approx(0.5, rel=1e-6) and top["standard_error"] < 1e-6
