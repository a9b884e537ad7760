"""Every number with its error and its origin (issue 13): error bands of the density,
certified outliers, provenance, and `hspec describe`."""

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hspec import HspecError, spectral_density
from hspec.numerics import provenance
from hspec.numerics.density import lanczos_approx_spec
from hspec.pipeline import cli, store
from hspec.pipeline.spectrum_job import sha256

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 2000


# --- 1. error bands ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def known():
    """A diagonal matrix of size 2000 with known eigenvalues: a Gaussian bulk and a
    skewed (gamma) shoulder."""
    rng = np.random.default_rng(1)
    eigenvalues = np.concatenate([rng.normal(0, 1, 1500), rng.gamma(2, 1, 500) + 3])
    diagonal = torch.tensor(eigenvalues)
    return eigenvalues, lambda v: diagonal * v


def estimate(known, n_vec, seed, **kwargs):
    return spectral_density(
        known[1],
        DIM,
        dtype=torch.float64,
        n_vec=n_vec,
        seed=seed,
        steps=64,
        points=256,
        check_symmetric=False,
        **kwargs,
    )


def exact_smoothed(known, result):
    """The exact eigenvalues smoothed by Alg. 3's kernel, on the result's grid and width."""
    return lanczos_approx_spec(
        known[0], np.full(DIM, 1 / DIM), result.bulk, steps=64, points=len(result.grid)
    )[1]


def counted(exact):
    """The grid points counted by the calibration: the density above 5% of its peak."""
    return exact > 0.05 * exact.max()


SEEDS = range(4)


def test_90_percent_bands_cover_the_exact_smoothed_density_and_shrink_like_one_over_sqrt_n(known):
    """Over 4 seeds at 16 vectors the 90% t bands hold the exact smoothed density at
    ≥ 85% of the counted grid points (measured 0.90); from 4 to 16 vectors the mean band
    width falls by 0.41 (the standard error by 0.55: 1/√4 = 0.5 up to the noise of s;
    the t quantile falls from 2.35 to 1.75)."""
    covered, widths, errors = [], {4: [], 16: []}, {4: [], 16: []}
    for seed in SEEDS:
        for n_vec in (4, 16):
            result = estimate(known, n_vec, seed)
            exact = exact_smoothed(known, result)
            mask = counted(exact)
            grid, lower, upper = result.band(level=0.9)
            assert np.array_equal(grid, result.grid)
            assert np.allclose(result.run_densities().mean(axis=0), result.density)
            widths[n_vec].append(np.mean((upper - lower)[mask]))
            spread = result.run_densities().std(axis=0, ddof=1) / np.sqrt(n_vec)
            errors[n_vec].append(np.mean(spread[mask]))
            if n_vec == 16:
                covered += list((lower[mask] <= exact[mask]) & (exact[mask] <= upper[mask]))
    assert np.mean(covered) >= 0.85
    assert 0.35 <= np.mean(widths[16]) / np.mean(widths[4]) <= 0.65
    assert 0.4 <= np.mean(errors[16]) / np.mean(errors[4]) <= 0.65


def test_the_bootstrap_band_is_close_to_the_t_band(known):
    result = estimate(known, 16, 0)
    exact = exact_smoothed(known, result)
    mask = counted(exact)
    _, t_lower, t_upper = result.band(0.9)
    _, lower, upper = result.band(0.9, method="bootstrap", resamples=500)
    assert np.all(lower <= result.density + 1e-12) and np.all(result.density <= upper + 1e-12)
    ratio = np.mean((upper - lower)[mask]) / np.mean((t_upper - t_lower)[mask])
    assert 0.6 <= ratio <= 1.1  # the percentile bootstrap has no t correction: narrower
    assert np.mean((lower[mask] <= exact[mask]) & (exact[mask] <= upper[mask])) >= 0.7


