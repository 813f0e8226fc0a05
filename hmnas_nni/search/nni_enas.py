"""NNI 3.0's ENAS, made to run under pytorch-lightning 2.x.

NNI's ``EnasLightningModule.training_step`` expects batches as ``(batch, "train"|"val")``; Lightning 2
hands it the bare ``(x, y)`` of NNI's ``ConcatLoader``, so ENAS reads the labels as the mode, never
trains the weights and never samples a path. :class:`LightningENAS` tags the two loaders instead.
ENAS's controller also needs tianshou and gym, which the project does not install by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nni.nas.oneshot.pytorch._dataloader import ConcatLoader
from nni.nas.oneshot.pytorch.strategy import ENAS

# tianshou 0.4.11 declares protobuf~=3.19, which onnx cannot use: the pins in requirements-enas.txt go in
# without dependencies.
ENAS_INSTALL = "pip install --no-deps -r requirements-enas.txt (in the hmnas-nni checkout)"


def enas_missing() -> str | None:
    """Why NNI's ENAS cannot run here (its controller's packages do not import), or None if it can."""
    try:
        import nni.nas.strategy._rl_impl  # noqa: F401  (imports gym and tianshou, as ENAS does)
    except ImportError as e:
        return (f"NNI's ENAS could not run: its controller needs tianshou and gym ({type(e).__name__}: {e}); "
                f"install them with: {ENAS_INSTALL}")
    return None


class TaggedLoader:
    """A data loader whose batches come as ``(batch, name)``."""

    def __init__(self, loader: Any, name: str) -> None:
        self.loader, self.name = loader, name

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        return ((batch, self.name) for batch in self.loader)


class LightningENAS(ENAS):
    """NNI's ENAS with its weight and controller batches tagged, as its Lightning module reads them."""

    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn):
        return ConcatLoader({"train": TaggedLoader(train_dataloader_fn(), "train"),
                             "val": TaggedLoader(val_dataloader_fn(), "val")})
