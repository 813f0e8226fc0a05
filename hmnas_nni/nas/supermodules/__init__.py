"""What replaces each NNI primitive in an HM-NAS supernet (``LayerChoice``, ``InputChoice``, ``Cell``, ``Repeat``
with a depth choice, value choices in NNI's mutable layers), and the last hook that names any primitive HM-NAS
does not relax."""

from .cell import HMNASMixedCell
from .input import HMNASMixedInput
from .layer import HMNASMixedLayer
from .operation import HMNAS_MIXED_OPERATIONS, HMNASValuePolicy, derivable
from .repeat import HMNASMixedRepeat
from .unsupported import unsupported_mutable_hook
from .values import ValueMasks

__all__ = ["HMNASMixedCell", "HMNASMixedInput", "HMNASMixedLayer", "HMNASMixedRepeat", "HMNAS_MIXED_OPERATIONS",
           "HMNASValuePolicy", "ValueMasks", "derivable", "unsupported_mutable_hook"]
