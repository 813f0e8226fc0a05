"""HM-NAS (hierarchical masking NAS) for Microsoft NNI."""

import warnings

# NNI 3.0 scans torch.nn at import and warns about every class it does not know in newer PyTorch
# ("... is found to be not a nn.Module"); the one-shot strategies work regardless.
warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)

from .architecture import Architecture, ArchitectureError  # noqa: E402
from .strategy import HMNAS  # noqa: E402

__all__ = ["HMNAS", "Architecture", "ArchitectureError"]
