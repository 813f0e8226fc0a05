"""Fitting a model space to the data's input without touching the space: grey images into colour stems."""

from __future__ import annotations

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import ModelSpace


class RepeatChannels(ModelSpace):
    """``space`` fed with its single input channel repeated ``channels`` times (grey data, RGB stem)."""

    def __init__(self, space: nn.Module, channels: int) -> None:
        super().__init__()
        self.space = space
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.space(x.expand(-1, self.channels, -1, -1))
