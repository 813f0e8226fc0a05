"""What any NNI model space offers at each label, read from the space itself (its ``simplify()`` and modules).

``LayerChoice`` labels are operation choices, ``InputChoice`` labels input choices, each NNI ``Cell`` one
cell choice (its own ``op_i_k`` / ``input_i_k`` labels belong to it), and every other categorical label a
value choice (a width, a kernel size, a depth). The same catalogue describes a space and its supernet.
"""

from __future__ import annotations

import torch.nn as nn
from nni.mutable import Categorical, CategoricalMultiple
from nni.nas.nn.pytorch import Cell, LayerChoice
from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingCell

from hmnas_nni.format.architecture import ChoiceSpec


def cell_spec(num_predecessors: int, num_nodes: int, op_names: list) -> ChoiceSpec:
    """The catalogue entry of one cell: every edge into node ``i`` may come from any of the ``i`` earlier states."""
    return ChoiceSpec("cell", tuple(op_names), num_predecessors=num_predecessors, num_nodes=num_nodes)


def _cells(space: nn.Module) -> dict[str, ChoiceSpec]:
    """Every NNI ``Cell`` of the space (or its relaxed form in a supernet), by label."""
    out: dict[str, ChoiceSpec] = {}
    for module in space.modules():
        if isinstance(module, PathSamplingCell):  # a cell relaxed by a one-shot strategy (HMNAS's or NNI's)
            out[module.label] = cell_spec(module.num_predecessors, module.num_nodes, list(module.op_names))
        elif isinstance(module, Cell):
            first = module.ops[0][0]
            names = list(first.names) if isinstance(first, LayerChoice) else list(first.keys())
            out[module.label] = cell_spec(module.num_predecessors, module.num_nodes, names)
    return out


def _layer_labels(space: nn.Module, cells: dict[str, ChoiceSpec]) -> set[str]:
    """Labels of the ``LayerChoice``s outside cells."""
    return {m.label for m in space.modules() if isinstance(m, LayerChoice)
            and not any(m.label.startswith(c + "/") for c in cells)}


def catalogue(space: nn.Module) -> dict[str, ChoiceSpec]:
    """Every choice of ``space`` (an NNI ``ModelSpace`` or a supernet made from one), by label."""
    cells = _cells(space)
    layers = _layer_labels(space, cells)
    out: dict[str, ChoiceSpec] = dict(cells)
    for label, mutable in space.simplify().items():
        if any(label.startswith(c + "/") for c in cells):
            continue
        if isinstance(mutable, CategoricalMultiple):
            out[label] = ChoiceSpec("input", tuple(mutable.values), mutable.n_chosen)
        elif isinstance(mutable, Categorical):
            out[label] = ChoiceSpec("op" if label in layers else "value", tuple(mutable.values))
        else:
            raise TypeError(f"label {label!r} is a {type(mutable).__name__}; HM-NAS searches categorical choices "
                            "(LayerChoice, InputChoice, Cell, nni.choice values)")
    return out


def candidate_ops(space: nn.Module) -> int:
    """How many candidate operations the space offers in all: per op choice, and per edge of every cell."""
    total = 0
    for spec in catalogue(space).values():
        if spec.kind == "op":
            total += len(spec.candidates)
        elif spec.kind == "cell":
            total += sum(spec.node_ids()) * len(spec.candidates)  # node i has i candidate inputs
    return total
