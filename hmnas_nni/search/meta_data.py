"""Few-shot class pools from data available offline: Fashion-MNIST's meta-train, meta-validation and meta-test
classes (disjoint), scikit-learn's digits as a cross-domain meta-test, or a user's image folders.

Fashion-MNIST has ten classes, too few for 5-way tasks on three disjoint class sets, so every class is turned
by 0, 90, 180 and 270 degrees into four (:meth:`~hmnas_nni.common.episodes.ClassPool.rotated`, the way MAML grows
Omniglot). The split is by the original class, so no image or garment type of the meta-test classes is seen in
meta-training: meta-train T-shirt/top, Trouser, Pullover, Dress (16 classes); meta-validation Coat, Sandal (8);
meta-test Shirt, Sneaker, Bag, Ankle boot (16, from the test file). Digits (8x8, upsampled to the Fashion-MNIST
size) are met unrotated: 10 classes. An image folder ``DIR`` holds ``train/``, ``val/`` and ``test/``, each with one
folder of images per class (mini-ImageNet or Omniglot laid out that way); nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hmnas_nni.common.episodes import ClassPool
from hmnas_nni.format.errors import UsageError

from .data import load_dataset

FASHION_SPLIT = {"train": (0, 1, 2, 3), "val": (4, 5), "test": (6, 7, 8, 9)}
FASHION_NAMES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class MetaPools:
    """Disjoint class pools for meta-training, meta-validation and meta-testing, and cross-domain meta-test pools."""

    train: ClassPool
    val: ClassPool
    test: ClassPool
    cross: dict[str, ClassPool]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


def load_meta_pools(dataset: str = "fashion-mnist", root: str | os.PathLike | None = None,
                    images_per_class: int = 500, seed: int = 0) -> MetaPools:
    """The pools of ``dataset`` ("fashion-mnist" or an image folder's path), ``images_per_class`` images of each
    original class drawn with ``seed``; Fashion-MNIST adds digits as the cross-domain pool."""
    if images_per_class < 2:
        raise UsageError(f"images_per_class must be at least 2, got {images_per_class}")
    if dataset == "fashion-mnist":
        return _fashion_pools(root, images_per_class, seed)
    if Path(dataset).is_dir():
        return _folder_pools(Path(dataset), images_per_class, seed)
    raise UsageError(f"few-shot data {dataset!r} is neither 'fashion-mnist' nor a folder with train/, val/ and "
                     "test/ class folders; pass one of those")


def _fashion_pools(root: str | os.PathLike | None, per_class: int, seed: int) -> MetaPools:
    train, test, _ = load_dataset("fashion-mnist", root)
    rng = np.random.default_rng(seed)

    def pool(data: torch.utils.data.TensorDataset, classes: tuple[int, ...], name: str) -> ClassPool:
        x, y = data.tensors
        rows = np.concatenate([rng.choice(np.flatnonzero(y.numpy() == c), per_class, replace=False)
                               for c in classes])
        return ClassPool(x[rows], [FASHION_NAMES[int(c)] for c in y[rows]], name).rotated()

    return MetaPools(pool(train, FASHION_SPLIT["train"], "fashion-mnist meta-train"),
                     pool(train, FASHION_SPLIT["val"], "fashion-mnist meta-val"),
                     pool(test, FASHION_SPLIT["test"], "fashion-mnist meta-test"),
                     {"digits": digits_pool(size=28)})


def digits_pool(size: int = 28) -> ClassPool:
    """scikit-learn's digits (all 1,797 images, 10 classes) upsampled to ``size``, standardised."""
    train, test, _ = load_dataset("digits")
    x = torch.cat([train.tensors[0], test.tensors[0]])
    y = torch.cat([train.tensors[1], test.tensors[1]])
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    return ClassPool(x, [str(int(c)) for c in y], "digits")


def _folder_pools(root: Path, per_class: int, seed: int) -> MetaPools:
    missing = [s for s in ("train", "val", "test") if not (root / s).is_dir()]
    if missing:
        raise UsageError(f"{root}: no {missing} folder; an image folder needs train/, val/ and test/, each with one "
                         "folder of images per class")
    rng = np.random.default_rng(seed)
    pools = {s: _read_folder(root / s, per_class, rng) for s in ("train", "val", "test")}
    return MetaPools(pools["train"], pools["val"], pools["test"], {})


def _read_folder(folder: Path, per_class: int, rng: np.random.Generator, size: int = 28) -> ClassPool:
    """Up to ``per_class`` images of each class folder, grey, resized to ``size``, standardised."""
    from PIL import Image

    images, labels = [], []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for f in rng.permutation(files)[:per_class] if files else []:
            with Image.open(f) as im:
                a = np.asarray(im.convert("L").resize((size, size)), dtype=np.float32) / 255.0
            images.append(a)
            labels.append(cls.name)
    if not images:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in class folders")
    x = torch.from_numpy(np.stack(images)).unsqueeze(1)
    return ClassPool((x - x.mean()) / x.std(), labels, folder.name)
