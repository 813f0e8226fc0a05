"""What replaces each NNI primitive in an HM-NAS supernet (``LayerChoice``, ``InputChoice``, ``Cell``), and the
last hook that names any primitive HM-NAS does not relax."""

from .cell import HMNASMixedCell
from .input import HMNASMixedInput
from .layer import HMNASMixedLayer
from .unsupported import unsupported_mutable_hook

__all__ = ["HMNASMixedCell", "HMNASMixedInput", "HMNASMixedLayer", "unsupported_mutable_hook"]
