"""Model spaces built from NNI primitives, searchable by HM-NAS and NNI's strategies alike, and the registry
that also finds any NNI model space by import path."""

from __future__ import annotations

from .base import ClassifierNet, ProjectSpace
from .catalogue import catalogue
from .darts import DartsSpace
from .mobile import MobileSpace
from .nasbench201 import NasBench201Space
from .registry import (
    SPACES,
    SpaceError,
    build_space,
    data_args,
    fit_input,
    is_import_path,
    space_factory,
    space_identity,
)

__all__ = [
    "SPACES", "SpaceError", "allow_space", "build_space", "data_args", "document_space_factory", "fit_input",
    "is_import_path", "register_space", "space_factory",
    "space_identity", "catalogue",
    "ProjectSpace", "ClassifierNet", "DartsSpace", "NasBench201Space", "MobileSpace",
]
