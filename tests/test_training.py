"""Training recipe: schedule, accuracy on digits, determinism, kill-and-resume, checkpoints, selection."""

import datetime
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from hspec.atomic import atomic_write
from hspec.errors import HspecError
from hspec.pipeline import cli, data, run_files, selection, training
from hspec.pipeline.store import HISTORY_ARRAYS, write_history
from hspec.pipeline.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from hspec.pipeline.cli import main; sys.exit(main())"
CNN_EPOCHS = 10


def digits_config(arch: str = "cnn", **changes: object) -> TrainConfig:
    return replace(TrainConfig(arch, "digits", 1, 10, lr=0.05, epochs=2, seed=0), **changes)


@pytest.fixture(scope="module")
def digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {split: data.load_split("digits", split) for split in data.SPLITS}


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory: pytest.TempPathFactory, digits: dict) -> tuple[Path, list, float]:
    """The demo CNN trained on digits with the paper's recipe: (run dir, history, seconds)."""
    run = tmp_path_factory.mktemp("cnn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    history = training.train(
        digits_config(epochs=CNN_EPOCHS), digits["train"], digits["test"], run, progress=False
    )
    seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    return run, history, seconds


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_is_divided_by_10_at_one_and_two_thirds() -> None:
    rates = [training.learning_rate(0.1, epoch, 200) for epoch in (0, 66, 67, 133, 134, 199)]
    assert rates == [0.1, 0.1, 0.1 / 10, 0.1 / 10, 0.1 / 100, 0.1 / 100]
    assert [training.learning_rate(0.25, epoch, 3) for epoch in range(3)] == [
        0.25,
        0.025,
        0.25 / 100,
    ]


def test_table_1_grids_and_epochs() -> None:
    assert training.LR_GRID["mnist"] == (0.1, 0.075, 0.05, 0.025, 0.01)
    assert training.LR_GRID["cifar100"] == (0.25, 0.1, 0.075, 0.05, 0.025, 0.0075)
    assert (training.EPOCHS["fashionmnist"], training.EPOCHS["cifar10"]) == (200, 350)
    assert (training.BATCH_SIZE, training.MOMENTUM, training.WEIGHT_DECAY) == (128, 0.9, 5e-4)
    assert set(training.LR_GRID) == set(training.EPOCHS) == set(data.DATASETS)


def test_digits_cnn_reaches_95_percent_within_a_minute(trained_cnn: tuple) -> None:
    run, history, seconds = trained_cnn
    assert history[-1]["test_accuracy"] >= 0.95
    assert seconds < 60
    assert [record["epoch"] for record in history] == list(range(1, CNN_EPOCHS + 1))
    assert [record["lr"] for record in history] == [
        training.learning_rate(0.05, e, CNN_EPOCHS) for e in range(CNN_EPOCHS)
    ]


def test_finished_run_directory_holds_model_and_history_only(
    trained_cnn: tuple, digits: dict
) -> None:
    run, history, _ = trained_cnn
    assert sorted(p.name for p in run.iterdir()) == ["history.zarr", "model.pt"]
    assert not list(run.parent.glob(".*.lock"))
    saved = run_files.read_history(run)
    assert saved["history"] == history
    assert saved["metadata"]["arch"] == "cnn" and saved["metadata"]["lr"] == 0.05
    model, metadata = run_files.load_model(
        run / "model.pt", expect={"arch": "cnn", "num_classes": 10}
    )
    assert metadata == saved["metadata"]
    assert not model.training
    assert training.evaluate(model, *digits["test"]) == (
        history[-1]["test_loss"],
        history[-1]["test_accuracy"],
    )


def test_rerunning_a_finished_run_keeps_its_result(trained_cnn: tuple, digits: dict) -> None:
    run, history, _ = trained_cnn
    before = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    again = training.train(
        digits_config(epochs=CNN_EPOCHS), digits["train"], digits["test"], run, progress=False
    )
    assert again == history
    assert state_dicts_equal(torch.load(run / "model.pt", weights_only=True)["state_dict"], before)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, digits: dict) -> None:
    def weights(seed: int, name: str) -> dict:
        training.train(
            digits_config(seed=seed, epochs=1),
            digits["train"],
            digits["test"],
            tmp_path / name,
            progress=False,
        )
        return torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"]

    first = weights(0, "a")
    assert state_dicts_equal(first, weights(0, "b"))
    assert not state_dicts_equal(first, weights(1, "c"))


