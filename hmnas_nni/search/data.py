"""Real datasets as in-memory tensors: scikit-learn digits, Fashion-MNIST, CIFAR-10.

Nothing is downloaded: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package
(or a folder holding its four ``*-ubyte.gz`` files), CIFAR-10 from a local torchvision-format
``cifar-10-batches-py`` folder. A missing dataset names every path tried and how to get it.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

DATASETS = ("digits", "fashion-mnist", "cifar10")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class DatasetError(FileNotFoundError):
    """A dataset that is missing or malformed; the message says where we looked and how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    in_channels: int
    input_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_dataset(name: str, root: str | os.PathLike | None = None) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    """Return ``(train, test, info)``; images are normalised float32 ``(N, C, H, W)``, labels int64."""
    if name == "digits":
        return _digits()
    if name == "fashion-mnist":
        return _fashion_mnist(root)
    if name == "cifar10":
        return _cifar10(root)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")


def search_splits(train: TensorDataset, subset: int | None, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Split the training set in two halves: weights train on one, architecture steps use the other.

    ``subset`` caps the images used in all (half each); the test set is never touched by a search.
    """
    n = len(train)
    if subset is not None:
        if subset < 4:
            raise ValueError(f"--subset must be at least 4 images, got {subset}")
        n = min(n, subset)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    half = n // 2
    x, y = train.tensors
    return TensorDataset(x[order[:half]], y[order[:half]]), TensorDataset(x[order[half:]], y[order[half:]])


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    dims = (0, 2, 3)
    return tuple(x.mean(dims).tolist()), tuple(x.std(dims).tolist())


def _finish(name: str, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
            num_classes: int) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    mean, std = _stats(xtr)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    info = DatasetInfo(name, xtr.shape[1], xtr.shape[2], num_classes, mean, std)
    return TensorDataset((xtr - m) / s, ytr), TensorDataset((xte - m) / s, yte), info


def _digits() -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test = order[:360]  # a fixed 20% held out, never seen by a search
    train = order[360:]
    return _finish("digits", x[train], y[train], x[test], y[test], 10)


def _candidates(root: str | os.PathLike | None, env: str, defaults: tuple[str, ...]) -> list[Path]:
    """Folders to look in: only ``root`` when one is given (a typo must not silently pick other data)."""
    if root:
        root = Path(root)
        if not root.exists():
            raise DatasetError(f"--data-root {root} does not exist; pass the folder that holds the dataset files")
        if not root.is_dir():
            raise DatasetError(f"--data-root {root} is a file; pass the folder that holds the dataset files")
        return [root]
    paths = []
    if os.environ.get(env):
        paths.append(Path(os.environ[env]))
    return paths + [Path(d) for d in defaults]


def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path} is not a readable gzip file ({e}); reinstall it with "
                           "`apt-get install --reinstall dataset-fashion-mnist`") from None
    if len(raw) < 4 or raw[2] != 0x08 or raw[3] != expect_dims:
        raise DatasetError(f"{path} is not an IDX file of {expect_dims} dimension(s) (wrong format)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_dims)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * expect_dims)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims).copy()  # writable: torch warns on read-only buffers


def _fashion_mnist(root) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    tried = _candidates(root, "HMNAS_FASHION_MNIST", FASHION_MNIST_DIRS)
    for folder in tried:
        if all((folder / f).is_file() for f in FASHION_FILES):
            break
    else:
        raise DatasetError(
            "Fashion-MNIST not found; looked for " + ", ".join(FASHION_FILES) + " in: "
            + ", ".join(str(p) for p in tried)
            + ". Install it with `sudo apt-get install dataset-fashion-mnist`, or pass --data-root DIR "
              "(or set HMNAS_FASHION_MNIST) to a folder holding those four files."
        )
    xtr = _read_idx(folder / FASHION_FILES[0], 3)
    ytr = _read_idx(folder / FASHION_FILES[1], 1)
    xte = _read_idx(folder / FASHION_FILES[2], 3)
    yte = _read_idx(folder / FASHION_FILES[3], 1)
    for x, path in ((xtr, FASHION_FILES[0]), (xte, FASHION_FILES[2])):
        if x.shape[1:] != (28, 28):
            raise DatasetError(f"{folder / path}: images are {'x'.join(map(str, x.shape[1:]))}, Fashion-MNIST "
                               "images are 28x28; pass --data-root to the original Fashion-MNIST files")
    for x, y, names in ((xtr, ytr, FASHION_FILES[:2]), (xte, yte, FASHION_FILES[2:])):
        _check_labels(folder / names[1], y, len(x), folder / names[0], 10)
    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a / 255.0, dtype=torch.float32).unsqueeze(1)
    return _finish("fashion-mnist", to_t(xtr), torch.as_tensor(ytr, dtype=torch.int64),
                   to_t(xte), torch.as_tensor(yte, dtype=torch.int64), 10)


def _cifar10(root) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    tried = _candidates(root, "HMNAS_CIFAR10", ("data", str(Path.home() / ".cache" / "cifar10")))
    folders = [p / "cifar-10-batches-py" for p in tried] + tried
    for folder in folders:
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            break
    else:
        raise DatasetError(
            "CIFAR-10 not found; looked for a torchvision-format 'cifar-10-batches-py' folder (data_batch_1..5, "
            "test_batch) in: " + ", ".join(str(p) for p in folders)
            + ". Download and unpack cifar-10-python.tar.gz there, then pass --data-root DIR."
        )

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"CIFAR-10 folder {folder} lacks {name}; unpack the whole cifar-10-python.tar.gz")
        try:
            with open(path, "rb") as f:
                d = _SafeUnpickler(f, encoding="latin1").load()
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated or not a pickle: same advice
            raise DatasetError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); it may be "
                               "truncated: unpack cifar-10-python.tar.gz again") from None
        if not isinstance(d, dict) or "data" not in d or "labels" not in d:
            raise DatasetError(f"{path} is not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
        data = np.asarray(d["data"])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"{path}: images have {data.shape[1:] if data.ndim > 1 else data.shape} values each, "
                               "CIFAR-10 images are 3x32x32 = 3072 values; pass the original CIFAR-10 batches")
        labels = np.asarray(d["labels"])
        _check_labels(path, labels, len(data), path, 10)
        return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = batch("test_batch")
    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a / 255.0, dtype=torch.float32)
    return _finish("cifar10", to_t(xtr), torch.as_tensor(ytr, dtype=torch.int64),
                   to_t(xte), torch.as_tensor(yte, dtype=torch.int64), 10)


def _check_labels(path: Path, labels: np.ndarray, n_images: int, images: Path, n_classes: int) -> None:
    """Labels must be one integer in ``[0, n_classes)`` per image."""
    if len(labels) != n_images:
        raise DatasetError(f"{path} has {len(labels)} labels for the {n_images} images of {images}; "
                           "the files come from different datasets or one is truncated")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(f"{path}: labels range over {int(labels.min())}..{int(labels.max())}, "
                           f"expected 0..{n_classes - 1}")


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles of dicts of arrays: allow only numpy array reconstruction, no code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"CIFAR-10 batch refers to {module}.{name}; refusing to load anything but arrays")
