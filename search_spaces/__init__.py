"""Multi-level search spaces built from NNI primitives, searchable by HM-NAS and NNI's strategies alike."""

from __future__ import annotations

from typing import Any

from hmnas_nni.format.graph import CellGraph, Edge, liveness

from .base import ClassifierNet, ProjectSpace
from .darts import DartsSpace
from .mobile import MobileSpace
from .nasbench201 import NasBench201Space

SPACES: dict[str, type[ProjectSpace]] = {cls.name: cls for cls in (DartsSpace, NasBench201Space, MobileSpace)}


def build_space(name: str, **args: Any) -> ProjectSpace:
    """Create a space by name with JSON-able constructor arguments."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; choose one of {sorted(SPACES)}")
    return SPACES[name](**args)


__all__ = [
    "SPACES", "build_space", "ProjectSpace", "ClassifierNet", "CellGraph", "Edge", "liveness",
    "DartsSpace", "NasBench201Space", "MobileSpace",
]