def test_killed_run_resumes_to_the_same_weights_bit_for_bit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    epochs = 20  # on 500 examples: over a second of training left after the first checkpoint
    data.save_indices(
        tmp_path / "indices.npy", data.subsample(data.load_split("digits", "train")[1], 50, seed=0)
    )
    args = [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "cnn",
        "--indices",
        str(tmp_path / "indices.npy"),
        "--lr",
        "0.05",
        "--epochs",
        str(epochs),
        "--seed",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--out",
    ]
    # `hspec train` in a subprocess, killed with SIGKILL as soon as its first checkpoint is on disk.
    env = dict(
        os.environ, OMP_NUM_THREADS="1"
    )  # the same single thread as this process (one_thread)
    killed = subprocess.Popen(
        [sys.executable, "-c", CLI, *args, str(tmp_path / "killed")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    while not checkpoint.exists() and killed.poll() is None:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    _, log = killed.communicate()
    assert killed.returncode == -signal.SIGKILL, log
    assert not (tmp_path / "killed" / "model.pt").exists()
    assert torch.load(checkpoint, weights_only=True)["epoch"] < epochs

    assert cli.main([*args, str(tmp_path / "whole")]) == 0
    with caplog.at_level(logging.INFO, logger="hspec"):
        assert cli.main([*args, str(tmp_path / "killed")]) == 0
    assert f"resuming {checkpoint} at epoch" in caplog.text

    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert state_dicts_equal(whole["state_dict"], resumed["state_dict"])
    assert whole["metadata"] == resumed["metadata"]
    assert run_files.read_history(tmp_path / "whole") == run_files.read_history(tmp_path / "killed")
    assert not [p.name for p in (tmp_path / "killed").iterdir() if p.name.endswith(".tmp")]


def test_partial_writes_of_a_killed_run_are_removed(tmp_path: Path, digits: dict) -> None:
    partial = tmp_path / ".checkpoint.pt.x1y2z3.tmp"
    partial.write_bytes(b"half written")
    training.train(
        digits_config("mlp", epochs=1), digits["train"], digits["test"], tmp_path, progress=False
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.zarr", "model.pt"]


class Killed(Exception):
    """Stands for a kill -9 in the middle of `training.train`."""


def kill_before_model_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `training.train` die after its final checkpoint and history, before model.pt."""

    def write(path: Path, write_file, what: str = "file") -> None:
        if path.name == run_files.MODEL_FILE:
            raise Killed
        atomic_write(path, write_file, what)

    monkeypatch.setattr(training, "atomic_write", write)


def test_resume_at_the_final_epoch_rewrites_deleted_history_and_model(
    tmp_path: Path, digits: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = digits_config("mlp")
    reference = training.train(
        config, digits["train"], digits["test"], tmp_path / "whole", progress=False
    )
    kill_before_model_file(monkeypatch)
    with pytest.raises(Killed):
        training.train(config, digits["train"], digits["test"], tmp_path / "killed", progress=False)
    monkeypatch.undo()
    assert (
        torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"]
        == config.epochs
    )
    shutil.rmtree(
        tmp_path / "killed" / "history.zarr"
    )  # Snakemake deletes the outputs of a job it reruns
    assert (
        training.train(config, digits["train"], digits["test"], tmp_path / "killed", progress=False)
        == reference
    )
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["history.zarr", "model.pt"]
    assert run_files.read_history(tmp_path / "killed") == run_files.read_history(tmp_path / "whole")
    whole, resumed = (
        torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("whole", "killed")
    )
    assert (
        state_dicts_equal(whole["state_dict"], resumed["state_dict"])
        and whole["metadata"] == resumed["metadata"]
    )


def test_finished_run_with_deleted_outputs_is_trained_again(tmp_path: Path, digits: dict) -> None:
    config = digits_config("mlp")
    history = training.train(config, digits["train"], digits["test"], tmp_path, progress=False)
    before = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    shutil.rmtree(tmp_path / "history.zarr")
    (tmp_path / "model.pt").unlink()
    assert (
        training.train(config, digits["train"], digits["test"], tmp_path, progress=False) == history
    )
    assert state_dicts_equal(
        torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"], before
    )


def test_changed_epochs_retrain_a_finished_run(tmp_path: Path, digits: dict) -> None:
    training.train(
        digits_config("mlp", epochs=1),
        digits["train"],
        digits["test"],
        tmp_path / "run",
        progress=False,
    )
    fresh = training.train(
        digits_config("mlp", epochs=2),
        digits["train"],
        digits["test"],
        tmp_path / "fresh",
        progress=False,
    )
    again = training.train(
        digits_config("mlp", epochs=2),
        digits["train"],
        digits["test"],
        tmp_path / "run",
        progress=False,
    )
    assert again == fresh and len(again) == 2
    assert run_files.load_model(tmp_path / "run" / "model.pt")[1]["epochs"] == 2


def test_checkpoint_of_other_settings_is_discarded_with_a_warning(
    tmp_path: Path, digits: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kill_before_model_file(monkeypatch)  # leaves the checkpoint of an unfinished cnn run
    with pytest.raises(Killed):
        training.train(
            digits_config("cnn", epochs=1), digits["train"], digits["test"], tmp_path / "run"
        )
    monkeypatch.undo()
    config = digits_config("mlp", lr=0.1, epochs=1)
    with caplog.at_level(logging.WARNING, logger="hspec"):
        history = training.train(
            config, digits["train"], digits["test"], tmp_path / "run", progress=False
        )
    assert (
        f"discarding checkpoint {tmp_path / 'run' / 'checkpoint.pt'} of other settings (arch='cnn' "
        "(expected 'mlp'), lr=0.05 (expected 0.1)); starting over" in caplog.text
    )
    assert history == training.train(
        config, digits["train"], digits["test"], tmp_path / "fresh", progress=False
    )
    assert run_files.load_model(tmp_path / "run" / "model.pt")[1]["arch"] == "mlp"


def test_a_diverging_run_stops_keeping_the_last_good_checkpoint(
    tmp_path: Path, digits: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        training,
        "learning_rate",
        lambda initial, epoch, epochs: math.inf if epoch == 1 else initial,
    )
    with pytest.raises(
        HspecError,
        match=f"training in '{tmp_path}' diverged: the loss is not finite in epoch 2 at "
        "batch 2 of 12; no model.pt written; checkpoint.pt of epoch 1 is kept",
    ):
        training.train(
            digits_config("mlp", epochs=3),
            digits["train"],
            digits["test"],
            tmp_path,
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "history.zarr"]
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())
    assert len(run_files.read_history(tmp_path)["history"]) == 1


# --- load_model ----------------------------------------------------------------------------


@pytest.fixture
def saved_model(trained_cnn: tuple, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the trained model.pt that a test may spoil, and its contents."""
    path = tmp_path / "model.pt"
    path.write_bytes((trained_cnn[0] / "model.pt").read_bytes())
    return path, torch.load(path, weights_only=True)


def test_load_model_checks_the_expected_architecture_and_classes(saved_model: tuple) -> None:
    path, _ = saved_model
    with pytest.raises(
        HspecError,
        match=f"checkpoint '{path}' does not match: "
        "arch='cnn' \\(expected 'mlp'\\), num_classes=10 \\(expected 100\\)",
    ):
        run_files.load_model(path, expect={"arch": "mlp", "num_classes": 100})


@pytest.mark.parametrize(
    ("key", "value"), [("arch", "mlp"), ("num_classes", 100), ("in_channels", 3)]
)
def test_weights_of_another_architecture_are_a_clear_error(
    saved_model: tuple, key: str, value: object
) -> None:
    path, saved = saved_model
    saved["metadata"][key] = value
    torch.save(saved, path)
    with pytest.raises(HspecError, match=f"checkpoint '{path}': its weights do not fit a "):
        run_files.load_model(path)


@pytest.mark.parametrize("spoil", ["truncate", "garbage", "empty"])
def test_corrupted_model_file_is_a_clear_error_naming_it(saved_model: tuple, spoil: str) -> None:
    path, _ = saved_model
    content = {
        "truncate": path.read_bytes()[: path.stat().st_size // 2],
        "garbage": b"\x00not a checkpoint" * 9,
        "empty": b"",
    }[spoil]
    path.write_bytes(content)
    with pytest.raises(
        HspecError, match=f"cannot read checkpoint '{path}' \\(truncated or corrupted\\?\\)"
    ):
        run_files.load_model(path)


def test_model_file_with_arbitrary_objects_is_refused(saved_model: tuple) -> None:
    path, saved = saved_model
    saved["metadata"]["when"] = datetime.date(
        2019, 1, 1
    )  # torch.save pickles it; weights_only refuses it
    torch.save(saved, path)
    with pytest.raises(HspecError, match=f"cannot read checkpoint '{path}'"):
        run_files.load_model(path)


def test_missing_or_foreign_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HspecError, match=f"checkpoint '{tmp_path / 'model.pt'}' does not exist"):
        run_files.load_model(tmp_path / "model.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(
        HspecError, match="is not an hspec checkpoint: missing metadata, state_dict"
    ):
        run_files.load_model(tmp_path / "other.pt")


def test_corrupted_checkpoint_is_not_resumed(tmp_path: Path, digits: dict) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"half a checkpoint")
    with pytest.raises(HspecError, match=f"cannot read checkpoint '{tmp_path / 'checkpoint.pt'}'"):
        training.train(digits_config(), digits["train"], digits["test"], tmp_path)


def test_config_rejects_unknown_networks_and_nonpositive_values() -> None:
    with pytest.raises(
        HspecError, match="unknown network 'lenet'; valid names: vgg11, resnet18, mlp, cnn"
    ):
        digits_config("lenet")
    with pytest.raises(HspecError, match="epochs must be positive, got 0"):
        digits_config(epochs=0)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("lr", math.inf, "a finite number > 0"),
        ("lr", math.nan, "a finite number > 0"),
        ("lr", 0.0, "a finite number > 0"),
        ("momentum", -1.0, "in \\[0, 1\\)"),
        ("momentum", 1.0, "in \\[0, 1\\)"),
        ("momentum", math.nan, "in \\[0, 1\\)"),
        ("weight_decay", math.nan, "a finite number >= 0"),
        ("weight_decay", -1e-4, "a finite number >= 0"),
        ("weight_decay", math.inf, "a finite number >= 0"),
    ],
)
def test_config_rejects_non_finite_or_out_of_range_optimizer_settings(
    field: str, value: float, rule: str
) -> None:
    with pytest.raises(HspecError, match=f"^{field} must be {rule}, got {value}$"):
        digits_config(**{field: value})


