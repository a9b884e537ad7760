"""Faults around training and the small commands: diverging or invalid settings, unavailable
devices, bad index files, a second writer of one output, and Snakemake rerunning a train job."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_workflow import prepare, snakemake

from hspec.pipeline import cli, locking, run_files

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "train",
    "--dataset",
    "digits",
    "--arch",
    "mlp",
    "--epochs",
    "2",
    "--device",
    "cpu",
    "--quiet",
]
HOLD = (
    "import sys, time\nfrom hspec.pipeline import locking\nwith locking.hold(sys.argv[1]):\n"
    "    print('held', flush=True)\n    time.sleep(600)"
)


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """The message of a command that must fail with status 2 and one line on stderr."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hspec: error: ") and err.count("\n") == 1, err
    return err.removeprefix("hspec: error: ").rstrip("\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (
            ["--lr", "0.1", "--weight-decay", "nan"],
            "weight_decay must be a finite number >= 0, got nan",
        ),
        (["--lr", "0.1", "--momentum", "-1"], "momentum must be in [0, 1), got -1.0"),
        (
            ["--lr", "1e6"],
            "training in '{run}' diverged: the loss is not finite in epoch 1 at batch ",
        ),
    ],
)
def test_invalid_or_diverging_settings_are_one_line_and_write_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture, options: list[str], message: str
) -> None:
    run = tmp_path / "run"
    assert one_line_error(capsys, [*TRAIN, *options, "--out", str(run)]).startswith(
        message.format(run=run)
    )
    assert not (run / run_files.MODEL_FILE).exists()


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("mps", "--device 'mps' but no mps device is available"),
        ("meta", "--device 'meta' but no meta device is available"),
        ("cuda:99", "--device 'cuda:99' but "),
        ("gpu", "invalid --device 'gpu'"),
    ],
)
def test_an_unavailable_device_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, device: str, message: str
) -> None:
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an mps device")
    err = one_line_error(
        capsys, [*TRAIN, "--lr", "0.1", "--device", device, "--out", str(tmp_path / "run")]
    )
    assert err.startswith(message)


def test_a_negative_subsample_seed_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "subsample",
        "--dataset",
        "digits",
        "--per-class",
        "3",
        "--seed",
        "-1",
        "--out",
        str(tmp_path / "i.npy"),
    ]
    assert one_line_error(capsys, argv) == "seed must be >= 0, got -1"
    assert not (tmp_path / "i.npy").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.array([], dtype=np.int64), "holds no indices"),
        (np.array([4, 4]), "repeats indices"),
        (np.array([0, 5000]), "has indices outside the split's 1437 examples"),
        (np.array([0.5]), "does not hold a 1-D array of integers"),
    ],
)
def test_a_bad_index_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: np.ndarray, message: str
) -> None:
    np.save(tmp_path / "indices.npy", content)
    argv = [
        *TRAIN,
        "--lr",
        "0.1",
        "--indices",
        str(tmp_path / "indices.npy"),
        "--out",
        str(tmp_path / "run"),
    ]
    assert one_line_error(capsys, argv) == f"index file '{tmp_path / 'indices.npy'}' {message}"


# --- one writer per output -------------------------------------------------------------------


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process holding the lock of `path`; yield the start function (one process per test)."""
    processes = []

    def start(path: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        processes.append(process)
        assert process.stdout.readline() == "held\n"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


def test_a_run_directory_written_by_another_process_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture, holder
) -> None:
    run = tmp_path / "run"
    other = holder(run)
    run.mkdir()
    partial = run / ".checkpoint.pt.abc123.tmp"  # the other writer's checkpoint, half written
    partial.write_bytes(b"in progress")
    err = one_line_error(capsys, [*TRAIN, "--lr", "0.1", "--out", str(run)])
    assert (
        err == f"'{run}' is being written by another process (pid {other.pid}); "
        "wait for it to finish or stop it, then rerun"
    )
    assert [p.name for p in run.iterdir()] == [
        partial.name
    ] and partial.read_bytes() == b"in progress"

    other.kill()  # kill -9: the kernel drops its lock; its lock file stays, free
    other.wait()
    assert locking.lock_file(run).exists()
    with locking.hold(run):
        pass
    assert cli.main([*TRAIN, "--lr", "0.1", "--out", str(run)]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["history.zarr", "model.pt"]
    assert not locking.lock_file(run).exists()  # removed on release


def test_every_command_locks_its_output(
    tmp_path: Path, capsys: pytest.CaptureFixture, holder
) -> None:
    out = tmp_path / "indices.npy"
    other = holder(out)
    err = one_line_error(
        capsys, ["subsample", "--dataset", "digits", "--per-class", "3", "--out", str(out)]
    )
    assert err.startswith(f"'{out}' is being written by another process (pid {other.pid})")
    assert not out.exists()


def test_every_spelling_of_an_output_shares_its_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture, holder
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    other = holder(tmp_path / "link" / "run")
    err = one_line_error(
        capsys, [*TRAIN, "--lr", "0.1", "--out", str(tmp_path / "real" / ".." / "real" / "run")]
    )
    assert f"is being written by another process (pid {other.pid})" in err
    assert not (tmp_path / "real" / "run").exists()


# --- Snakemake -------------------------------------------------------------------------------


@pytest.mark.slow
def test_snakemake_reruns_a_finished_train_job(tmp_path: Path) -> None:
    """A forced rerun of a train job (Snakemake first deletes the job's outputs) trains again
    and writes both outputs, equal to the first run's (it used to fail, missing history.zarr)."""
    work = prepare(tmp_path)
    run = work / "results" / "ci" / "runs" / "mlp" / "digits" / "nfull" / "lr0.05"
    target = str((run / "model.pt").relative_to(work))
    snakemake(target, "--cores", "1", "--configfile", "reduced.yaml", cwd=work)
    first = run_files.read_history(run), torch.load(run / "model.pt", weights_only=True)
    snakemake(
        target, "--cores", "1", "--configfile", "reduced.yaml", "--forcerun", "train", cwd=work
    )
    again = run_files.read_history(run), torch.load(run / "model.pt", weights_only=True)
    assert again[0] == first[0] and again[1]["metadata"] == first[1]["metadata"]
    assert all(torch.equal(again[1]["state_dict"][k], v) for k, v in first[1]["state_dict"].items())
    assert sorted(p.name for p in run.iterdir()) == ["history.zarr", "model.pt"]
