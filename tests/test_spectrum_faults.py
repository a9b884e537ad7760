"""`hspec spectrum` under faults: stale checkpoints, foreign --out paths, models that do
not fit the dataset, failed writes. Each ends in the right result or one error line."""

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr.storage._local

from hspec import HspecError
from hspec.numerics import spectrum
from hspec.pipeline import cli, models, store

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = [
    "--dataset",
    "digits",
    "--split",
    "test",
    "--steps",
    "12",
    "--bound-steps",
    "8",
    "--points",
    "64",
    "--device",
    "cpu",
    "--resident",
    "--quiet",
]


class Killed(Exception):
    """Stands for the process dying."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two 1-epoch digits MLPs (model.pt) that differ in their seed."""
    root = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    out = {}
    for name, seed in (("a", "0"), ("b", "1")):
        assert (
            cli.main(
                [
                    "train",
                    "--dataset",
                    "digits",
                    "--arch",
                    "mlp",
                    "--lr",
                    "0.05",
                    "--epochs",
                    "1",
                    "--seed",
                    seed,
                    "--device",
                    "cpu",
                    "--quiet",
                    "--out",
                    str(root / name),
                ]
            )
            == 0
        )
        out[name] = root / name / "model.pt"
    return out


def spectrum_cli(model: Path, out: Path, *extra: str) -> int:
    return cli.main(["spectrum", "--model", str(model), *FAST, *extra, "--out", str(out)])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hspec: error: ") and err.count("\n") == 1, err
    return err


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".tmp" in p.name]


# 1. a stale checkpoint --------------------------------------------------------------------


def test_a_checkpoint_of_model_a_is_discarded_for_model_b(runs, tmp_path, monkeypatch, caplog):
    deflate = ["--deflate", "10", "--deflation", "krylov"]
    out = tmp_path / "s.zarr"
    with monkeypatch.context() as patch:  # A dies after its deflation, leaving its checkpoint
        patch.setattr(
            spectrum, "fast_lanczos", lambda *args, **kwargs: (_ for _ in ()).throw(Killed())
        )
        with pytest.raises(Killed):
            spectrum_cli(runs["a"], out, *deflate)
    checkpoint = tmp_path / "s.zarr.rank0.ckpt"
    assert checkpoint.exists()
    with caplog.at_level("WARNING", logger="hspec.numerics.checkpoint"):
        assert spectrum_cli(runs["b"], out, *deflate) == 0
    assert spectrum_cli(runs["b"], tmp_path / "fresh_b.zarr", *deflate) == 0
    assert spectrum_cli(runs["a"], tmp_path / "fresh_a.zarr", *deflate) == 0
    outliers = {
        name: store.read_spectrum(tmp_path / name)[0]["outliers"]
        for name in ("s.zarr", "fresh_b.zarr", "fresh_a.zarr")
    }
    assert not np.allclose(outliers["s.zarr"], outliers["fresh_a.zarr"])
    assert np.array_equal(outliers["s.zarr"], outliers["fresh_b.zarr"])
    assert f"{checkpoint}: discarded" in caplog.text and "key.model" in caplog.text
    assert not list(tmp_path.glob("*.ckpt"))


def test_the_same_model_resumes_its_checkpoint(runs, tmp_path, monkeypatch, caplog):
    deflate = ["--deflate", "10", "--deflation", "krylov"]
    out = tmp_path / "s.zarr"
    with monkeypatch.context() as patch:
        patch.setattr(
            spectrum, "fast_lanczos", lambda *args, **kwargs: (_ for _ in ()).throw(Killed())
        )
        with pytest.raises(Killed):
            spectrum_cli(runs["a"], out, *deflate)
    searches = []
    search = spectrum.top_eigenpairs
    monkeypatch.setattr(
        spectrum, "top_eigenpairs", lambda *a, **k: searches.append(1) or search(*a, **k)
    )
    with caplog.at_level("WARNING", logger="hspec.numerics.checkpoint"):
        assert spectrum_cli(runs["a"], out, *deflate) == 0
    assert searches == [] and "discarded" not in caplog.text  # the deflation was resumed
    assert spectrum_cli(runs["a"], tmp_path / "fresh.zarr", *deflate) == 0
    (resumed, resumed_attrs), (fresh, fresh_attrs) = map(
        store.read_spectrum, (out, tmp_path / "fresh.zarr")
    )
    for name in store.SPECTRUM_ARRAYS:
        assert np.array_equal(resumed[name], fresh[name]), name
    assert resumed_attrs["hvp_count"] == fresh_attrs["hvp_count"]


