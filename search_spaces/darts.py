"""DARTS-style CNN space: normal and reduction cells with 4 intermediate nodes.

Every edge ``i -> j`` is a ``LayerChoice`` over the eight DARTS ops (label ``normal/op_i_j``);
every node picks its inputs with an ``InputChoice`` over all its predecessors
(label ``normal/input_j``, ``n_chosen=2``, which is what NNI's DARTS derives).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from nni.mutable import label_scope
from nni.nas.nn.pytorch import InputChoice, LayerChoice

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.format.graph import CellGraph, Edge

from .base import ClassifierNet, ProjectSpace
from .derived import DerivedCell
from .ops import FactorizedReduce, ReLUConvBN, darts_ops

NUM_NODES = 4


def _graph(kind: str) -> CellGraph:
    edges = tuple(
        Edge(i, j, f"{kind}/op_{i}_{j}", f"{kind}/input_{j}", i) for j in range(2, NUM_NODES + 2) for i in range(j)
    )
    return CellGraph(kind=kind, num_inputs=2, num_nodes=NUM_NODES, edges=edges, output="concat")


GRAPHS = {"normal": _graph("normal"), "reduce": _graph("reduce")}


def _preprocess(c_pp: int, c_p: int, c: int, reduction_prev: bool) -> tuple[nn.Module, nn.Module]:
    """Bring the two previous cells' outputs to ``c`` channels and the same resolution."""
    pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
    return pre0, ReLUConvBN(c_p, c, 1, 1, 0)


class DartsSearchCell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.preprocess0, self.preprocess1 = _preprocess(c_pp, c_p, c, reduction_prev)
        graph = GRAPHS["reduce" if reduction else "normal"]
        self.edges = nn.ModuleDict()
        self.inputs = nn.ModuleDict()
        with label_scope(graph.kind):
            for e in graph.edges:
                stride = 2 if reduction and e.src < 2 else 1
                self.edges[e.key] = LayerChoice(darts_ops(c, stride), label=f"op_{e.src}_{e.dst}")
            for j in graph.node_ids:
                self.inputs[str(j)] = InputChoice(j, 2, reduction="sum", label=f"input_{j}")

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for j in range(2, NUM_NODES + 2):
            states.append(self.inputs[str(j)]([self.edges[f"{i}_{j}"](states[i]) for i in range(j)]))
        return torch.cat(states[2:], dim=1)


class DartsDerivedCell(DerivedCell):
    """The derived DARTS cell: same preprocessing, only the live edges of the DAG."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, arch: Architecture) -> None:
        graph = GRAPHS["reduce" if reduction else "normal"]
        super().__init__(graph, arch, lambda e: darts_ops(c, 2 if reduction and e.src < 2 else 1))
        self.preprocess0, self.preprocess1 = _preprocess(c_pp, c_p, c, reduction_prev)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        return self.run_dag([self.preprocess0(s0), self.preprocess1(s1)])


class DartsNet(ClassifierNet):
    def __init__(self, in_channels: int, channels: int, num_cells: int, num_classes: int, make_cell) -> None:
        super().__init__()
        self.num_classes = num_classes
        c_stem = 3 * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, c = c_stem, c_stem, channels
        reduction_prev = False
        self.cells = nn.ModuleList()
        for i in range(num_cells):
            reduction = num_cells >= 3 and i in (num_cells // 3, 2 * num_cells // 3)
            if reduction:
                c *= 2
            self.cells.append(make_cell(c_pp, c_p, c, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, NUM_NODES * c
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
    hmnas_edge_level = "input"

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        return {"in_channels": 1, "input_size": 28, "channels": 8, "num_cells": 3, "num_classes": 10}

    def build(self, arch: Architecture | None) -> DartsNet:
        a = self.space_args
        if arch is None:
            make_cell = DartsSearchCell
        else:
            def make_cell(c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool) -> nn.Module:
                return DartsDerivedCell(c_pp, c_p, c, reduction, reduction_prev, arch)
        return DartsNet(a["in_channels"], a["channels"], a["num_cells"], a["num_classes"], make_cell)

    def cell_graphs(self) -> list[CellGraph]:
        kinds = {"normal"} | ({"reduce"} if self.space_args["num_cells"] >= 3 else set())
        return [GRAPHS[k] for k in sorted(kinds)]
