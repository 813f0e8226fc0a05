"""HM-NAS (hierarchical masking NAS) for Microsoft NNI."""

from .architecture import Architecture, ArchitectureError
from .strategy import HMNAS

__all__ = ["HMNAS", "Architecture", "ArchitectureError"]
