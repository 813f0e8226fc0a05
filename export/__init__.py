"""Export HM-NAS derived networks: a timm model family, retraining, ONNX export and benchmarks.

Importing the package registers the ``hmnas`` timm models (``timm.list_models('hmnas*')``).
"""

from __future__ import annotations

from .hmnas_timm import (
    ARCH_DIR,
    HmnasNet,
    WeightsError,
    arch_pretrained_cfg,
    create_hmnas,
    load_weights,
    read_state_dict,
    register_architecture,
    registered_architectures,
    resolve_architecture,
    save_weights,
)

__all__ = [
    "ARCH_DIR", "HmnasNet", "WeightsError", "arch_pretrained_cfg", "create_hmnas", "load_weights",
    "read_state_dict", "register_architecture", "registered_architectures", "resolve_architecture", "save_weights",
]
