"""Datasets: digits offline, torchvision layouts written by the tests, the real MNIST test set, subsampling."""

import gzip
import hashlib
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from sklearn.datasets import load_digits

from hspec.errors import HspecError
from hspec.pipeline import data

REAL_MNIST_T10K = Path(__file__).parents[2] / "shared" / "data" / "mnist-t10k"
MNIST_T10K_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX (ubyte) file as distributed for MNIST: magic 0x0000_08_<ndim>, big-endian sizes, then bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(
    root: Path, folder: str, sizes: dict[str, int], seed: int = 0
) -> dict[str, tuple]:
    """torchvision's raw MNIST layout under root/folder/raw; returns {prefix: (images, labels)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for prefix, size in sizes.items():
        images = rng.integers(0, 256, size=(size, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=size, dtype=np.uint8)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        written[prefix] = (images, labels)
    return written


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: str) -> None:
    """A CIFAR batch as the official files hold it: a protocol-2 pickle referring to numpy.core."""
    batch = {
        "batch_label": path.name,
        label_key: labels,
        "data": images.reshape(len(images), -1),
        "filenames": [f"{i}.png" for i in range(len(images))],
    }
    payload = pickle.dumps(batch, protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def write_cifar_like(root: Path, name: str, per_file: int = 6, seed: int = 0) -> dict[str, tuple]:
    """Every batch file of torchvision's CIFAR10/100 layout; returns {split: (images N×3×32×32, labels)}."""
    dataset = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    label_key, classes = ("labels", 10) if name == "cifar10" else ("fine_labels", 100)
    rng = np.random.default_rng(seed)
    written = {}
    for split, files in (("train", dataset.train_list), ("test", dataset.test_list)):
        images, labels = [], []
        for filename, _md5 in files:
            batch_images = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
            batch_labels = rng.integers(0, classes, size=per_file).tolist()
            write_cifar_batch(
                root / dataset.base_folder / filename, batch_images, batch_labels, label_key
            )
            images.append(batch_images)
            labels += batch_labels
        written[split] = (np.concatenate(images), np.array(labels))
    return written


def normalized(pixels: np.ndarray, name: str) -> torch.Tensor:
    spec = data.SPECS[name]
    x = torch.from_numpy(pixels).float() / 255.0
    return (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(
        1, -1, 1, 1
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: name resolution and connections fail at once, as on a machine without internet."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise socket.gaierror("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)


# --- names ---------------------------------------------------------------------------------


def test_dataset_names_classes_and_channels() -> None:
    assert data.DATASETS == ("digits", "mnist", "fashionmnist", "cifar10", "cifar100")
    assert [data.num_classes(n) for n in data.DATASETS] == [10, 10, 10, 10, 100]
    assert [data.in_channels(n) for n in data.DATASETS] == [1, 1, 1, 3, 3]


def test_smallest_train_class_of_digits_matches_its_train_split() -> None:
    _, targets = data.load_split("digits", "train")
    assert data.smallest_train_class("digits") == np.bincount(targets.numpy()).min() == 139
    assert [data.smallest_train_class(n) for n in data.DATASETS[1:]] == [5421, 6000, 5000, 500]


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(
        HspecError, match="unknown dataset 'svhn'.*digits, mnist, fashionmnist, cifar10, cifar100"
    ):
        data.load_split("svhn", "train", "data")


def test_unknown_split_is_an_error() -> None:
    with pytest.raises(HspecError, match="unknown split 'val'"):
        data.load_split("digits", "val")


# --- digits --------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_partitions_the_dataset() -> None:
    train_x, train_y = data.load_split("digits", "train")
    test_x, test_y = data.load_split("digits", "test")
    assert train_x.shape == (1437, 1, 8, 8) and test_x.shape == (360, 1, 8, 8)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    full = load_digits()
    expected = 360 * np.bincount(full.target) / len(full.target)
    assert np.all(np.abs(np.bincount(test_y.numpy()) - expected) <= 1)
    # Train and test together are exactly the 1,797 digits (as a multiset of image-label pairs).
    spec = data.SPECS["digits"]
    pixels = torch.cat([train_x, test_x]) * spec.std[0] + spec.mean[0]
    rows = sorted(
        zip(
            np.round(pixels.numpy().reshape(-1, 64) * 16).astype(int).tolist(),
            torch.cat([train_y, test_y]).tolist(),
        )
    )
    assert rows == sorted(zip(full.data.astype(int).tolist(), full.target.tolist()))
    again_x, again_y = data.load_split("digits", "train")
    assert torch.equal(again_x, train_x) and torch.equal(again_y, train_y)


def test_digits_normalization_constants_are_the_train_split_statistics() -> None:
    train_x, _ = data.load_split("digits", "train")
    assert abs(train_x.mean().item()) < 1e-3
    assert abs(train_x.std().item() - 1) < 1e-3


# --- torchvision layouts -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_like_split_is_zero_padded_to_32x32_and_normalized(
    tmp_path: Path, name: str, folder: str
) -> None:
    written = write_mnist_like(tmp_path, folder, {"train": 12, "t10k": 7})
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = written[prefix]
        inputs, targets = data.load_split(name, split, tmp_path)
        assert inputs.shape == (len(labels), 1, 32, 32) and inputs.dtype == torch.float32
        assert torch.equal(targets, torch.from_numpy(labels).long())
        padded = np.pad(images[:, None], ((0, 0), (0, 0), (2, 2), (2, 2)))
        torch.testing.assert_close(inputs, normalized(padded, name))


