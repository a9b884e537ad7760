"""Resumable spectra: interrupted anywhere, a rerun ends with the uninterrupted numbers."""

import errno

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

    settings = (
        dict(
            deflate=2, iterations=20, steps=40, bound_steps=16, n_vec=2, dtype=torch.float64, seed=3
        )
        | kwargs
    )
    return spectral_density(matvec, 300, checkpoint=checkpoint, checkpoint_interval=0, **settings)


# with subspace deflation the products are: probe 1-2, normalization 3-18, deflation
# 19-58, Lanczos 59-98 and 99-138; die at these fractions of the whole run
@pytest.mark.parametrize("die_at", [0.005, 0.07, 0.22, 0.42, 0.55, 0.87])
@pytest.mark.parametrize(
    "method, deflation", [("lanczos", "subspace"), ("kpm", "subspace"), ("lanczos", "krylov")]
)
def test_resumed_run_equals_uninterrupted_run(matrix, tmp_path, die_at, method, deflation):
    reference = compute(matrix, method=method, deflation=deflation)
    path = tmp_path / "spectrum.ckpt"
    with pytest.raises(Killed):
        compute(
            matrix,
            path,
            die_at=max(1, round(die_at * reference.hvp_count)),
            method=method,
            deflation=deflation,
        )
    resumed = compute(matrix, path, method=method, deflation=deflation)
    for name in ("grid", "density", "outliers", "nodes", "weights", "moments"):
        assert np.array_equal(getattr(resumed, name), getattr(reference, name)), name
    assert resumed.hvp_count == reference.hvp_count


def assert_same_result(result, reference):
    for name in ("grid", "density", "outliers", "nodes", "weights", "moments"):
        assert np.array_equal(getattr(result, name), getattr(reference, name)), name
    assert result.hvp_count == reference.hvp_count


@pytest.mark.parametrize(
    "change, differs",
    [
        (dict(steps=50), "settings.steps 40 -> 50"),
        (dict(checkpoint_key={"model": "sha256:b"}), "key.model 'sha256:a' -> 'sha256:b'"),
        (dict(scale=2.0), "the probe product"),  # another operator, same settings and key
    ],
)
def test_a_checkpoint_of_another_computation_is_discarded(
    matrix, tmp_path, caplog, change, differs
):
    path = tmp_path / "spectrum.ckpt"
    first = dict(checkpoint_key={"model": "sha256:a"})
    with pytest.raises(Killed):
        compute(matrix, path, die_at=70, **first)  # killed after the deflation stage
    assert path.exists()
    scale = change.pop("scale", 1.0)
    second = first | change
    with caplog.at_level("WARNING", logger="hspec.numerics.checkpoint"):
        resumed = compute(scale * matrix, path, **second)
    assert f"{path}: discarded" in caplog.text and differs in caplog.text
    assert_same_result(resumed, compute(scale * matrix, **second))


def test_a_resumed_run_is_not_warned_about(matrix, tmp_path, caplog):
    path = tmp_path / "spectrum.ckpt"
    key = {"model": "sha256:a", "split": "train"}
    with pytest.raises(Killed):
        compute(matrix, path, die_at=70, checkpoint_key=key)
    with caplog.at_level("WARNING", logger="hspec.numerics.checkpoint"):
        resumed = compute(matrix, path, checkpoint_key=key)
    assert "discarded" not in caplog.text
    assert_same_result(resumed, compute(matrix))


def test_the_identity_probe_changes_neither_numbers_nor_counts(matrix, tmp_path):
    assert_same_result(compute(matrix, tmp_path / "spectrum.ckpt"), compute(matrix))


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError(
            "[enforce fail at inline_container.cc:603] . "
            "PytorchStreamWriter failed writing file data/0"
        ),
    ],
)
def test_a_failed_checkpoint_write_is_one_error_and_leaves_no_temp_file(
    matrix, tmp_path, monkeypatch, error
):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "save", fail)
    path = tmp_path / "spectrum.ckpt"
    with pytest.raises(HspecError, match=f"{path}: cannot write the spectrum checkpoint") as info:
        compute(matrix, path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_under_a_file_is_one_error(matrix, tmp_path):
    (tmp_path / "file").write_text("keep")
    with pytest.raises(HspecError, match="cannot write the spectrum checkpoint"):
        compute(matrix, tmp_path / "file" / "spectrum.ckpt")
    assert (tmp_path / "file").read_text() == "keep"


def test_a_corrupted_checkpoint_names_the_file(matrix, tmp_path):
    path = tmp_path / "spectrum.ckpt"
    with pytest.raises(Killed):
        compute(matrix, path, die_at=30)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(HspecError, match="spectrum.ckpt"):
        compute(matrix, path)
