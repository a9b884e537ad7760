"""Stored results are verified when read: tampered, truncated or non-finite data is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from hspec.errors import HspecError
from hspec.pipeline import selection, store

SPECTRUM = {
    "grid": np.linspace(0, 1, 8),
    "density": np.full(8, 0.5),
    "outliers": np.array([9.0, 7.0, 5.0]),
    "nodes": np.arange(4.0),
    "weights": np.full(4, 0.25),
    "moments": np.empty(0),
}
HISTORY = {
    "epoch": [1, 2],
    "lr": [0.1, 0.01],
    "train_loss": [0.5, 0.2],
    "train_accuracy": [0.8, 0.9],
    "test_loss": [0.6, 0.3],
    "test_accuracy": [0.7, 0.85],
}


def spectrum(path: Path) -> Path:
    store.write_group(path, "spectrum", SPECTRUM, {"component": "hessian"})
    return path


def history(path: Path, **changed) -> Path:
    store.write_history(path, {**HISTORY, **changed}, {"epochs": 2, "lr": 0.1})
    return path


def test_an_intact_group_reads_back_exactly_without_its_checksums(tmp_path: Path) -> None:
    arrays, attrs = store.read_spectrum(spectrum(tmp_path / "s.zarr"))
    assert all(np.array_equal(arrays[name], SPECTRUM[name]) for name in SPECTRUM)
    assert attrs == {"component": "hessian", "kind": "spectrum", "complete": True}


def test_a_deleted_chunk_is_refused_not_read_as_zeros(tmp_path: Path) -> None:
    path = spectrum(tmp_path / "s.zarr")
    shutil.rmtree(path / "outliers" / "c")
    assert np.array_equal(zarr.open_group(path, mode="r")["outliers"][:], np.zeros(3))
    with pytest.raises(
        HspecError,
        match=r"s\.zarr: not a readable spectrum result \(array "
        r"'outliers' does not match its checksum.*delete it and rerun",
    ):
        store.read_spectrum(path)


def test_an_array_rewritten_in_place_is_refused(tmp_path: Path) -> None:
    path = spectrum(tmp_path / "s.zarr")
    zarr.open_group(path, mode="r+")["outliers"][1] = np.nan
    with pytest.raises(HspecError, match="array 'outliers' does not match its checksum"):
        store.read_spectrum(path)


def test_non_finite_values_are_refused_even_with_a_valid_checksum(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store.write_group(path, "spectrum", {**SPECTRUM, "outliers": np.array([9.0, np.nan])}, {})
    with pytest.raises(HspecError, match=r"s\.zarr: array 'outliers' of this spectrum holds NaN"):
        store.read_spectrum(path)


def test_a_group_without_checksums_is_read_when_otherwise_valid(tmp_path: Path) -> None:
    path = spectrum(tmp_path / "s.zarr")
    group = zarr.open_group(path, mode="r+")
    del group.attrs["checksums"]
    assert np.array_equal(store.read_spectrum(path)[0]["outliers"], SPECTRUM["outliers"])
    group["density"][0] = np.inf
    with pytest.raises(HspecError, match="array 'density' of this spectrum holds NaN or Inf"):
        store.read_spectrum(path)


@pytest.mark.parametrize("length", [1, 3])
def test_history_arrays_of_different_lengths_are_refused(tmp_path: Path, length: int) -> None:
    path = history(tmp_path / "h.zarr", test_loss=[0.4] * length)
    with pytest.raises(
        HspecError,
        match=rf"h\.zarr: history arrays differ in length \(.*"
        rf"train_accuracy 2, test_loss {length},",
    ):
        store.read_history(path)


def test_a_resized_history_array_is_refused(tmp_path: Path) -> None:
    path = history(tmp_path / "h.zarr")
    zarr.open_group(path, mode="r+")["lr"].resize((1,))
    with pytest.raises(HspecError, match="array 'lr' does not match its checksum"):
        store.read_history(path)


def test_select_refuses_a_run_whose_test_accuracy_is_nan(tmp_path: Path) -> None:
    for run, accuracy in (("a", 0.6), ("b", np.nan)):
        (tmp_path / run).mkdir()
        history(tmp_path / run / "history.zarr", test_accuracy=[0.5, accuracy])
    assert selection.select([tmp_path / "a"])["test_accuracy"] == 0.6
    with pytest.raises(
        HspecError,
        match=f"{tmp_path / 'b' / 'history.zarr'}: array 'test_accuracy' of this history holds NaN",
    ):
        selection.select([tmp_path / "a", tmp_path / "b"])