def test_runs_index_every_node(known):
    result = estimate(known, 3, 0)
    assert result.runs.shape == result.nodes.shape
    assert list(np.unique(result.runs)) == [0, 1, 2]
    assert np.all(np.diff(result.runs) >= 0)  # runs in order, each a contiguous block


@pytest.mark.parametrize(
    "kwargs, band, message",
    [
        ({"n_vec": 1}, {}, "band: needs n_vec ≥ 2 Lanczos runs"),
        ({"n_vec": 2, "method": "kpm"}, {}, "band: needs the Lanczos runs"),
        ({"n_vec": 2}, {"level": 1.0}, "level: must be a number in \\(0, 1\\)"),
        ({"n_vec": 2}, {"method": "normal"}, "method: must be one of"),
    ],
)
def test_a_band_that_cannot_be_measured_is_one_error(known, kwargs, band, message):
    result = estimate(known, seed=0, **kwargs)
    with pytest.raises(HspecError, match=message):
        result.band(**band)


# --- 2. certified outliers --------------------------------------------------------------


@pytest.fixture(scope="module")
def spiked():
    """A dense 300 × 300 matrix Q diag(λ) Qᵀ: a bulk in [0, 1] and outliers 6, 5.5, −4."""
    rng = np.random.default_rng(3)
    exact = np.concatenate([rng.uniform(0, 1, 297), [6.0, 5.5, -4.0]])
    q = np.linalg.qr(rng.standard_normal((300, 300)))[0]
    return torch.tensor(q @ np.diag(exact) @ q.T), np.sort(exact)


def holds_an_eigenvalue(lower, upper, exact):
    return all(np.any((low <= exact) & (exact <= high)) for low, high in zip(lower, upper))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("deflation", ["subspace", "krylov"])
def test_every_outlier_interval_holds_an_exact_eigenvalue(spiked, deflation, dtype):
    matrix, exact = spiked
    result = spectral_density(
        lambda v: matrix.to(dtype) @ v,
        300,
        deflate=3,
        deflation=deflation,
        iterations=60,
        steps=32,
        dtype=dtype,
        keep_vectors=True,
    )
    assert result.residuals.shape == result.outliers.shape == result.converged.shape
    assert holds_an_eigenvalue(*result.outlier_intervals(), exact)
    bounds = result.error_bounds
    assert np.all(bounds <= result.residuals)
    assert holds_an_eigenvalue(result.outliers - bounds, result.outliers + bounds, exact)
    # the residual is the true one: ‖A x − θ x‖ with the returned unit vectors
    x = result.vectors.to(torch.float64)
    true = torch.linalg.vector_norm(matrix @ x - x * torch.tensor(result.outliers), dim=0)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5 * 6
    assert np.allclose(result.residuals, true.numpy(), rtol=1e-3, atol=tolerance)
    if dtype == torch.float64:
        assert result.converged.all()


def test_an_unconverged_subspace_run_is_flagged_and_still_certified(spiked):
    """One subspace iteration on outliers 6 and 5.5 (a small gap): far from converged,
    flagged, yet each interval still holds an eigenvalue."""
    matrix, exact = spiked
    result = spectral_density(
        lambda v: matrix @ v, 300, deflate=2, iterations=1, steps=32, dtype=torch.float64
    )
    assert not result.converged.any()
    assert np.all(result.residuals > 1e-6 * 6)
    assert holds_an_eigenvalue(*result.outlier_intervals(), exact)


def test_subspace_residuals_cost_no_product_and_vectors_are_optional(spiked):
    matrix, _ = spiked
    result = spectral_density(
        lambda v: matrix @ v, 300, deflate=3, iterations=20, steps=32, dtype=torch.float64
    )
    assert result.hvp_count == 3 + 64 + 3 * 20 + 32
    assert result.vectors is None