# --- learning-rate selection ---------------------------------------------------------------


def fake_run(run: Path, lr: float, test_acc: float, epochs: int = 2, arch: str = "cnn") -> Path:
    """A run directory whose history.zarr says the run ended at `test_acc`."""
    run.mkdir()
    metadata = asdict(digits_config(arch, lr=lr, epochs=epochs))
    history = [
        {
            "epoch": e + 1,
            "lr": lr,
            "train_loss": 0.1,
            "train_accuracy": 0.9,
            "test_loss": 0.2,
            "test_accuracy": test_acc,
        }
        for e in range(epochs)
    ]
    write_history(
        run / "history.zarr",
        {name: [r[name] for r in history] for name in HISTORY_ARRAYS},
        metadata,
    )
    return run


def test_select_picks_the_best_trained_run(tmp_path: Path, digits: dict) -> None:
    runs = []
    for lr in (1e-4, 0.05):
        runs.append(tmp_path / f"lr{lr}")
        training.train(
            digits_config("mlp", lr=lr), digits["train"], digits["test"], runs[-1], progress=False
        )
    choice = selection.select(runs)
    accuracies = [run_files.read_history(run)["history"][-1]["test_accuracy"] for run in runs]
    assert accuracies[1] > accuracies[0]
    assert (choice["best"], choice["lr"], choice["test_accuracy"]) == (
        str(runs[1]),
        0.05,
        accuracies[1],
    )
    assert [run["lr"] for run in choice["runs"]] == [1e-4, 0.05]


