"""HM-NAS (hierarchical masking NAS) for Microsoft NNI: ``from hmnas_nni import HMNAS``."""

from __future__ import annotations

import warnings
from typing import Any

# NNI 3.0 scans torch.nn at import and warns about every class it does not know in newer PyTorch
# ("... is found to be not a nn.Module"); the one-shot strategies work regardless.
warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)

__all__ = ["HMNAS", "NASIB", "Architecture", "ArchitectureError"]


def __getattr__(name: str) -> Any:
    """Import the public names on first use, so ``import hmnas_nni.format`` does not load torch and NNI."""
    if name == "HMNAS":
        from hmnas_nni.nas.strategy import HMNAS

        return HMNAS
    if name == "NASIB":
        from hmnas_nni.nas.nasib import NASIB

        return NASIB
    if name in ("Architecture", "ArchitectureError"):
        from hmnas_nni.format import architecture

        return getattr(architecture, name)
    raise AttributeError(f"module 'hmnas_nni' has no attribute {name!r}")
