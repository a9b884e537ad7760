"""The choice of the initial learning rate (paper, Section 3.1).

One run per rate of the grid (Table 1), then the run with the highest final test
accuracy is kept; the runs must share every other setting.
"""

import os
from collections.abc import Iterable
from typing import Any

from hspec.errors import HspecError
from hspec.pipeline.run_files import read_history


def select(run_dirs: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """Pick the best of finished runs that differ only in their initial learning rate (Section 3.1).

    Best = highest final test accuracy (runs of ``loss: mse``, which have no accuracy: the
    lowest final test loss); ties go to the lower learning rate, then to the run listed
    first. Returns {"best", "lr", "test_accuracy", "rule", "runs"}.
    """
    runs = [_final_result(run_dir) for run_dir in run_dirs]
    if not runs:
        raise HspecError("no runs to select from")
    _check_same_recipe(runs)
    if runs[0]["metadata"].get("loss") == "mse":
        best = min(runs, key=lambda run: (run["test_loss"], run["lr"]))
    else:
        best = min(runs, key=lambda run: (-run["test_accuracy"], run["lr"]))
    return {
        "best": best["run"],
        "lr": best["lr"],
        "test_accuracy": best["test_accuracy"],
        "rule": "highest final test accuracy; ties: lower learning rate, then the run listed first",
        "runs": [{key: run[key] for key in ("run", "lr", "test_accuracy")} for run in runs],
    }


def _final_result(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """{"run", "lr", "test_accuracy", "metadata"} of a finished run, or a clear error naming it."""
    content = read_history(run_dir)
    metadata, history = content["metadata"], content["history"]
    try:
        if len(history) != metadata["epochs"]:
            raise HspecError(
                f"run {str(run_dir)!r} is unfinished: {len(history)} of {metadata['epochs']} epochs"
            )
        return {
            "run": str(run_dir),
            "lr": metadata["lr"],
            "test_accuracy": history[-1]["test_accuracy"],
            "test_loss": history[-1]["test_loss"],
            "metadata": metadata,
        }
    except (KeyError, TypeError, IndexError) as error:
        raise HspecError(f"training history of run {str(run_dir)!r} lacks {error}") from error


def _check_same_recipe(runs: list[dict[str, Any]]) -> None:
    """All runs must share their metadata except the initial learning rate."""
    reference = {key: value for key, value in runs[0]["metadata"].items() if key != "lr"}
    for run in runs[1:]:
        differing = sorted(
            key for key, value in reference.items() if run["metadata"].get(key) != value
        )
        if differing:
            raise HspecError(
                f"runs {runs[0]['run']!r} and {run['run']!r} differ in {', '.join(differing)}, not only in lr"
            )