def test_an_interrupted_blocks_run_resumes_the_finished_blocks(runs, tmp_path, monkeypatch):
    """``--blocks``: killed inside the second block, the rerun takes the first block's
    spectrum from its checkpoint (no Lanczos run on it) and ends with the spectra of a
    run that was never interrupted."""
    blocks = ["--blocks", r"first=2\..*", r"last=6\..*"]
    out = tmp_path / "b.zarr"
    dims = {"first": 64 * 512 + 512, "last": 512 * 10 + 10}
    lanczos = spectrum.fast_lanczos
    with monkeypatch.context() as patch:  # dies at the first Lanczos run of the last block

        def dies_in_last(op, *args, **kwargs):
            if op.dim == dims["last"]:
                raise Killed()
            return lanczos(op, *args, **kwargs)

        patch.setattr(spectrum, "fast_lanczos", dies_in_last)
        with pytest.raises(Killed):
            spectrum_cli(runs["a"], out, *blocks)
    assert not out.exists() and (tmp_path / "b.zarr.first.rank0.ckpt").exists()
    seen = []
    monkeypatch.setattr(
        spectrum, "fast_lanczos", lambda op, *a, **k: seen.append(op.dim) or lanczos(op, *a, **k)
    )
    assert spectrum_cli(runs["a"], out, *blocks) == 0
    assert seen and set(seen) == {dims["last"]}, "the first block was resumed, not rerun"
    assert not list(tmp_path.glob("*.ckpt"))
    assert spectrum_cli(runs["a"], tmp_path / "fresh.zarr", *blocks) == 0
    (resumed, _), (fresh, _) = map(store.read_blocks, (out, tmp_path / "fresh.zarr"))
    assert list(resumed) == list(fresh) == ["first", "last"]
    for name in fresh:
        assert resumed[name][1]["param_names"] == fresh[name][1]["param_names"]
        for array in store.SPECTRUM_ARRAYS:
            assert np.array_equal(resumed[name][0][array], fresh[name][0][array]), (name, array)


# 2. --out that hspec did not write ---------------------------------------------------------


