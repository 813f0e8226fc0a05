"""Mobile chain space: a stem, then inverted-residual blocks, each a ``LayerChoice`` over
kernel {3,5,7} x expansion {3,6} (plus skip where shapes allow), then a 1x1 conv head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice

from .base import ClassifierNet, ProjectSpace
from .ops import mobile_ops

# (output channel multiplier, stride) per block; the first block of a stage reduces resolution.
STAGES = ((1, 1), (1, 1), (2, 2), (2, 1), (4, 2), (4, 1))


class MobileNet(ClassifierNet):
    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 ops: Callable[[int, int, int], dict[str, nn.Module]] = mobile_ops) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU6(inplace=False))
        blocks = []
        steps, scale = [("stem", channels, 1)], 1
        c_prev = channels
        for i, (mult, stride) in enumerate(STAGES):
            c = channels * mult
            blocks.append(LayerChoice(ops(c_prev, c, stride), label=f"block_{i}"))
            scale *= stride
            steps.append((f"blocks.{i}", c, scale))
            c_prev = c
        self.blocks = nn.Sequential(*blocks)
        self.num_features = 4 * c_prev
        self.record_levels(steps, self.num_features)
        self.conv_head = nn.Sequential(nn.Conv2d(c_prev, self.num_features, 1, bias=False),
                                       nn.BatchNorm2d(self.num_features), nn.ReLU6(inplace=False))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(self.blocks(self.stem(x)))


class MobileSpace(ProjectSpace):
    """NNI model space of a mobile chain; each block is one edge, so HM-NAS masks ops only."""

    name = "mobile"
    hmnas_edge_level = "none"

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        return {"in_channels": 1, "input_size": 28, "channels": 8, "num_classes": 10}

    def build(self) -> MobileNet:
        a = self.space_args
        return MobileNet(a["in_channels"], a["channels"], a["num_classes"])