def test_select_breaks_ties_by_lower_lr_then_order(tmp_path: Path) -> None:
    high, low, low_again = (
        fake_run(tmp_path / "a", 0.1, 0.9),
        fake_run(tmp_path / "b", 0.05, 0.9),
        fake_run(tmp_path / "c", 0.05, 0.9),
    )
    assert selection.select([high, low, low_again])["best"] == str(low)
    assert selection.select([low_again, low, high])["best"] == str(low_again)
    assert selection.select([high, low, fake_run(tmp_path / "d", 0.25, 0.91)])["best"] == str(
        tmp_path / "d"
    )


def test_select_refuses_unfinished_mismatched_or_missing_runs(tmp_path: Path) -> None:
    finished = fake_run(tmp_path / "a", 0.1, 0.9)
    unfinished = fake_run(tmp_path / "b", 0.05, 0.9)
    content = run_files.read_history(unfinished)
    write_history(
        unfinished / "history.zarr",
        {name: [r[name] for r in content["history"][:-1]] for name in HISTORY_ARRAYS},
        content["metadata"],
    )
    with pytest.raises(HspecError, match="is unfinished: 1 of 2 epochs"):
        selection.select([finished, unfinished])
    with pytest.raises(HspecError, match="differ in arch, not only in lr"):
        selection.select([finished, fake_run(tmp_path / "c", 0.05, 0.9, arch="mlp")])
    with pytest.raises(
        HspecError, match=f"{tmp_path / 'd' / 'history.zarr'}: not a readable history"
    ):
        selection.select([finished, tmp_path / "d"])
