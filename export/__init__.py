"""Export HM-NAS derived networks: a timm model family, retraining, ONNX export and benchmarks.

Importing the package registers the ``hmnas`` timm models (``timm.list_models('hmnas*')``).
"""

from __future__ import annotations

from .archs import ARCH_DIR, DEFAULT_ARCH, shipped_architectures
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
    "ARCH_DIR", "DEFAULT_ARCH", "HmnasNet", "WeightsError", "arch_pretrained_cfg", "build_body", "create_hmnas",
    "load_weights", "read_state_dict", "register_architecture", "registered_architectures", "resolve_architecture",
    "save_weights", "shipped_architectures",
]
