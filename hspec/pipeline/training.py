"""The paper's training recipe (Section 3.1, Table 1), with resumable checkpoints.

SGD with momentum 0.9, batch size 128 and weight decay 5e-4; the learning rate is divided by
10 at 1/3 and 2/3 of the epochs; one run per initial learning rate of a grid, and the run with
the best test accuracy is kept (:mod:`hspec.pipeline.selection`).

A run writes into its own directory:

- `checkpoint.pt` after every epoch: model, optimizer (momentum buffers), epoch, the state of
  the generator that shuffles the data, and the history so far. The learning-rate schedule
  is a function of the epoch, so the epoch is its whole state. Rerunning a killed run
  resumes from it and, on a CPU, ends with the same weights as an uninterrupted run. A
  checkpoint of other settings is discarded with a warning naming what differs, and the
  run starts over. Once `model.pt` and `history.zarr` are written, the checkpoint is
  removed: those two files hold the finished run.
- `history.zarr` after every epoch: a Zarr v3 group (hspec.pipeline.store) of the per-epoch
  learning rate and train/test loss and accuracy (both measured in eval mode after the
  epoch), with the run's metadata as attributes.
- `model.pt` at the end: the final weights and the metadata (arch, in_channels,
  num_classes, dataset and the rest of the recipe), read back by
  `hspec.pipeline.run_files.load_model`.

Rerunning a finished run (`model.pt` and a complete `history.zarr` of the same settings)
returns its history and rewrites nothing; a run with either file missing is trained again
(or, if its checkpoint is still there, rewritten from it). A run whose loss becomes
non-finite (a diverging learning rate) stops with an `HspecError` naming the epoch and the
batch; the checkpoint of the last good epoch is kept and no `model.pt` is written. A run
directory is written under `hspec.pipeline.locking.hold`, so two processes never write one at once.

Every file is written atomically (a temporary file in the same directory, then os.replace)
and holds only tensors, dicts, lists, strings and numbers, so it loads with
`torch.load(..., weights_only=True)`.
"""

import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hspec import settings
from hspec.atomic import atomic_write
from hspec.errors import HspecError
from hspec.pipeline import factories, locking, models, store
from hspec.pipeline.run_files import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    load_weights,
    metadata_differences,
    read_file,
    read_history,
)

log = logging.getLogger(__name__)

# Section 3.1 and Table 1 (initial learning rates tried, and epochs), from hspec.settings;
# the digits entries are this project's choice for the offline demo (not in the paper).
BATCH_SIZE: int = settings.TRAINING["batch_size"]
MOMENTUM: float = settings.TRAINING["momentum"]
WEIGHT_DECAY: float = settings.TRAINING["weight_decay"]
LR_GRID: dict[str, tuple[float, ...]] = settings.LR_GRID
EPOCHS: dict[str, int] = settings.EPOCHS

EVAL_BATCH_SIZE = 1024
# losses of training (and of the spectra of a trained model): cross-entropy over classes
# (N, C) or tokens (N, T, V) with ignore index -100; mse, the mean over examples of the
# sum of squares over output entries
LOSSES = ("cross_entropy", "mse")
IGNORE_INDEX = -100
# the fields a run of a paper's net leaves out of its metadata (files of earlier versions resume)
OWN_MODEL_FIELDS = {"loss": "cross_entropy", "model_factory": "", "dataset_factory": ""}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; stored as the metadata of its files.

    `subset` names the train examples used (`hspec.pipeline.data.fingerprint` of the index file), so
    that a run directory is never resumed on different data.
    """

    arch: str
    dataset: str
    in_channels: int
    num_classes: int
    lr: float
    epochs: int
    seed: int
    subset: str = "all"
    batch_size: int = BATCH_SIZE
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    loss: str = "cross_entropy"
    model_factory: str = ""
    dataset_factory: str = ""

    def __post_init__(self) -> None:
        if not self.model_factory:
            models.validate(self.arch)
        if self.loss not in LOSSES:
            raise HspecError(f"unknown loss {self.loss!r}; valid losses: {', '.join(LOSSES)}")
        for field in ("epochs", "batch_size", "in_channels", "num_classes"):
            if not getattr(self, field) > 0:
                raise HspecError(f"{field} must be positive, got {getattr(self, field)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise HspecError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise HspecError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise HspecError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")


def run_metadata(config: TrainConfig) -> dict[str, Any]:
    """The run's metadata: the config as a dict, without the own-model fields (loss,
    factories) that are at their defaults, so a paper net's files keep their metadata."""
    return {
        key: value
        for key, value in asdict(config).items()
        if key not in OWN_MODEL_FIELDS or value != OWN_MODEL_FIELDS[key]
    }


