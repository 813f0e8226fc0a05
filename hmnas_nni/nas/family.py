"""A ranked family of nested networks from one search: the learned mask scores thresholded at increasing levels.

Member 0 is the search's own network (every mask at its ``tau``). Each next level is just above the lowest score
still kept, so it switches that entry off; the hierarchy rules then remove what depends on it (or keep a path
by force). Every member may keep only what the member before it kept, so members are nested, and each is cut out
of the supernet under its own level: weights inherited, no derivation gap against the supernet masked at that
level (:func:`member_state`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn as nn

from hmnas_nni.format.architecture import Architecture

from .cost import LatencyModel
from .hierarchy import Hierarchy
from .levels import kept_entries, masks_at
from .samples import architecture_from_export, export_sample


@dataclass
class FamilyMember:
    """One nested network: the level its scores were thresholded at (``None``: each mask's own ``tau``), what it
    was allowed to keep (the previous member's entries), what it keeps, and its architecture."""

    level: float | None
    allowed: dict[str, list[int]] | None
    kept: dict[str, list[int]]
    sample: dict[str, Any]
    architecture: Architecture
    predicted_ms: float | None = None

    def size(self) -> int:
        """Entries kept, over every mask."""
        return sum(len(v) for v in self.kept.values())


def member_state(hierarchy: Hierarchy, member: FamilyMember) -> contextlib.AbstractContextManager[Hierarchy]:
    """The supernet masked as ``member`` (its level, within what it was allowed), restored afterwards."""
    return masks_at(hierarchy, member.level, member.allowed)


def _next_level(hierarchy: Hierarchy, kept: dict[str, list[int]], level: float | None) -> float | None:
    """Just above the lowest score that is kept on its own merit (not forced by the rules), or ``None``."""
    scores = [float(hierarchy.masks[name].scores.detach()[i]) for name, idx in kept.items() for i in idx]
    floor = level if level is not None else min(m.tau for m in hierarchy.all_masks())
    above = [s for s in scores if s >= floor and math.isfinite(s)]
    return float(np.nextafter(min(above), math.inf)) if above else None


def nested_members(supernet: nn.Module, hierarchy: Hierarchy, cost: LatencyModel | None = None,
                   input_shape: list[int] | None = None) -> list[FamilyMember]:
    """Every distinct nested network, from the search's own to the smallest the rules allow."""
    members: list[FamilyMember] = []
    level: float | None = None
    allowed: dict[str, list[int]] | None = None
    while True:
        with masks_at(hierarchy, level, allowed):
            kept = kept_entries(hierarchy)
            if not members or kept != members[-1].kept:
                sample = export_sample(supernet)
                members.append(FamilyMember(level, allowed, kept, sample,
                                            architecture_from_export(sample, supernet, input_shape=input_shape),
                                            cost.predicted_ms() if cost is not None else None))
            level = _next_level(hierarchy, kept, level)
        if level is None:
            return members
        allowed = kept


def select(members: list[FamilyMember], k: int | None) -> list[FamilyMember]:
    """``k`` members spread evenly from the largest to the smallest (by predicted latency where known, else by
    entries kept), the search's own network first; all of them when ``k`` is ``None`` or not smaller."""
    if k is not None and k < 1:
        raise ValueError(f"a family needs k >= 1 members, got {k}")
    if k is None or k >= len(members):
        return list(members)
    if k == 1:
        return members[:1]
    size = [m.predicted_ms if m.predicted_ms is not None else float(m.size()) for m in members]
    chosen = {0, len(members) - 1}
    for target in np.linspace(size[0], size[-1], k)[1:-1]:
        free = [i for i in range(len(members)) if i not in chosen]
        chosen.add(min(free, key=lambda i: abs(size[i] - target)))
    return [members[i] for i in sorted(chosen)]


def family_members(supernet: nn.Module, hierarchy: Hierarchy, k: int | None, cost: LatencyModel | None = None,
                   input_shape: list[int] | None = None) -> list[FamilyMember]:
    """``k`` nested members of the search's result, largest (the search's own network) first."""
    return select(nested_members(supernet, hierarchy, cost, input_shape), k)
