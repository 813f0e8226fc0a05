"""Few-shot episodes: N-way K-shot tasks with query sets drawn from a pool of classes, seeded and indexable.

A :class:`ClassPool` holds the images of some classes. :meth:`ClassPool.rotated` makes every class four classes
(its images turned by 0, 90, 180 and 270 degrees), the way MAML's Omniglot experiments grow a small label set;
pools of disjoint base classes stay disjoint after it. An :class:`EpisodeSampler` draws episode ``i`` from its own
generator (``seed``, ``i``): the same index gives the same episode in every process, so a meta-test set of 600
episodes is a fixed list that every architecture meets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hmnas_nni.format.errors import UsageError


@dataclass(frozen=True)
class Episode:
    """One task: support and query images with labels renumbered 0..ways-1, and the pool classes they came from."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: tuple[str, ...]


class ClassPool:
    """Images grouped by class name; ``images`` is ``(N, C, H, W)`` float, ``labels`` one class name per image."""

    def __init__(self, images: torch.Tensor, labels: Sequence[str], name: str = "pool") -> None:
        if images.dim() != 4 or len(images) != len(labels):
            raise UsageError(f"{name}: images must be (N, C, H, W) with one label each; got {tuple(images.shape)} "
                             f"and {len(labels)} labels")
        self.name, self.images = name, images
        self.index: dict[str, np.ndarray] = {}
        for i, label in enumerate(labels):
            self.index.setdefault(str(label), []).append(i)
        self.index = {c: np.asarray(ix) for c, ix in sorted(self.index.items())}

    @property
    def classes(self) -> list[str]:
        """The class names, sorted."""
        return list(self.index)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, classes: Sequence[str], name: str) -> ClassPool:
        """A pool of the given classes only."""
        unknown = sorted(set(classes) - set(self.index))
        if unknown:
            raise UsageError(f"{self.name}: no class {unknown}; it has {self.classes}")
        rows = np.concatenate([self.index[c] for c in classes])
        return ClassPool(self.images[rows], [c for c in classes for _ in self.index[c]], name)

    def rotated(self, angles: Sequence[int] = (0, 90, 180, 270)) -> ClassPool:
        """Every class once per angle (``"c@90"``): the images turned by that many degrees."""
        if any(a % 90 for a in angles) or len(set(angles)) != len(angles):
            raise UsageError(f"rotations must be distinct multiples of 90 degrees, got {list(angles)}")
        parts, labels = [], []
        for angle in angles:
            parts.append(torch.rot90(self.images, k=(angle // 90) % 4, dims=(2, 3)))
            labels += [f"{c}@{angle}" for c, rows in self.index.items() for _ in rows]
        order = np.concatenate([rows for rows in self.index.values()])
        return ClassPool(torch.cat([p[order] for p in parts]), labels, self.name)

    def split_images(self, fraction: float, seed: int) -> tuple[ClassPool, ClassPool]:
        """Two pools of the same classes: ``fraction`` of each class's images, and the rest (seeded)."""
        rng = np.random.default_rng(seed)
        first, second = [], []
        for rows in self.index.values():
            rows = rng.permutation(rows)
            cut = max(1, min(len(rows) - 1, round(fraction * len(rows))))
            first.append(rows[:cut])
            second.append(rows[cut:])
        return self._rows(np.concatenate(first), f"{self.name}-a"), self._rows(np.concatenate(second),
                                                                             f"{self.name}-b")

    def _rows(self, rows: np.ndarray, name: str) -> ClassPool:
        labels = np.empty(len(self.images), dtype=object)
        for c, ix in self.index.items():
            labels[ix] = c
        return ClassPool(self.images[rows], list(labels[rows]), name)

    def labelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image with its class as an integer (the index in :attr:`classes`): ordinary supervised data."""
        y = torch.empty(len(self.images), dtype=torch.int64)
        for k, rows in enumerate(self.index.values()):
            y[torch.as_tensor(rows)] = k
        return self.images, y


class EpisodeSampler:
    """N-way K-shot episodes with ``queries`` query images per class, drawn from ``pool``; episode ``i`` is always
    the same for the same ``seed``."""

    def __init__(self, pool: ClassPool, ways: int, shots: int, queries: int, seed: int = 0) -> None:
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if ways < 2 or len(pool.classes) < ways:
            raise UsageError(f"{ways}-way episodes need at least {max(2, ways)} classes and ways >= 2; {pool.name} "
                             f"has {len(pool.classes)}: lower ways or add classes")
        short = [c for c, rows in pool.index.items() if len(rows) < shots + queries]
        if short:
            raise UsageError(f"{pool.name}: classes {short[:5]} have fewer than shots + queries = {shots + queries} "
                             "images; lower shots or queries")
        self.pool, self.ways, self.shots, self.queries, self.seed = pool, ways, shots, queries, int(seed)

    def episode(self, i: int) -> Episode:
        """Episode number ``i``."""
        rng = np.random.default_rng([self.seed, int(i)])
        classes = rng.choice(len(self.pool.classes), self.ways, replace=False)
        support, query = [], []
        for c in classes:
            rows = rng.choice(self.pool.index[self.pool.classes[c]], self.shots + self.queries, replace=False)
            support.append(rows[:self.shots])
            query.append(rows[self.shots:])
        x = self.pool.images
        return Episode(x[np.concatenate(support)], torch.arange(self.ways).repeat_interleave(self.shots),
                       x[np.concatenate(query)], torch.arange(self.ways).repeat_interleave(self.queries),
                       tuple(self.pool.classes[c] for c in classes))

    def episodes(self, count: int, start: int = 0) -> Iterator[Episode]:
        """Episodes ``start`` .. ``start + count - 1``."""
        return (self.episode(i) for i in range(start, start + count))
