"""NAS-Bench-201-style space: a 4-node, 6-edge, 5-op cell repeated in 3 stages.

Labels and op names match NNI's ``NasBench201`` hub space (``cell/0_1`` ... ``cell/2_3``).
Each node sums all its incoming edges, so in HM-NAS every ``LayerChoice`` is itself an edge; the graph
behind the edges is read from the supernet's first forward pass, not declared here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from nni.mutable import label_scope
from nni.nas.nn.pytorch import LayerChoice

from .base import ClassifierNet, ProjectSpace
from .ops import ResNetBasicBlock, nb201_ops

NUM_NODES = 3  # intermediate nodes; node 0 is the cell input
EDGES = tuple((i, j) for j in range(1, NUM_NODES + 1) for i in range(j))  # (src, dst), by destination


class NasBench201SearchCell(nn.Module):
    """Every edge ``i -> j`` is a ``LayerChoice``; node ``j`` is the sum of its edges."""

    def __init__(self, channels: int, ops: Callable[[int], dict[str, nn.Module]] = nb201_ops) -> None:
        super().__init__()
        self.edges = nn.ModuleDict()
        with label_scope("cell"):
            for i, j in EDGES:
                self.edges[f"{i}_{j}"] = LayerChoice(ops(channels), label=f"{i}_{j}")
        self.edge_src = [i for i, _ in EDGES]
        self.edge_dst = [j for _, j in EDGES]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        k = 0
        for edge in self.edges.values():
            y = edge(states[self.edge_src[k]])
            if self.edge_dst[k] == len(states):
                states.append(y)
            else:
                states[self.edge_dst[k]] = states[self.edge_dst[k]] + y
            k += 1
        return states[-1]


class NasBench201Net(ClassifierNet):
    """Stem, three stages of cells with residual reductions between them, pooled linear head."""

    def __init__(self, in_channels: int, channels: int, cells_per_stage: int, num_classes: int,
                 ops: Callable[[int], dict[str, nn.Module]] = nb201_ops) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        scales: list[int] = []
        c_prev = channels
        for stage in range(3):
            c = channels * 2**stage
            if stage > 0:
                layers.append(ResNetBasicBlock(c_prev, c))
                scales.append(2**stage)
            layers.extend(NasBench201SearchCell(c, ops) for _ in range(cells_per_stage))
            scales.extend([2**stage] * cells_per_stage)
            c_prev = c
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=False))
        widths = [channels * s for s in scales]  # each stage doubles the channels as it halves the size
        self.record_levels([("stem", channels, 1), *((f"cells.{i}", w, s) for i, (w, s) in
                                                       enumerate(zip(widths, scales)))], c_prev)
        self.num_features = c_prev
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self.lastact(x)


class NasBench201Space(ProjectSpace):
    """NNI model space of NAS-Bench-201-style cells. Defaults are sized for 2 CPU cores."""

    name = "nb201"
    hmnas_edge_level = "layer"

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        return {"in_channels": 1, "input_size": 28, "channels": 8, "cells_per_stage": 1, "num_classes": 10}

    def build(self) -> NasBench201Net:
        a = self.space_args
        return NasBench201Net(a["in_channels"], a["channels"], a["cells_per_stage"], a["num_classes"])
