"""Pareto fronts of (maximise accuracy, minimise latency) points: non-dominated sorting, 2D hypervolume, the ranking
under a latency cap, and greedy selection by hypervolume gain. Pure numpy functions over two equal-length arrays."""

from __future__ import annotations

import numpy as np


def _pair(accuracy: np.ndarray, latency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two objectives as float arrays of one length, or a one-line error."""
    acc, lat = np.asarray(accuracy, dtype=np.float64).ravel(), np.asarray(latency, dtype=np.float64).ravel()
    if acc.shape != lat.shape:
        raise ValueError(f"accuracy and latency need one value per point: got {acc.size} and {lat.size} values")
    return acc, lat


def dominance(accuracy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Matrix ``d[i, j]``: point i dominates point j (no worse in both objectives, better in one)."""
    acc, lat = _pair(accuracy, latency)
    no_worse = (acc[:, None] >= acc[None, :]) & (lat[:, None] <= lat[None, :])
    better = (acc[:, None] > acc[None, :]) | (lat[:, None] < lat[None, :])
    return no_worse & better


def front_ranks(accuracy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Non-dominated sorting: 0 for the Pareto front, 1 for the front once it is removed, and so on."""
    d = dominance(accuracy, latency)
    ranks = np.full(len(d), -1)
    dominated_by = d.sum(axis=0)
    front = 0
    while (ranks < 0).any():
        current = (dominated_by == 0) & (ranks < 0)
        ranks[current] = front
        dominated_by = dominated_by - d[current].sum(axis=0)
        front += 1
    return ranks


def pareto_mask(accuracy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """True for the points no other point dominates (equal points are all kept)."""
    return ~dominance(accuracy, latency).any(axis=0)


def hypervolume(accuracy: np.ndarray, latency: np.ndarray, reference: tuple[float, float]) -> float:
    """Area dominated by the points and bounded by ``reference`` = (lowest accuracy, highest latency) counted."""
    acc, lat = _pair(accuracy, latency)
    ref_acc, ref_lat = reference
    inside = (acc > ref_acc) & (lat < ref_lat)
    acc, lat = acc[inside], lat[inside]
    if acc.size == 0:
        return 0.0
    keep = pareto_mask(acc, lat)
    acc, lat = acc[keep], lat[keep]
    order = np.lexsort((lat, -acc))  # accuracy descending: along a front, latency descends with it
    acc, lat = acc[order], lat[order]
    lower = np.append(acc[1:], ref_acc)
    return float(np.sum((acc - lower) * (ref_lat - lat)))


def pareto_order(accuracy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Indices best first: by front, then by accuracy (higher first), then by latency (lower first)."""
    acc, lat = _pair(accuracy, latency)
    return np.lexsort((lat, -acc, front_ranks(acc, lat)))


def constrained_order(accuracy: np.ndarray, latency: np.ndarray, cap: float) -> np.ndarray:
    """Indices best first under a latency cap: points within the cap by accuracy (higher first, then faster), then
    the points over it by latency (least over first, then more accurate)."""
    acc, lat = _pair(accuracy, latency)
    over = lat > cap
    primary = np.where(over, lat, -acc)
    secondary = np.where(over, -acc, lat)
    return np.lexsort((secondary, primary, over))


def ranks_of(order: np.ndarray) -> np.ndarray:
    """Rank of every point (0 = best) from indices listed best first."""
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[np.asarray(order)] = np.arange(len(order))
    return ranks


def greedy_hypervolume(front_acc: np.ndarray, front_lat: np.ndarray, cand_acc: np.ndarray, cand_lat: np.ndarray,
                       k: int, reference: tuple[float, float]) -> list[int]:
    """``k`` candidate indices picked one by one, each adding the most hypervolume to the known points and the
    picks so far; once none adds any, the rest follow in Pareto order of the candidates."""
    acc, lat = _pair(front_acc, front_lat)
    keep = pareto_mask(acc, lat)  # only the known front bounds the hypervolume
    acc, lat = acc[keep], lat[keep]
    cand_acc, cand_lat = _pair(cand_acc, cand_lat)
    picked: list[int] = []
    free = np.ones(len(cand_acc), dtype=bool)
    base = hypervolume(acc, lat, reference)
    while len(picked) < min(k, len(cand_acc)):
        best, gain = -1, 0.0
        for i in np.flatnonzero(free & pareto_mask(np.where(free, cand_acc, -np.inf), cand_lat)):
            value = hypervolume(np.append(acc, cand_acc[i]), np.append(lat, cand_lat[i]), reference) - base
            if value > gain:
                best, gain = int(i), value
        if best < 0:
            break
        picked.append(best)
        free[best] = False
        acc, lat, base = np.append(acc, cand_acc[best]), np.append(lat, cand_lat[best]), base + gain
    rest = [int(i) for i in pareto_order(cand_acc, cand_lat) if free[i]]
    return picked + rest[:max(0, k - len(picked))]
