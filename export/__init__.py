"""Export HM-NAS derived networks: a timm model family, retraining, ONNX export and benchmarks.

Importing the package registers the ``hmnas`` timm models (``timm.list_models('hmnas*')``).
"""

from __future__ import annotations

from .archs import ARCH_DIR, DEFAULT_ARCH, shipped_architectures
from .derived_model import DerivedModel, derived_model
from .hmnas_timm import (
    HmnasNet,
    arch_pretrained_cfg,
    build_body,
    create_hmnas,
    register_architecture,
    registered_architectures,
    resolve_architecture,
)
from .weights import WeightsError, load_weights, read_state_dict, save_weights

__all__ = [
    "ARCH_DIR", "DEFAULT_ARCH", "DerivedModel", "HmnasNet", "WeightsError", "arch_pretrained_cfg", "build_body",
    "create_hmnas", "derived_model", "load_weights", "read_state_dict", "register_architecture",
    "registered_architectures", "resolve_architecture", "save_weights", "shipped_architectures",
]
