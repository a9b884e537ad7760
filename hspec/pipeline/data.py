"""Datasets as normalized tensors, and seeded per-class subsampling of the train split.

The paper's datasets (MNIST, FashionMNIST, CIFAR10, CIFAR100; Section 3.1) are read from a
data directory in torchvision's on-disk layout; torchvision downloads them when the caller
allows it. MNIST and FashionMNIST are zero-padded from 28×28 to 32×32 so that the same
networks apply. `digits` is scikit-learn's bundled 8×8 handwritten digits: no download, the
offline default for demos, tests and CI.

Every split is returned whole as two tensors (inputs float32 N×C×H×W normalized per
channel, targets int64): the largest, the CIFAR train split, is 614 MB as float32, so the
training loop can hold it on the device and slice batches without a DataLoader. There is no
augmentation.
"""

import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hspec.atomic import atomic_write
from hspec.errors import HspecError
from hspec.pipeline import factories


@dataclass(frozen=True)
class DatasetSpec:
    """Shape, per-channel normalization constants and smallest train class of one dataset."""

    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    smallest_train_class: int


# mean, std: per channel, of the train split's pixels scaled to [0, 1], before any padding (the
# usual constants for these datasets; digits' are checked against its train split by the tests).
# smallest_train_class: examples in the train split's smallest class (MNIST: digit 5).
SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(10, 1, (0.3054,), (0.3761,), 139),
    "mnist": DatasetSpec(10, 1, (0.1307,), (0.3081,), 5421),
    "fashionmnist": DatasetSpec(10, 1, (0.2860,), (0.3530,), 6000),
    "cifar10": DatasetSpec(10, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 5000),
    "cifar100": DatasetSpec(100, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 500),
}

DATASETS: tuple[str, ...] = tuple(SPECS)

SPLITS: tuple[str, ...] = ("train", "test")

# Fixed stratified split of scikit-learn's 1,797 digits: 1,437 train, 360 test.
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0

# torchvision's class for each dataset it provides.
_TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}


def spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of dataset `name`; a clear error listing the valid names otherwise."""
    if name not in SPECS:
        raise HspecError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return SPECS[name]


def num_classes(name: str) -> int:
    """Number of classes of dataset `name`."""
    return spec(name).num_classes


def in_channels(name: str) -> int:
    """Number of input channels of dataset `name`."""
    return spec(name).in_channels


def smallest_train_class(name: str) -> int:
    """Examples in the smallest class of the train split of `name`: the most `subsample` can draw."""
    return spec(name).smallest_train_class


def load_split(
    name: str, split: str, root: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[Tensor, Tensor]:
    """Load one split of a dataset as (inputs float32 N×C×H×W normalized, targets int64).

    `root` is the data directory in torchvision's layout (for `digits`, where its split is
    cached). With `download=True`, torchvision fetches the files that are missing. Missing
    files without download, or a failed download, raise one `HspecError` naming the
    dataset, the directory and both ways out.
    """
    stats = spec(name)
    if split not in SPLITS:
        raise HspecError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if name == "digits":
        pixels, targets = _digits(split, None if root is None else Path(root))
    else:
        if root is None:
            raise HspecError(f"dataset {name!r} needs a data directory")
        pixels, targets = _torchvision_split(name, split, Path(root), download)
    if len(targets) and (targets.min() < 0 or targets.max() >= stats.num_classes):
        raise HspecError(f"{name} {split} split has labels outside 0..{stats.num_classes - 1}")
    if name in ("mnist", "fashionmnist"):
        pixels = torch.nn.functional.pad(pixels, (2, 2, 2, 2))
    return _normalize(pixels, stats), targets


def load_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    factory: str | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`load_split`, or, when ``factory`` names a dataset factory
    (``package.module:function``, :mod:`hspec.pipeline.factories`), its split."""
    if factory:
        return factories.load_split(factory, split)
    return load_split(name, split, root, download)