def test_residuals_and_runs_are_stored_and_old_groups_still_read(spiked, tmp_path):
    matrix, _ = spiked
    result = spectral_density(
        lambda v: matrix @ v, 300, deflate=3, n_vec=2, steps=32, iterations=30, dtype=torch.float64
    )
    attrs = {name: "x" for name in store.SPECTRUM_ATTRS}
    store.write_spectrum(tmp_path / "new.zarr", result, attrs)
    arrays, stored = store.read_spectrum(tmp_path / "new.zarr")
    for name in ("runs", "residuals", "error_bounds", "converged"):
        assert np.array_equal(arrays[name], getattr(result, name)), name
    assert stored["provenance"]["seconds"] == result.seconds
    back = store.read_result(tmp_path / "new.zarr")
    for got, want in zip(
        back.band(0.9) + back.outlier_intervals(), result.band(0.9) + result.outlier_intervals()
    ):
        assert np.array_equal(got, want)
    assert back.bulk == result.bulk and back.provenance == stored["provenance"]

    old = {name: getattr(result, name) for name in store.SPECTRUM_ARRAYS + ("moments",)}
    before = {key: stored[key] for key in (*store.SPECTRUM_ATTRS, "bulk_c", "bulk_d")}
    store.write_group(tmp_path / "old.zarr", "spectrum", old, before)
    arrays, _ = store.read_spectrum(tmp_path / "old.zarr")
    assert "runs" not in arrays and np.array_equal(arrays["nodes"], result.nodes)
    back = store.read_result(tmp_path / "old.zarr")
    assert np.array_equal(back.density, result.density) and back.provenance == {}
    with pytest.raises(HspecError, match="band: this result has no run index"):
        back.band()


# --- 3. provenance ----------------------------------------------------------------------


def test_provenance_names_the_code_the_software_and_the_machine(spiked):
    matrix, _ = spiked
    result = spectral_density(lambda v: matrix @ v, 300, steps=16, dtype=torch.float64)
    record = result.provenance
    for key in ("hspec_version", "python", "torch", "numpy", "zarr", "device", "host"):
        assert isinstance(record[key], str) and record[key], key
    assert record["device"].startswith("CPU")
    assert record["started"] <= record["finished"] and record["seconds"] == result.seconds
    root = Path(provenance.__file__).resolve().parents[2]
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        assert record["git_commit"] == head.stdout.strip()
        assert isinstance(record["git_dirty"], bool)


def test_outside_a_git_checkout_the_commit_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGE", tmp_path / "hspec")
    assert provenance.git_state() == (None, None)
    monkeypatch.setattr(provenance, "_git", lambda *args: None)  # no git at all
    assert provenance.environment(torch.device("cpu"))["git_commit"] is None


class Killed(Exception):
    """Stands for the process dying."""


def test_a_resumed_run_reports_the_seconds_of_every_part(spiked, tmp_path):
    """A first part that spends ≥ 0.38 s (19 products of 20 ms) is killed in its first
    Lanczos run; the resumed, fast part reports at least the first part's seconds."""
    matrix, _ = spiked
    path, calls = tmp_path / "s.ckpt", []

    def slow(v):
        calls.append(1)
        if len(calls) > 19:
            raise Killed
        time.sleep(0.02)
        return matrix @ v

    settings = dict(steps=40, bound_steps=16, dtype=torch.float64, checkpoint=path)
    with pytest.raises(Killed):
        spectral_density(slow, 300, **settings, checkpoint_interval=0)
    first = torch.load(path, weights_only=True)
    assert first["seconds"] >= 19 * 0.02
    resumed = spectral_density(lambda v: matrix @ v, 300, **settings)
    assert resumed.seconds >= first["seconds"]
    assert resumed.provenance["seconds"] == resumed.seconds
    assert resumed.provenance["started"] == first["started"]


# --- the command line: provenance of a stored group, `hspec describe` -------------------

