"""The files of a training run, and how they are read back.

A run directory holds ``checkpoint.pt`` (while the run is unfinished), ``history.zarr``
and, at the end, ``model.pt`` (:mod:`hspec.pipeline.training` writes them). Each ``.pt``
file is a dict of tensors, lists, strings and numbers, read with
``torch.load(weights_only=True)``: ``model.pt`` is ``{"metadata", "state_dict"}``, the
metadata being the run's :class:`~hspec.pipeline.training.TrainConfig` as a dict (arch,
in_channels, num_classes, dataset and the rest of the recipe). Every reader names the
file in one :class:`~hspec.errors.HspecError` when it is missing, truncated, of another
kind or does not fit what the caller expects.
"""

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hspec.errors import HspecError
from hspec.pipeline import factories, models, store

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.zarr"


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    expect: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a `model.pt` (weights_only=True); return (model in eval mode on `device`, metadata).

    `expect` maps metadata keys (e.g. arch, num_classes, dataset) to required values. A
    missing, truncated or corrupted file, a mismatch with `expect`, or weights that do not
    fit the stored architecture raise an `HspecError` naming the file.
    """
    path = Path(path)
    saved = read_file(path, ("metadata", "state_dict"))
    metadata = saved["metadata"]
    _check_metadata(path, metadata, expect or {})
    model = _build(path, metadata)
    load_weights(path, model, saved["state_dict"], metadata)
    return model.to(device or "cpu").eval(), metadata


def read_file(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    """torch.load(weights_only=True) of an hspec file holding at least `keys`, or a clear error naming it."""
    if not path.is_file():
        raise HspecError(f"checkpoint {str(path)!r} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- torch.load signals bad files by assorted exceptions
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise HspecError(
            f"cannot read checkpoint {str(path)!r} (truncated or corrupted?): {first_line}"
        ) from error
    missing = [key for key in keys if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise HspecError(f"{str(path)!r} is not an hspec checkpoint: missing {', '.join(missing)}")
    return saved


def _build(path: Path, metadata: Mapping[str, Any]) -> nn.Module:
    """The network that `metadata` describes, or a clear error naming `path`."""
    try:
        if metadata.get("model_factory"):
            return factories.create_model(metadata["model_factory"])
        return models.create(metadata["arch"], metadata["in_channels"], metadata["num_classes"])
    except (KeyError, TypeError, HspecError) as error:
        raise HspecError(f"checkpoint {str(path)!r} has unusable metadata: {error!r}") from error


def metadata_differences(
    path: Path, found: Mapping[str, Any], expected: Mapping[str, Any]
) -> list[str]:
    """'key=found (expected value)' for every key where `found` differs from `expected`."""
    if not isinstance(found, Mapping):
        raise HspecError(f"checkpoint {str(path)!r} has no metadata dict")
    return [
        f"{key}={found.get(key)!r} (expected {value!r})"
        for key, value in expected.items()
        if found.get(key) != value
    ]


def _check_metadata(path: Path, found: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """A clear error naming `path` and every key where `found` differs from `expected`."""
    found_differences = metadata_differences(path, found, expected)
    if found_differences:
        raise HspecError(f"checkpoint {str(path)!r} does not match: {', '.join(found_differences)}")


def load_weights(
    path: Path, model: nn.Module, state_dict: Mapping[str, Tensor], metadata: Mapping[str, Any]
) -> None:
    """load_state_dict(strict), turning a key or shape mismatch into one clear line naming `path`."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise HspecError(
            f"checkpoint {str(path)!r}: its weights do not fit a {metadata.get('arch')} "
            f"with {metadata.get('in_channels')} input channels and {metadata.get('num_classes')} classes"
        ) from error


def read_history(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """{"metadata", "history"} of a run directory's history.zarr (history: one record per
    epoch), or a clear error naming the group."""
    arrays, attrs = store.read_history(Path(run_dir) / HISTORY_FILE)
    metadata = {key: value for key, value in attrs.items() if key not in ("kind", "complete")}
    history = [
        {name: arrays[name][i].item() for name in store.HISTORY_ARRAYS}
        for i in range(len(arrays["epoch"]))
    ]
    return {"metadata": metadata, "history": history}
