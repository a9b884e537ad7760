"""The `hspec` command line: help texts, the three commands end to end on digits, one-line errors."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hspec.pipeline import cli, data, run_files

pytestmark = pytest.mark.usefixtures("one_thread")

COMMANDS = ("download", "subsample", "train", "select")


def subparser(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        command
    ]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_documents_every_option_and_its_default(
    command: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in subparser(command)._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[0] in text
            assert "default" in action.help or "required" in action.help, action.dest
            if "%(default)s" in action.help:
                assert f"(default: {action.default})" in text


def test_subsample_train_select_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    indices_file = tmp_path / "indices.npy"
    assert (
        cli.main(
            [
                "subsample",
                "--dataset",
                "digits",
                "--per-class",
                "30",
                "--seed",
                "7",
                "--out",
                str(indices_file),
            ]
        )
        == 0
    )
    indices = np.load(indices_file)
    _, targets = data.load_split("digits", "train")
    assert np.array_equal(indices, data.subsample(targets, 30, seed=7))
    assert "wrote 300 indices" in capsys.readouterr().out

    runs = [tmp_path / "lr0.0001", tmp_path / "lr0.1"]
    for run, lr in zip(runs, ("0.0001", "0.1")):
        assert (
            cli.main(
                [
                    "train",
                    "--dataset",
                    "digits",
                    "--arch",
                    "mlp",
                    "--indices",
                    str(indices_file),
                    "--lr",
                    lr,
                    "--epochs",
                    "3",
                    "--device",
                    "cpu",
                    "--quiet",
                    "--out",
                    str(run),
                ]
            )
            == 0
        )
        assert sorted(p.name for p in run.iterdir()) == ["history.zarr", "model.pt"]
    history = run_files.read_history(runs[1])
    assert history["metadata"]["subset"] == data.fingerprint(indices)
    assert len(history["history"]) == 3
    assert f"wrote {runs[1] / 'model.pt'}: test accuracy" in capsys.readouterr().out

    best = tmp_path / "best" / "selection.json"
    model_out = tmp_path / "best" / "model.pt"
    assert (
        cli.main(["select", *map(str, runs), "--out", str(best), "--model-out", str(model_out)])
        == 0
    )
    choice = json.loads(best.read_text())
    assert choice["best"] == str(runs[1]) and choice["lr"] == 0.1
    assert model_out.read_bytes() == (runs[1] / "model.pt").read_bytes()
    assert f"best: {runs[1]} (lr 0.1" in capsys.readouterr().out


def test_download_summarizes_a_dataset_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        cli.main(["download", "--dataset", "digits", "--out", str(tmp_path / "digits.json")]) == 0
    )
    summary = json.loads((tmp_path / "digits.json").read_text())
    assert summary["input_shape"] == [1, 8, 8]
    assert summary["train"]["examples"] == 1437 and summary["test"]["examples"] == 360
    assert min(summary["train"]["class_counts"]) == data.smallest_train_class("digits")
    assert "digits is in place" in capsys.readouterr().out


def test_train_uses_exactly_the_indexed_examples(tmp_path: Path) -> None:
    data.save_indices(tmp_path / "few.npy", np.array([0, 1, 2]))  # smaller than one batch
    assert (
        cli.main(
            [
                "train",
                "--dataset",
                "digits",
                "--arch",
                "cnn",
                "--indices",
                str(tmp_path / "few.npy"),
                "--lr",
                "0.05",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--quiet",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["metadata"]["subset"] == data.fingerprint(np.array([0, 1, 2]))
    # One SGD step on 3 examples: the BatchNorm layers counted exactly one batch.
    assert saved["state_dict"]["1.num_batches_tracked"].item() == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["subsample", "--dataset", "svhn", "--per-class", "3", "--out", "x.npy"],
            "unknown dataset 'svhn'; valid names: digits, mnist, fashionmnist, cifar10, cifar100",
        ),
        (
            ["subsample", "--dataset", "digits", "--per-class", "500", "--out", "x.npy"],
            "cannot draw 500 examples per class; available per class: 0: 142, 1: 146",
        ),
        (
            [
                "subsample",
                "--dataset",
                "mnist",
                "--data-dir",
                "{tmp}",
                "--per-class",
                "3",
                "--out",
                "x.npy",
            ],
            "dataset 'mnist' not found in data directory '{tmp}'",
        ),
        (
            [
                "train",
                "--dataset",
                "digits",
                "--arch",
                "lenet",
                "--lr",
                "0.1",
                "--out",
                "{tmp}/run",
            ],
            "unknown network 'lenet'; valid names: vgg11, resnet18, mlp, cnn",
        ),
        (
            [
                "train",
                "--dataset",
                "digits",
                "--arch",
                "mlp",
                "--lr",
                "0.1",
                "--indices",
                "{tmp}/none.npy",
                "--out",
                "{tmp}/run",
            ],
            "cannot read index file '{tmp}/none.npy'",
        ),
        (
            [
                "train",
                "--dataset",
                "digits",
                "--arch",
                "mlp",
                "--lr",
                "0.1",
                "--device",
                "tpu:9",
                "--out",
                "{tmp}/run",
            ],
            "invalid --device 'tpu:9'",
        ),
        (["select", "{tmp}/missing"], "{tmp}/missing/history.zarr: not a readable history"),
        (
            ["download", "--dataset", "cifar100", "--data-dir", "{tmp}", "--out", "{tmp}/c.json"],
            "dataset 'cifar100' not found in data directory '{tmp}' (download is off",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    status = cli.main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("hspec: error: " + message.replace("{tmp}", str(tmp_path)))
    assert err.count("\n") == 1


def test_corrupted_checkpoint_in_run_directory_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 100)
    status = cli.main(
        [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "mlp",
            "--lr",
            "0.1",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 2
    assert capsys.readouterr().err.startswith(
        f"hspec: error: cannot read checkpoint '{tmp_path / 'checkpoint.pt'}'"
    )


def test_entry_point_exits_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hspec.pipeline.cli import main; sys.exit(main())",
            "select",
            str(tmp_path / "no-run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"hspec: error: {tmp_path / 'no-run' / 'history.zarr'}: not a readable history result"
    )
    assert result.stderr.count("\n") == 1


def test_spectrum_writes_a_zarr_group_and_cleans_its_checkpoint(tmp_path: Path) -> None:
    from hspec.pipeline.store import read_spectrum

    run = tmp_path / "run"
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
                "--device",
                "cpu",
                "--quiet",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    out = tmp_path / "s.zarr"
    assert (
        cli.main(
            [
                "spectrum",
                "--model",
                str(run / "model.pt"),
                "--dataset",
                "digits",
                "--split",
                "test",
                "--component",
                "gradient_covariance",
                "--deflate",
                "2",
                "--steps",
                "12",
                "--bound-steps",
                "8",
                "--iterations",
                "3",
                "--points",
                "64",
                "--device",
                "cpu",
                "--precision",
                "float64",
                "--resident",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    arrays, attrs = read_spectrum(out)
    assert (attrs["precision"], attrs["hvp"], attrs["settings"]["dtype"]) == (
        "float64",
        "reverse-over-forward",
        "float64",
    )
    assert len(arrays["outliers"]) == 2 and len(arrays["grid"]) == 64
    assert (attrs["split"], attrs["component"], attrs["n_samples"]) == (
        "test",
        "gradient_covariance",
        360,
    )
    assert attrs["hvp_count"] == 3 + 8 + 2 * 3 + 12
    assert not list(tmp_path.glob("*.ckpt"))
    # bad input: one line, status 2
    assert (
        cli.main(
            [
                "spectrum",
                "--model",
                str(run / "model.pt"),
                "--dataset",
                "mnist",
                "--split",
                "test",
                "--out",
                str(tmp_path / "x.zarr"),
            ]
        )
        == 2
    )
    assert (
        cli.main(
            [
                "spectrum",
                "--model",
                str(run / "model.pt"),
                "--dataset",
                "digits",
                "--split",
                "test",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "x.zarr"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.zarr").exists()


SMALL_SPECTRUM = ["--steps", "12", "--bound-steps", "8", "--points", "64", "--device", "cpu"]


def test_spectrum_of_blocks_one_group_per_model_and_one_block_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--blocks: one subgroup per layer of the mlp (Linear layers 2, 4, 6), the parameter
    names partitioning the model's; --params REGEX: that block alone, the same spectrum as
    its subgroup (same seed, same operator); `hspec describe` reads both."""
    from hspec.pipeline.store import read_blocks, read_spectrum

    run = tmp_path / "run"
    train = ["train", "--dataset", "digits", "--arch", "mlp", "--lr", "0.05", "--epochs", "1"]
    assert cli.main(train + ["--device", "cpu", "--quiet", "--out", str(run)]) == 0
    common = ["spectrum", "--model", str(run / "model.pt"), "--dataset", "digits"]
    common += ["--split", "test", "--precision", "float64", "--quiet", *SMALL_SPECTRUM]
    out = tmp_path / "blocks.zarr"
    assert cli.main(common + ["--blocks", "--out", str(out)]) == 0
    spectra, attrs = read_blocks(out)
    assert list(spectra) == attrs["blocks"] == ["2", "4", "6"]
    names = [n for block in spectra.values() for n in block[1]["param_names"]]
    model, _ = run_files.load_model(run / "model.pt")
    assert names == [n for n, _ in model.named_parameters()]
    for name, (_, block_attrs) in spectra.items():
        size = sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"{name}."))
        assert block_attrs["n_params"] == size and block_attrs["block"] == name
    assert not list(tmp_path.glob("*.ckpt"))
    one = tmp_path / "last.zarr"
    assert cli.main(common + ["--params", r"6\..*", "--out", str(one)]) == 0
    arrays, one_attrs = read_spectrum(one)
    assert one_attrs["block"] == r"6\..*" and one_attrs["param_names"] == ["6.weight", "6.bias"]
    assert np.allclose(arrays["nodes"], spectra["6"][0]["nodes"], rtol=1e-10, atol=1e-12)
    capsys.readouterr()
    assert cli.main(["describe", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{out}: 3 blocks: 2, 4, 6\n[block 2]\n") and "param_names" in text
    # bad input: one line, status 2, nothing written
    assert cli.main(common + ["--blocks", "last", "--out", str(tmp_path / "x.zarr")]) == 2
    assert cli.main(common + ["--params", "head.*", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "matches no trainable parameter" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
    assert cli.main(common + ["--out", str(out)]) == 2  # a blocks group is not a spectrum