FAST = ["--dataset", "digits", "--split", "test", "--steps", "12", "--bound-steps", "8"]
FAST += ["--points", "64", "--device", "cpu", "--quiet", "--deflate", "2", "--iterations", "4"]
FAST += ["--n-vec", "2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 1-epoch digits MLP (model.pt) and a copy with one weight changed."""
    root = tmp_path_factory.mktemp("models")
    torch.set_num_threads(1)
    train = ["train", "--dataset", "digits", "--arch", "mlp", "--lr", "0.05", "--epochs", "1"]
    assert cli.main([*train, "--device", "cpu", "--quiet", "--out", str(root / "run")]) == 0
    saved = torch.load(root / "run" / "model.pt", weights_only=True)
    first = next(iter(saved["state_dict"]))
    saved["state_dict"][first] = saved["state_dict"][first] + 1e-3
    torch.save(saved, root / "changed.pt")
    return root / "run" / "model.pt", root / "changed.pt"


def test_the_group_records_the_model_file_and_its_training(models, tmp_path, capsys):
    outs = []
    for index, model in enumerate(models):
        outs.append(tmp_path / f"s{index}.zarr")
        assert cli.main(["spectrum", "--model", str(model), *FAST, "--out", str(outs[-1])]) == 0
    records = [store.read_spectrum(out)[1]["provenance"] for out in outs]
    assert [record["model_sha256"] for record in records] == [sha256(m) for m in models]
    assert records[0]["model_sha256"] != records[1]["model_sha256"]
    assert records[0]["training"]["lr"] == 0.05 and records[0]["training"]["epochs"] == 1
    assert records[0]["training"]["seed"] == 0 and records[0]["training"]["subset"] == "all"
    assert records[0]["seconds"] > 0 and records[0]["git_commit"] == records[1]["git_commit"]

    capsys.readouterr()
    assert cli.main(["describe", str(outs[0])]) == 0
    text = capsys.readouterr().out
    assert f"provenance.model_sha256: {sha256(models[0])}" in text
    assert "provenance.training: lr=0.05, epochs=1, seed=0, subset=all" in text
    assert "component: hessian" in text and "dataset: digits" in text
    assert text.count("outlier ") == 2 and "±" in text


@pytest.mark.parametrize("kind", ["missing", "file", "history"])
def test_describe_of_a_non_spectrum_path_is_one_error(models, tmp_path, capsys, kind):
    path = tmp_path / "thing"
    if kind == "file":
        path.write_text("not a group")
    elif kind == "history":
        path = models[0].parent / "history.zarr"
    assert cli.main(["describe", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hspec: error: {path}: not a readable spectrum result")
    assert err.count("\n") == 1


def test_a_checkpoint_of_the_older_format_is_discarded(spiked, tmp_path, caplog):
    """A checkpoint written before residuals were kept (no format, a deflation stage
    without them) is not resumed: it is discarded with a warning and the run starts over."""
    matrix, _ = spiked
    path, calls = tmp_path / "s.ckpt", []

    def dies_in_lanczos(v):
        calls.append(1)
        if len(calls) > 1 + 3 + 16 + 2 * 10:  # the checkpoint's probe, then the run's
            raise Killed
        return matrix @ v

    settings = dict(deflate=2, iterations=10, steps=20, bound_steps=16, dtype=torch.float64)
    with pytest.raises(Killed):
        spectral_density(dies_in_lanczos, 300, **settings, checkpoint=path, checkpoint_interval=0)
    state = torch.load(path, weights_only=True)
    del state["fingerprint"]["format"], state["stages"]["deflation"]["residuals"]
    torch.save(state, path)
    with caplog.at_level("WARNING", logger="hspec.numerics.checkpoint"):
        resumed = spectral_density(lambda v: matrix @ v, 300, **settings, checkpoint=path)
    assert "format 1 -> 2" in caplog.text
    fresh = spectral_density(lambda v: matrix @ v, 300, **settings)
    assert np.array_equal(resumed.residuals, fresh.residuals)
    assert resumed.hvp_count == fresh.hvp_count