def test_mnist_files_are_the_ones_torchvision_itself_reads(tmp_path: Path) -> None:
    written = write_mnist_like(tmp_path, "MNIST", {"train": 5, "t10k": 3})
    reference = tvd.MNIST(tmp_path, train=False)  # torchvision's own loader, on the same files
    inputs, targets = data.load_split("mnist", "test", tmp_path)
    assert torch.equal(reference.data, torch.from_numpy(written["t10k"][0]))
    assert torch.equal(targets, reference.targets)
    assert torch.equal(
        inputs[:, 0, 2:30, 2:30], normalized(reference.data.numpy()[:, None], "mnist")[:, 0]
    )


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_splits_concatenate_the_batches_in_order(tmp_path: Path, name: str) -> None:
    written = write_cifar_like(tmp_path, name)
    for split in ("train", "test"):
        images, labels = written[split]
        inputs, targets = data.load_split(name, split, tmp_path)
        assert inputs.shape == (len(labels), 3, 32, 32)
        assert torch.equal(targets, torch.from_numpy(labels))
        torch.testing.assert_close(inputs, normalized(images, name))
    assert len(written["train"][1]) == (30 if name == "cifar10" else 6)


def test_cifar_reader_refuses_pickles_that_are_not_plain_batches(tmp_path: Path) -> None:
    write_cifar_like(tmp_path, "cifar10")
    evil = tmp_path / "cifar-10-batches-py" / "test_batch"
    evil.write_bytes(pickle.dumps({"data": print}, protocol=2))
    with pytest.raises(HspecError, match=f"cannot read '{evil}'.*refusing to load .*print"):
        data.load_split("cifar10", "test", tmp_path)


def test_truncated_idx_file_is_an_error_naming_it(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST", {"t10k": 4})
    images = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:10])
    with pytest.raises(HspecError, match=f"cannot read '{images}'"):
        data.load_split("mnist", "test", tmp_path)


def test_labels_outside_the_classes_are_an_error(tmp_path: Path) -> None:
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)))
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.array([3, 12]))
    with pytest.raises(HspecError, match="mnist test split has labels outside 0..9"):
        data.load_split("mnist", "test", tmp_path)