def _normalize(pixels: Tensor, stats: DatasetSpec) -> Tensor:
    mean = torch.tensor(stats.mean).view(1, -1, 1, 1)
    std = torch.tensor(stats.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _digits(split: str, root: Path | None = None) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits scaled to [0, 1] (pixels are 0..16), with the fixed stratified
    split. With a data directory ``root`` the split is kept in ``root/digits/SPLIT.npz``
    (:func:`_digits_cache`): importing scikit-learn takes 1.5 s of every job's start."""
    cache = None if root is None else _digits_cache(root, split)
    if cache is not None:
        return cache
    images, labels = _digits_from_sklearn(split)
    if root is not None:
        _write_digits_cache(root, split, images, labels)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def _digits_from_sklearn(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here, like torchvision: each takes seconds
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    train_x, test_x, train_y, test_y = train_test_split(
        images,
        bunch.target,
        test_size=DIGITS_TEST_SIZE,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return (train_x, train_y) if split == "train" else (test_x, test_y)


def _digits_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _digits_cache(root: Path, split: str) -> tuple[Tensor, Tensor] | None:
    """The cached split, or None when there is none or it does not match its own sha256 (a
    damaged or foreign file is recomputed from scikit-learn and rewritten, never used)."""
    path = root / "digits" / f"{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            images, labels, sha = saved["images"], saved["labels"], str(saved["sha256"])
    except (OSError, ValueError, KeyError):
        return None
    if images.shape[1:] != (8, 8) or sha != _digits_sha256(images, labels):
        return None
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _write_digits_cache(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Store the split atomically with its sha256; an unwritable data directory only
    means no cache (the data come from scikit-learn each time)."""
    arrays = {"images": images, "labels": labels.astype(np.int64)}
    sha = np.array(_digits_sha256(images, labels))
    try:
        atomic_write(
            root / "digits" / f"{split}.npz",
            lambda f: np.savez(f, **arrays, sha256=sha),
            "digits cache",
        )
    except HspecError:
        pass


def _torchvision_split(name: str, split: str, root: Path, download: bool) -> tuple[Tensor, Tensor]:
    """Read a torchvision dataset's split, downloading the missing files first if allowed."""
    files = _split_files(name, split, root)
    if not all(path.is_file() for path in files):
        if not download:
            raise _missing_error(name, root, files, "download is off")
        try:
            _torchvision_class(name)(root, train=split == "train", download=True)
        except Exception as error:  # noqa: BLE001 -- any failure (no network, bad directory) ends the same way
            reason = " ".join(f"download failed: {error}".split())
            raise _missing_error(name, root, files, reason) from error
    reader = _read_idx if name in ("mnist", "fashionmnist") else _read_cifar
    return reader(name, files)


def _torchvision_class(name: str) -> Any:
    """torchvision's dataset class for `name`, imported only when needed (digits never needs it)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, _TORCHVISION_CLASSES[name])


def _split_files(name: str, split: str, root: Path) -> list[Path]:
    """The files of one split, in torchvision's layout under `root`."""
    dataset = _torchvision_class(name)
    if name in ("mnist", "fashionmnist"):
        prefix = "train" if split == "train" else "t10k"
        raw = root / dataset.__name__ / "raw"
        return [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"]
    batches = dataset.train_list if split == "train" else dataset.test_list
    return [root / dataset.base_folder / filename for filename, _md5 in batches]


def _missing_error(name: str, root: Path, files: list[Path], reason: str) -> HspecError:
    return HspecError(
        f"dataset {name!r} not found in data directory {str(root)!r} ({reason}; expected {str(files[0])!r}): "
        f"allow the download (download=True, or --download on the command line) "
        f"or put the files there in torchvision's layout"
    )


def _read_idx(name: str, files: list[Path]) -> tuple[Tensor, Tensor]:
    """MNIST-style IDX files, parsed by torchvision's own readers, as ([0, 1] N×1×28×28, labels)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    image_file, label_file = files
    images = _parse(image_file, read_image_file)
    labels = _parse(label_file, read_label_file)
    _check_lengths(name, image_file, len(images), len(labels))
    return images.unsqueeze(1).float() / 255.0, labels


def _read_cifar(name: str, files: list[Path]) -> tuple[Tensor, Tensor]:
    """CIFAR batch files (pickled dicts) as ([0, 1] N×3×32×32, labels).

    Read without torchvision's md5 check, which accepts nothing but the official files, but
    with an unpickler that builds only numpy arrays and plain containers.
    """
    label_key = "labels" if name == "cifar10" else "fine_labels"
    images, labels = [], []
    for path in files:
        batch = _parse(path, _unpickle_batch)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as error:
            raise HspecError(f"{name} file {str(path)!r} is not a CIFAR batch: {error}") from error
        _check_lengths(name, path, len(data), len(batch_labels))
        images.append(data)
        labels.append(batch_labels)
    return torch.from_numpy(np.concatenate(images)).float() / 255.0, torch.from_numpy(
        np.concatenate(labels)
    )


def _parse(path: Path, reader: Callable[[str], Any]) -> Any:
    """Run `reader` on `path`; any failure becomes a clear error naming the file."""
    try:
        return reader(str(path))
    except Exception as error:  # noqa: BLE001 -- readers signal bad files by assorted exceptions
        raise HspecError(
            f"cannot read {str(path)!r} (truncated or corrupted?): {error!r}"
        ) from error


def _check_lengths(name: str, path: Path, num_images: int, num_labels: int) -> None:
    if num_images != num_labels:
        raise HspecError(f"{name} file {str(path)!r}: {num_images} images but {num_labels} labels")


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers and refuses anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle_batch(path: str) -> dict[str, Any]:
    with open(path, "rb") as file:
        batch = _ArrayUnpickler(file, encoding="latin1").load()
    if not isinstance(batch, dict):
        raise pickle.UnpicklingError(f"expected a dict, found {type(batch).__name__}")
    return batch


def subsample(targets: Tensor | np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` examples of every class, drawn without replacement.

    The same targets and seed give the same indices (paper, Section 3.1: the train split is
    sub-sampled without replacement for each sample size). Asking for more than a class
    holds raises an error listing how many each class has.
    """
    if seed < 0:
        raise HspecError(f"seed must be >= 0, got {seed}")
    labels = np.asarray(targets)
    classes, counts = np.unique(labels, return_counts=True)
    if per_class < 1 or per_class > counts.min():
        available = ", ".join(f"{c}: {n}" for c, n in zip(classes.tolist(), counts.tolist()))
        raise HspecError(
            f"cannot draw {per_class} examples per class; available per class: {available}"
        )
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in classes
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def save_indices(path: str | os.PathLike[str], indices: np.ndarray) -> None:
    """Write an index file (.npy) atomically: a temporary file in the same directory, then os.replace."""
    atomic_write(
        Path(path),
        lambda file: np.save(file, np.asarray(indices, dtype=np.int64), allow_pickle=False),
    )


def load_indices(path: str | os.PathLike[str], size: int | None = None) -> np.ndarray:
    """Read an index file written by `save_indices`: a non-empty 1-D array of distinct
    integers; with `size`, check every index is below it. Anything else is one clear error."""
    try:
        indices = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise HspecError(f"cannot read index file {str(path)!r}: {error}") from error
    if (
        not isinstance(indices, np.ndarray)
        or indices.ndim != 1
        or not np.issubdtype(indices.dtype, np.integer)
    ):
        raise HspecError(f"index file {str(path)!r} does not hold a 1-D array of integers")
    if not len(indices):
        raise HspecError(f"index file {str(path)!r} holds no indices")
    if len(np.unique(indices)) != len(indices):
        raise HspecError(f"index file {str(path)!r} repeats indices")
    if size is not None and (indices.min() < 0 or indices.max() >= size):
        raise HspecError(
            f"index file {str(path)!r} has indices outside the split's {size} examples"
        )
    return indices


def fingerprint(indices: np.ndarray | None) -> str:
    """A short name for a train subset: "all", or the sha256 of its sorted indices."""
    if indices is None:
        return "all"
    return "sha256:" + hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()