def test_an_existing_foreign_directory_is_refused_before_any_computation(
    runs, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "results"
    (out / "demo").mkdir(parents=True)
    (out / "demo" / "keep.txt").write_text("precious")
    monkeypatch.setattr(
        cli.spectrum_job.run_files,
        "load_model",
        lambda *a, **k: pytest.fail("computed before refusing"),
    )
    assert spectrum_cli(runs["a"], out) == 2
    assert (
        f"{out}: exists and is a directory, not a spectrum group written by hspec"
        in one_error_line(capsys)
    )
    assert (out / "demo" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_an_existing_file_is_refused_and_kept(runs, tmp_path, capsys):
    out = tmp_path / "notes.zarr"
    out.write_text("precious")
    assert spectrum_cli(runs["a"], out) == 2
    assert f"{out}: exists and is a file" in one_error_line(capsys)
    assert out.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.zarr"]


def test_an_hspec_spectrum_group_is_rewritten(runs, tmp_path):
    out = tmp_path / "s.zarr"
    assert spectrum_cli(runs["a"], out) == 0
    assert spectrum_cli(runs["a"], out, "--points", "32") == 0
    assert len(store.read_spectrum(out)[0]["grid"]) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_write_group_refuses_a_foreign_path_at_write_time(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep.txt").write_text("precious")
    history = tmp_path / "h.zarr"
    store.write_group(history, "history", {"epoch": [1.0]}, {})
    for path in (tmp_path / "dir", history):  # a foreign directory, a group of another kind
        with pytest.raises(
            HspecError, match=f"{path}: exists and is a directory, not a spectrum group"
        ):
            store.write_group(path, "spectrum", {"grid": [0.0]}, {})
    assert (tmp_path / "dir" / "keep.txt").read_text() == "precious"
    assert json.loads((history / "zarr.json").read_text())["attributes"]["kind"] == "history"
    (tmp_path / "empty").mkdir()
    store.write_group(
        tmp_path / "empty", "spectrum", {"grid": [0.0]}, {}
    )  # an empty directory is replaced
    assert (
        json.loads((tmp_path / "empty" / "zarr.json").read_text())["attributes"]["kind"]
        == "spectrum"
    )


# 3. a model that does not fit the dataset --------------------------------------------------


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(num_classes=100), "num_classes=100 (expected 10)"),
        (dict(num_classes=5), "num_classes=5 (expected 10)"),
        (dict(in_channels=3), "in_channels=3 (expected 1)"),
        (dict(num_classes=-1), "num_classes=-1 (expected 10)"),
    ],
)
def test_a_model_of_other_classes_or_channels_is_one_error(runs, tmp_path, capsys, edit, message):
    saved = torch.load(runs["a"], weights_only=True)
    metadata = saved["metadata"] | edit
    state_dict = saved["state_dict"]
    if (
        min(metadata["num_classes"], metadata["in_channels"]) > 0
    ):  # weights that fit the edited metadata
        state_dict = models.create(
            "mlp", metadata["in_channels"], metadata["num_classes"]
        ).state_dict()
    path = tmp_path / "model.pt"
    torch.save({"metadata": metadata, "state_dict": state_dict}, path)
    assert spectrum_cli(path, tmp_path / "s.zarr") == 2
    assert f"checkpoint {str(path)!r} does not match: {message}" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize(
    "in_channels, num_classes, culprit",
    [
        (1, -1, "num_classes"),
        (0, 10, "in_channels"),
        (1, 2.5, "num_classes"),
        (True, 10, "in_channels"),
    ],
)
def test_create_refuses_non_positive_sizes(in_channels, num_classes, culprit):
    with pytest.raises(HspecError, match=f"{culprit}: must be a positive integer"):
        models.create("mlp", in_channels, num_classes)


# 4. failed writes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError(
            "[enforce fail at inline_container.cc:603] . "
            "PytorchStreamWriter failed writing file data/0: file write failed"
        ),
    ],
)
def test_a_failed_checkpoint_write_is_one_line_naming_it(
    runs, tmp_path, capsys, monkeypatch, error
):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "save", fail)
    assert spectrum_cli(runs["a"], tmp_path / "s.zarr") == 2
    assert (
        f"{tmp_path / 's.zarr.rank0.ckpt'}: cannot write the spectrum checkpoint"
        in one_error_line(capsys)
    )
    assert list(tmp_path.iterdir()) == []


def test_a_failed_group_write_is_one_line_naming_it(runs, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.storage._local, "_put", full)
    out = tmp_path / "s.zarr"
    assert spectrum_cli(runs["a"], out) == 2
    assert (
        f"{out}: cannot write the spectrum group ([Errno {errno.ENOSPC}] No space left"
        in one_error_line(capsys)
    )
    assert no_temp_files(tmp_path) and not out.exists()


def test_out_under_a_regular_file_is_one_line(runs, tmp_path, capsys):
    (tmp_path / "file").write_text("precious")
    out = tmp_path / "file" / "s.zarr"
    assert spectrum_cli(runs["a"], out) == 2
    assert f"{out}: cannot create its directory" in one_error_line(capsys)
    assert (tmp_path / "file").read_text() == "precious" and no_temp_files(tmp_path)


def test_a_missing_parent_of_out_is_created(runs, tmp_path):
    out = tmp_path / "new" / "deeper" / "s.zarr"
    assert spectrum_cli(runs["a"], out, "--checkpoint-interval", "0") == 0
    assert store.read_spectrum(out)[1]["kind"] == "spectrum"
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.zarr"]