@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "cifar10", "cifar100"])
def test_missing_files_name_the_dataset_the_directory_and_both_ways_out(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(HspecError) as error:
        data.load_split(name, "train", tmp_path)
    message = str(error.value)
    assert f"dataset '{name}' not found in data directory '{tmp_path}'" in message
    assert (
        "allow the download" in message and "put the files there in torchvision's layout" in message
    )
    assert "\n" not in message


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_failed_download_gives_the_same_clear_error(
    tmp_path: Path, offline: None, name: str
) -> None:
    with pytest.raises(
        HspecError, match=f"dataset '{name}' not found .*download failed.*allow the download"
    ):
        data.load_split(name, "test", tmp_path, download=True)


def test_download_is_skipped_when_the_files_are_there(tmp_path: Path, offline: None) -> None:
    write_mnist_like(tmp_path, "MNIST", {"t10k": 3})
    inputs, _ = data.load_split("mnist", "test", tmp_path, download=True)
    assert len(inputs) == 3


@pytest.mark.skipif(
    not REAL_MNIST_T10K.is_dir(), reason=f"real MNIST test set not in {REAL_MNIST_T10K}"
)
def test_real_mnist_test_set(tmp_path: Path) -> None:
    md5 = dict(tvd.MNIST.resources)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        packed = (REAL_MNIST_T10K / f"{name}.gz").read_bytes()
        assert hashlib.md5(packed).hexdigest() == md5[f"{name}.gz"]  # the official files
        (raw / name).write_bytes(gzip.decompress(packed))
    inputs, targets = data.load_split("mnist", "test", tmp_path)
    assert inputs.shape == (10_000, 1, 32, 32)
    assert np.bincount(targets.numpy()).tolist() == MNIST_T10K_CLASS_COUNTS
    assert targets[:3].tolist() == [7, 2, 1]
    spec = data.SPECS["mnist"]
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    pad = inputs[:, 0, border]  # zero padding, normalized
    assert torch.all(pad == pad[0, 0]) and abs(pad[0, 0].item() + spec.mean[0] / spec.std[0]) < 1e-6
    digits = inputs[:, 0, 2:30, 2:30]  # the test set's statistics are close to the train split's
    assert abs(digits.mean().item()) < 0.02 and abs(digits.std().item() - 1) < 0.02


# --- subsampling ---------------------------------------------------------------------------


def test_subsample_draws_exactly_per_class_without_duplicates_reproducibly() -> None:
    _, targets = data.load_split("digits", "train")
    indices = data.subsample(targets, 20, seed=3)
    assert np.bincount(targets[indices].numpy()).tolist() == [20] * 10
    assert len(np.unique(indices)) == len(indices) == 200
    assert np.all(np.diff(indices) > 0)
    assert np.array_equal(indices, data.subsample(targets.numpy(), 20, seed=3))
    assert not np.array_equal(indices, data.subsample(targets, 20, seed=4))


def test_subsample_of_a_whole_class_takes_all_of_it() -> None:
    targets = np.array([0, 1, 1, 0, 2, 2, 2, 1, 0])
    assert data.subsample(targets, 3, seed=0).tolist() == list(range(9))


@pytest.mark.parametrize("per_class", [4, 0])
def test_subsample_asking_for_too_many_lists_what_is_available(per_class: int) -> None:
    targets = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    with pytest.raises(
        HspecError,
        match=f"cannot draw {per_class} examples per class; available per class: 0: 3, 1: 4, 2: 3",
    ):
        data.subsample(targets, per_class, seed=0)


def test_index_file_round_trip_and_errors(tmp_path: Path) -> None:
    indices = np.array([1, 5, 9])
    data.save_indices(tmp_path / "indices.npy", indices)
    assert np.array_equal(data.load_indices(tmp_path / "indices.npy", size=10), indices)
    assert [p.name for p in tmp_path.iterdir()] == ["indices.npy"]  # no temporary file left
    with pytest.raises(HspecError, match="outside the split's 9 examples"):
        data.load_indices(tmp_path / "indices.npy", size=9)
    with pytest.raises(HspecError, match="cannot read index file .*missing.npy"):
        data.load_indices(tmp_path / "missing.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(HspecError, match="cannot read index file .*text.npy"):
        data.load_indices(tmp_path / "text.npy")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.array([], dtype=np.int64), "holds no indices"),
        (np.array([3, 1, 3]), "repeats indices"),
        (np.array([0, -1]), "has indices outside the split's 10 examples"),
        (np.array([0, 10]), "has indices outside the split's 10 examples"),
        (np.array([0.0, 1.5]), "does not hold a 1-D array of integers"),
        (np.array([[0, 1]]), "does not hold a 1-D array of integers"),
    ],
)
def test_index_file_that_is_empty_repeats_or_is_out_of_range_is_refused(
    tmp_path: Path, content: np.ndarray, message: str
) -> None:
    np.save(tmp_path / "bad.npy", content)
    with pytest.raises(HspecError, match=f"^index file '{tmp_path / 'bad.npy'}' {message}$"):
        data.load_indices(tmp_path / "bad.npy", size=10)


def test_index_archive_or_empty_file_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "archive.npz", indices=np.array([1, 2]))
    with pytest.raises(HspecError, match="does not hold a 1-D array of integers"):
        data.load_indices(tmp_path / "archive.npz")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(HspecError, match="cannot read index file .*empty.npy"):
        data.load_indices(tmp_path / "empty.npy")


def test_subsample_refuses_a_negative_seed() -> None:
    with pytest.raises(HspecError, match="^seed must be >= 0, got -1$"):
        data.subsample(np.array([0, 1, 0, 1]), 1, seed=-1)


def test_fingerprint_names_the_subset() -> None:
    assert data.fingerprint(None) == "all"
    assert data.fingerprint(np.array([1, 2])) == data.fingerprint(np.array([1, 2], dtype=np.int32))
    assert data.fingerprint(np.array([1, 2])) != data.fingerprint(np.array([1, 3]))


def test_digits_split_is_cached_in_the_data_directory_and_checked(tmp_path, monkeypatch):
    from hspec.pipeline import data as hdata

    fresh = hdata.load_split("digits", "train")
    cached = hdata.load_split("digits", "train", tmp_path)  # computes, writes the cache
    assert (tmp_path / "digits" / "train.npz").is_file()
    for a, b in zip(fresh, cached):
        assert torch.equal(a, b)

    def no_sklearn(split):
        raise AssertionError("the cache was not used")

    with monkeypatch.context() as patch:
        patch.setattr(hdata, "_digits_from_sklearn", no_sklearn)
        again = hdata.load_split("digits", "train", tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(fresh, again))
    # a damaged cache (pixels changed, checksum kept) is recomputed and rewritten, never used
    path = tmp_path / "digits" / "train.npz"
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["images"] = arrays["images"] + 1
    np.savez(path, **arrays)
    healed = hdata.load_split("digits", "train", tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(fresh, healed))
    with np.load(path) as saved:  # and the file holds scikit-learn's split again
        assert np.array_equal(saved["images"], hdata._digits_from_sklearn("train")[0])
