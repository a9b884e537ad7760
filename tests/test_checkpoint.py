"""Resumable spectra: interrupted anywhere, a rerun ends with the uninterrupted numbers."""

import numpy as np
import pytest
import torch

from hspec import HspecError, spectral_density


class Killed(Exception):
    """Stands for the process dying between two products."""


@pytest.fixture(scope="module")
def matrix():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 100)) / 10
    u = np.linalg.qr(rng.standard_normal((300, 2)))[0]
    return torch.tensor(x @ x.T + u @ np.diag([8.0, 5.0]) @ u.T)


def compute(matrix, checkpoint=None, die_at=None, **kwargs):
    calls = []

    def matvec(v):
        calls.append(1)
        if len(calls) == die_at:
            raise Killed
        return matrix @ v

    settings = dict(deflate=2, iterations=20, steps=40, bound_steps=16, n_vec=2,
                    dtype=torch.float64, seed=3) | kwargs
    return spectral_density(matvec, 300, checkpoint=checkpoint, checkpoint_interval=0,
                            **settings)


# with subspace deflation the products are: probe 1-2, normalization 3-18, deflation
# 19-58, Lanczos 59-98 and 99-138; die at these fractions of the whole run
@pytest.mark.parametrize("die_at", [0.005, 0.07, 0.22, 0.42, 0.55, 0.87])
@pytest.mark.parametrize("method, deflation", [("lanczos", "subspace"), ("kpm", "subspace"),
                                               ("lanczos", "krylov")])
def test_resumed_run_equals_uninterrupted_run(matrix, tmp_path, die_at, method, deflation):
    reference = compute(matrix, method=method, deflation=deflation)
    path = tmp_path / "spectrum.ckpt"
    with pytest.raises(Killed):
        compute(matrix, path, die_at=max(1, round(die_at * reference.hvp_count)),
                method=method, deflation=deflation)
    resumed = compute(matrix, path, method=method, deflation=deflation)
    for name in ("grid", "density", "outliers", "nodes", "weights", "moments"):
        assert np.array_equal(getattr(resumed, name), getattr(reference, name)), name
    assert resumed.hvp_count == reference.hvp_count


def test_a_checkpoint_of_other_settings_is_refused(matrix, tmp_path):
    path = tmp_path / "spectrum.ckpt"
    with pytest.raises(Killed):
        compute(matrix, path, die_at=30)
    with pytest.raises(HspecError, match="checkpoint of another computation"):
        compute(matrix, path, steps=50)


def test_a_corrupted_checkpoint_names_the_file(matrix, tmp_path):
    path = tmp_path / "spectrum.ckpt"
    with pytest.raises(Killed):
        compute(matrix, path, die_at=30)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(HspecError, match="spectrum.ckpt"):
        compute(matrix, path)
