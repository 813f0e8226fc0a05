"""NAS-Bench-201-style space: a 4-node, 6-edge, 5-op cell repeated in 3 stages.

Labels and op names match NNI's ``NasBench201`` hub space (``cell/0_1`` ... ``cell/2_3``).
Each node sums all its incoming edges, so in HM-NAS every ``LayerChoice`` is itself an edge.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from nni.mutable import label_scope
from nni.nas.nn.pytorch import LayerChoice

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.format.graph import CellGraph, Edge

from .base import ClassifierNet, ProjectSpace
from .derived import DerivedCell
from .ops import ResNetBasicBlock, nb201_ops

NUM_NODES = 3  # intermediate nodes; node 0 is the cell input
GRAPH = CellGraph(
    kind="cell",
    num_inputs=1,
    num_nodes=NUM_NODES,
    edges=tuple(Edge(i, j, f"cell/{i}_{j}") for j in range(1, NUM_NODES + 1) for i in range(j)),
    output="last",
)


class NasBench201SearchCell(nn.Module):
    """Every edge ``i -> j`` is a ``LayerChoice``; node ``j`` is the sum of its edges."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict()
        with label_scope("cell"):
            for e in GRAPH.edges:
                self.edges[e.key] = LayerChoice(nb201_ops(channels), label=f"{e.src}_{e.dst}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for j in range(1, NUM_NODES + 1):
            states.append(sum(self.edges[f"{i}_{j}"](states[i]) for i in range(j)))
        return states[-1]


class NasBench201DerivedCell(DerivedCell):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_dag([x])


class NasBench201Net(ClassifierNet):
    """Stem, three stages of cells with residual reductions between them, pooled linear head."""

    def __init__(self, in_channels: int, channels: int, cells_per_stage: int, num_classes: int,
                 make_cell) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c_prev = channels
        for stage in range(3):
            c = channels * 2**stage
            if stage > 0:
                layers.append(ResNetBasicBlock(c_prev, c))
            layers.extend(make_cell(c) for _ in range(cells_per_stage))
            c_prev = c
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=False))
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

    def build(self, arch: Architecture | None) -> NasBench201Net:
        a = self.space_args
        if arch is None:
            def make_cell(c: int) -> nn.Module:
                return NasBench201SearchCell(c)
        else:
            def make_cell(c: int) -> nn.Module:
                return NasBench201DerivedCell(GRAPH, arch, lambda e: nb201_ops(c))
        return NasBench201Net(a["in_channels"], a["channels"], a["cells_per_stage"], a["num_classes"], make_cell)

    def cell_graphs(self) -> list[CellGraph]:
        return [GRAPH]
