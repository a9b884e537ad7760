"""Ghosts of FASTLANCZOS (Cullum–Willoughby), ``reorth``, and the M/2-vs-M convergence number."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from hspec.errors import HspecError
from hspec.numerics.ghosts import ghosts
from hspec.numerics.lanczos import LanczosRun, fast_lanczos
from hspec.numerics.linear_operator import LinearOperator
from hspec.numerics.spectrum import spectral_density
from hspec.pipeline import cli, store
from hspec.pipeline.cli import build_parser

LARGE = np.array([10.0, 20.0, 30.0, 40.0, 50.0])


@pytest.fixture(scope="module")
def separated():
    """A dense 200 × 200 matrix: a bulk in [0, 1] and five well-separated large eigenvalues."""
    rng = np.random.default_rng(0)
    eigenvalues = np.concatenate([rng.uniform(0, 1, 195), LARGE])
    q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    return torch.tensor(q @ np.diag(eigenvalues) @ q.T), eigenvalues


def run(matrix, steps, reorth):
    op = LinearOperator.wrap(lambda v: matrix @ v, len(matrix), dtype=torch.float64)
    return fast_lanczos(op, steps, reorth=reorth, generator=torch.Generator().manual_seed(0))


def test_cullum_willoughby_on_tridiagonals_with_known_ghosts():
    # T = J ⊕ K (β_2 = 0): K's eigenvalues are eigenvalues of T̂ and invisible from e_1
    j, k = ([0.0, 0.0], [1.0]), ([3.0, 0.0], [1.0])
    found = ghosts(LanczosRun(np.array(j[0] + k[0]), np.array(j[1] + [0.0] + k[1] + [0.0])))
    exact_k = scipy.linalg.eigvalsh_tridiagonal(np.array(k[0]), np.array(k[1]))
    np.testing.assert_allclose(found["spurious"], exact_k, rtol=1e-14)
    assert found["copies"].size == 0 and (found["count"], found["good"]) == (2, 2)
    # J ⊕ J: ±1 twice, converged (β_m = 0): one copy of each, nothing spurious
    found = ghosts(LanczosRun(np.zeros(4), np.array([1.0, 0.0, 1.0, 0.0])))
    np.testing.assert_allclose(found["copies"], [-1.0, 1.0], rtol=1e-14)
    assert found["spurious"].size == 0 and (found["count"], found["good"]) == (2, 2)
    # an unreduced T (β ≠ 0) has simple eigenvalues, all visible from e_1: no ghost
    found = ghosts(LanczosRun(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 0.5, 0.5, 0.1])))
    assert (found["count"], found["good"]) == (0, 4)


def test_fastlanczos_past_convergence_has_ghosts_and_full_reorthogonalization_none(separated):
    matrix, eigenvalues = separated
    plain = ghosts(run(matrix, 150, "none"))
    flagged = np.concatenate([plain["copies"], plain["spurious"]])
    # the large eigenvalues converge in a few dozen steps and are found again and again
    assert plain["copies"].size > 20 and plain["count"] == flagged.size
    distance = np.abs(flagged[:, None] - LARGE[None, :]).min(axis=1)
    assert (distance < 1e-6).mean() > 0.9
    # what survives holds each large eigenvalue exactly once
    theta = run(matrix, 150, "none").eig()[0]
    keep = np.ones(theta.size, dtype=bool)
    for value in flagged:
        keep[np.flatnonzero(keep & (theta == value))[0]] = False
    np.testing.assert_allclose(theta[keep & (theta > 5)], LARGE, rtol=1e-12)
    assert plain["good"] == keep.sum()

    full = ghosts(run(matrix, 150, "full"))
    assert (full["count"], full["good"]) == (0, 150)
    # before convergence there are none either: the first steps are orthogonal enough
    assert ghosts(run(matrix, 6, "none"))["count"] == 0


def test_spectral_density_reports_and_stores_ghosts_and_convergence(separated, tmp_path, capsys):
    matrix, _ = separated
    results = {
        reorth: spectral_density(
            lambda v: matrix @ v, 200, steps=150, n_vec=2, reorth=reorth, dtype=torch.float64
        )
        for reorth in ("none", "full")
    }
    plain, full = results["none"], results["full"]
    assert plain.settings["reorth"] == "none" and full.settings["reorth"] == "full"
    assert (plain.ghost_counts() > 20).all() and full.ghosts.size == 0
    assert full.ghost_counts().tolist() == [0, 0]
    # the ghosts carry (almost) no quadrature weight: the densities agree
    np.testing.assert_allclose(plain.density, full.density, atol=1e-6 * full.density.max())
    attrs = {name: "x" for name in store.SPECTRUM_ATTRS}
    store.write_spectrum(tmp_path / "s.zarr", plain, attrs)
    back = store.read_result(tmp_path / "s.zarr")
    for name in ("ghosts", "ghost_runs", "convergence_l1", "convergence_w1"):
        assert np.array_equal(getattr(back, name), getattr(plain, name)), name
    assert back.convergence() == plain.convergence()
    assert cli.main(["describe", str(tmp_path / "s.zarr")]) == 0
    counts = plain.ghost_counts().tolist()
    assert f"lanczos runs: ghosts {counts}, density change M/2 -> M" in capsys.readouterr().out


def test_the_density_change_between_m_over_2_and_m_shrinks_with_m():
    eigenvalues = torch.tensor(np.random.default_rng(1).standard_normal(400))
    change = {
        steps: spectral_density(
            lambda v: eigenvalues * v, 400, steps=steps, n_vec=2, dtype=torch.float64
        ).convergence()
        for steps in (16, 128)
    }
    # Gauss quadrature of M/2 nodes vs M nodes: W1 ≈ width / M
    assert change[128]["w1_mean"] < change[16]["w1_mean"] / 5
    assert all(0 <= c["l1_max"] <= 2 and c["w1_mean"] > 0 for c in change.values())
    assert change[16]["ghosts_per_run"] == [0, 0]


def test_reorth_is_a_setting_of_the_command_line_and_checked():
    args = build_parser().parse_args(
        ["spectrum", "--dataset", "digits", "--model", "m.pt", "--split", "train"]
        + ["--out", "o.zarr", "--reorth", "full"]
    )
    assert args.reorth == "full"
    with pytest.raises(HspecError, match="reorth: must be one of"):
        spectral_density(lambda v: v, 4, reorth="partial")