def learning_rate(initial: float, epoch: int, epochs: int) -> float:
    """Learning rate of 0-based `epoch`: `initial`, divided by 10 from 1/3 and again from 2/3 of `epochs`."""
    decays = (3 * epoch >= epochs) + (3 * epoch >= 2 * epochs)
    return initial / 10**decays


def train(
    config: TrainConfig,
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    out_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> list[dict[str, float]]:
    """Train `config.arch` on `train_set` with the paper's recipe; return the per-epoch history.

    Both splits are moved to `device` whole. A `checkpoint.pt` in `out_dir` of the same
    config is resumed (one of another config is discarded with a warning); a finished run
    of the same config is returned as it is. `progress`: show a tqdm bar over epochs (None:
    only on a terminal). Holds `locking.hold(out_dir)` throughout: an `HspecError` at once
    if another process is writing `out_dir`.
    """
    out_dir = Path(out_dir)
    with locking.hold(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_partial_writes(out_dir)
        metadata = run_metadata(config)
        finished = _finished(out_dir, metadata)
        if finished is not None:
            return finished
        return _run(config, metadata, train_set, test_set, out_dir, device, progress)


def _run(
    config: TrainConfig,
    metadata: dict[str, Any],
    train_set: tuple[Tensor, Tensor],
    test_set: tuple[Tensor, Tensor],
    out_dir: Path,
    device: str | torch.device,
    progress: bool | None,
) -> list[dict[str, float]]:
    """Train from the checkpoint in `out_dir` (or from the start), then write history.zarr
    and model.pt and remove the checkpoint."""
    model = _init_model(config).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    start, history = _resume(out_dir / CHECKPOINT_FILE, metadata, model, optimizer, generator)
    train_x, train_y = (t.to(device) for t in train_set)
    test_x, test_y = (t.to(device) for t in test_set)
    epochs = tqdm(
        range(start, config.epochs),
        initial=start,
        total=config.epochs,
        desc=f"{config.arch} lr={config.lr}",
        unit="epoch",
        disable=None if progress is None else not progress,
    )
    for epoch in epochs:
        lr = learning_rate(config.lr, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = _train_epoch(
            model, optimizer, train_x, train_y, config.batch_size, generator, config.loss
        )
        record = {"epoch": epoch + 1, "lr": lr}
        for split, (inputs, targets) in (("train", (train_x, train_y)), ("test", (test_x, test_y))):
            record[f"{split}_loss"], record[f"{split}_accuracy"] = evaluate(
                model, inputs, targets, config.loss
            )
        _check_finite(out_dir, epoch + 1, losses, record)
        history.append(record)
        epochs.set_postfix(
            test_accuracy=f"{record['test_accuracy']:.4f}", train_loss=f"{record['train_loss']:.3g}"
        )
        checkpoint = {
            "metadata": metadata,
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "history": history,
        }
        atomic_write(
            out_dir / CHECKPOINT_FILE,
            lambda file: torch.save(checkpoint, file),
            "training checkpoint",
        )
        _write_history(out_dir, history, metadata)
    if start == config.epochs:  # resumed at the final epoch: the loop wrote nothing
        _write_history(out_dir, history, metadata)
    model_file = {"metadata": metadata, "state_dict": model.state_dict()}
    atomic_write(out_dir / MODEL_FILE, lambda file: torch.save(model_file, file), "model")
    (out_dir / CHECKPOINT_FILE).unlink()
    return history


def _write_history(
    out_dir: Path, history: list[dict[str, float]], metadata: dict[str, Any]
) -> None:
    store.write_history(
        out_dir / HISTORY_FILE,
        {name: [record[name] for record in history] for name in store.HISTORY_ARRAYS},
        metadata,
    )


def _finished(out_dir: Path, metadata: dict[str, Any]) -> list[dict[str, float]] | None:
    """The history of the finished run of `metadata` in `out_dir`, or None: there is no
    checkpoint (which would still have to be finished from), and model.pt and a complete
    history.zarr of all epochs, both of these settings, are in place."""
    if (out_dir / CHECKPOINT_FILE).exists() or not (out_dir / MODEL_FILE).is_file():
        return None
    try:
        saved = read_history(out_dir)
        model_metadata = read_file(out_dir / MODEL_FILE, ("metadata", "state_dict"))["metadata"]
    except HspecError:
        return None
    history = saved["history"]
    if (
        saved["metadata"] != metadata
        or model_metadata != metadata
        or len(history) != metadata["epochs"]
    ):
        return None
    log.info("%s already holds the finished run; nothing to do", out_dir)
    return history


def _check_finite(out_dir: Path, epoch: int, losses: Tensor, record: Mapping[str, float]) -> None:
    """A clear error naming the epoch and the first batch whose loss is not finite (or the
    evaluation after the epoch), so a diverged run stops before its checkpoint is written."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        where = f"at batch {int(bad[0]) + 1} of {len(losses)}"
    elif not all(math.isfinite(record[key]) for key in ("train_loss", "test_loss")):
        where = "in the evaluation after its last batch"
    else:
        return
    kept = f"; {CHECKPOINT_FILE} of epoch {epoch - 1} is kept" if epoch > 1 else ""
    raise HspecError(
        f"training in {str(out_dir)!r} diverged: the loss is not finite in epoch {epoch} {where}; "
        f"no {MODEL_FILE} written{kept}; try a lower learning rate"
    )


def _remove_partial_writes(out_dir: Path) -> None:
    """Delete the temporary files that a run killed while writing left in `out_dir`."""
    for name in (CHECKPOINT_FILE, HISTORY_FILE, MODEL_FILE):
        for partial in out_dir.glob(f".{name}.*.tmp"):
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()


def _init_model(config: TrainConfig) -> nn.Module:
    """The network with its initial weights drawn from `config.seed`, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.model_factory:
            return factories.create_model(config.model_factory)
        return models.create(config.arch, config.in_channels, config.num_classes)


def _resume(
    path: Path,
    metadata: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, list[dict[str, float]]]:
    """Restore the state saved in `path`, if any; return (epochs done, history so far)."""
    if not path.exists():
        return 0, []
    checkpoint = read_file(
        path, ("metadata", "epoch", "model", "optimizer", "generator", "history")
    )
    found_differences = metadata_differences(path, checkpoint["metadata"], metadata)
    if found_differences:
        log.warning(
            "discarding checkpoint %s of other settings (%s); starting over",
            path,
            ", ".join(found_differences),
        )
        return 0, []
    load_weights(path, model, checkpoint["model"], checkpoint["metadata"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    generator.set_state(checkpoint["generator"])
    log.info("resuming %s at epoch %d of %d", path, checkpoint["epoch"], metadata["epochs"])
    return checkpoint["epoch"], checkpoint["history"]


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    batch_size: int,
    generator: torch.Generator,
    loss_name: str = "cross_entropy",
) -> Tensor:
    """One pass over the examples in an order drawn from `generator`, one SGD step per batch;
    return the batch losses (kept on the device: no synchronization per batch)."""
    model.train()
    order = torch.randperm(len(targets), generator=generator).to(inputs.device)
    losses = []
    for batch in order.split(batch_size):
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model(inputs[batch]), targets[batch], loss_name)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def batch_loss(outputs: Tensor, targets: Tensor, loss: str, reduction: str = "mean") -> Tensor:
    """The training loss of a batch: cross-entropy of (N, C) logits against (N,) classes
    or of (N, T, V) logits against (N, T) tokens (ignore index -100; the mean runs over
    the counted tokens), or mse, ((outputs - targets)**2) summed over each example's
    entries; the mean over examples (``reduction="sum"``: their sum)."""
    if loss == "mse":
        per_example = ((outputs - targets) ** 2).flatten(1).sum(1)
        return per_example.mean() if reduction == "mean" else per_example.sum()
    return F.cross_entropy(
        outputs.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss: str = "cross_entropy"
) -> tuple[float, float]:
    """Mean loss and accuracy of `model` in eval mode over all examples (cross-entropy:
    over the counted tokens, accuracy the share whose argmax is the target; mse: over the
    examples, accuracy 0, selection then goes by the test loss)."""
    model.eval()
    total, correct, counted = 0.0, 0, 0
    for x, y in zip(inputs.split(EVAL_BATCH_SIZE), targets.split(EVAL_BATCH_SIZE)):
        outputs = model(x)
        total += batch_loss(outputs, y, loss, reduction="sum").item()
        if loss == "mse":
            counted += len(y)
            continue
        kept = y != IGNORE_INDEX
        correct += int((outputs.argmax(dim=-1) == y)[kept].sum())
        counted += int(kept.sum())
    return total / counted, correct / counted
