"""DARTS-style CNN space on NNI's ``Cell``: normal and reduction cells with 4 intermediate nodes.

Each cell is an ``nni.nas.nn.pytorch.Cell`` (2 predecessors, 2 ops per node in NNI's sample format,
every node concatenated), labelled ``normal`` or ``reduce`` and shared by all cells of its kind, as in
NNI's hub ``DARTS`` space. The ops come from a factory that gives edges leaving a reduction cell's
inputs stride 2. HM-NAS relaxes each cell as a whole: any number of input edges per node, any number
of ops per edge (the "no edge" choice is the edge mask, so there is no ``none`` op).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import Cell

from .base import ClassifierNet, ProjectSpace
from .ops import DARTS_OP_NAMES, FactorizedReduce, ReLUConvBN, darts_op

NUM_NODES = 4
NUM_PREDECESSORS = 2


class Preprocess(nn.Module):
    """Bring the two previous cells' outputs to ``c`` channels and the same resolution."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction_prev: bool) -> None:
        super().__init__()
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.pre0(inputs[0]), self.pre1(inputs[1])]


def _edge_op(node: int, op_index: int, input_index: int | None, *, name: str, c: int, reduction: bool) -> nn.Module:
    """NNI cell op factory: stride 2 on the edges leaving a reduction cell's inputs."""
    stride = 2 if reduction and (input_index is None or input_index < NUM_PREDECESSORS) else 1
    return darts_op(name, c, stride)


class CellOutput(nn.Module):
    """A cell's output is its concatenated nodes (the two-predecessor chaining lives in :class:`DartsNet`)."""

    def forward(self, this_cell: torch.Tensor, previous: list[torch.Tensor]) -> torch.Tensor:
        return this_cell


class DartsCell(nn.Module):
    """One NNI ``Cell`` of the space, called with the outputs of the two cells before it."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        ops = {name: partial(_edge_op, name=name, c=c, reduction=reduction) for name in DARTS_OP_NAMES}
        self.cell = Cell(ops, NUM_NODES, num_ops_per_node=2, num_predecessors=NUM_PREDECESSORS, merge_op="all",
                         preprocessor=Preprocess(c_pp, c_p, c, reduction_prev), postprocessor=CellOutput(),
                         label="reduce" if reduction else "normal")

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        return self.cell([s0, s1])


class DartsNet(ClassifierNet):
    def __init__(self, in_channels: int, channels: int, num_cells: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        c_stem = 3 * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, c = c_stem, c_stem, channels
        reduction_prev = False
        self.cells = nn.ModuleList()
        steps, scale = [("stem", c_stem, 1)], 1
        for i in range(num_cells):
            reduction = num_cells >= 3 and i in (num_cells // 3, 2 * num_cells // 3)
            if reduction:
                c *= 2
                scale *= 2
            self.cells.append(DartsCell(c_pp, c_p, c, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, NUM_NODES * c
            steps.append((f"cells.{i}", c_p, scale))
        self.record_levels(steps)
        self.num_features = c_p
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return s1


class DartsSpace(ProjectSpace):
    """NNI model space of DARTS cells; defaults are a small CPU smoke size (width 8, 3 cells)."""

    name = "darts"

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        return {"in_channels": 1, "input_size": 28, "channels": 8, "num_cells": 3, "num_classes": 10}

    def build(self) -> DartsNet:
        a = self.space_args
        return DartsNet(a["in_channels"], a["channels"], a["num_cells"], a["num_classes"])
