"""A network built from its architecture document and its space, with no supernet and no forward pass.

The space's modules stay; each choice is replaced by what the document keeps there, as HM-NAS's supermodules would
have derived it: a ``LayerChoice`` by its kept ops with their weights (:class:`~.derived.KeptOps`) or, removed, by
zeros of the shape the document records (:class:`~.derived.RemovedEdge`); an ``InputChoice`` by its kept inputs; a
``Cell`` by its kept edges, each op made by the cell's own op factory for that edge; a ``Repeat`` by its first blocks;
a value choice in NNI's mutable layers by the plain layer at the chosen values (a kernel cropped from the largest
keeps the padding the supernet's centre crop had). Fixed NNI layers become their plain PyTorch classes.

What this builder does not know (a space's own mixed operations, such as AutoFormer's class token, or a removed edge
whose shape the document does not record) raises :class:`NotBuildable`: the caller derives the network from a
supernet instead (:func:`hmnas_nni.nas.rebuild.network_from_architecture`), as it must when weights are mapped.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from nni.mutable import Mutable, MutableExpression
from nni.nas.nn.pytorch import Cell, InputChoice, LayerChoice, MutableModule, ParametrizedModule, Repeat
from nni.nas.nn.pytorch.cell import create_cell_op_candidates
from nni.nas.oneshot.pytorch.supermodule._expression_utils import traverse_all_options
from nni.nas.oneshot.pytorch.supermodule.operation import NATIVE_MIXED_OPERATIONS

from hmnas_nni.format.architecture import Architecture

from .derive import plain_module
from .derived import Blocks, DerivedCell, KeptInputs, KeptOps, RemovedEdge
from .supermodules.cell import op_factory_of

#: NNI's mutable layers whose value choices HM-NAS relaxes at the weight level (MutableConv2d, MutableLinear, ...).
VALUE_LAYERS = tuple(op.bound_type for op in NATIVE_MIXED_OPERATIONS)


class NotBuildable(TypeError):
    """The document and space need a supernet to give their network (an unknown primitive, an unrecorded shape)."""


def build_network(space: nn.Module, arch: Architecture) -> nn.Module:
    """The network ``arch`` describes, built in place from the modules of ``space`` (a fresh, unsearched instance)."""
    _build(space, arch)
    left = [f"{n} ({type(m).__name__})" for n, m in space.named_modules()
            if isinstance(m, MutableModule) and m.mutables]
    if left:
        raise NotBuildable(f"choices left at {left[:3]}")
    attr = getattr(space, "derived_network_attr", None)
    return getattr(space, attr) if attr else space


def _build(module: nn.Module, arch: Architecture) -> None:
    """Replace, top-down, every choice below ``module`` by what ``arch`` keeps and every fixed NNI layer by its plain
    class."""
    for name, child in list(module.named_children()):
        new = derived_module(child, arch)
        if new is not None:
            setattr(module, name, new)
            child = new
        _build(child, arch)


def derived_module(module: nn.Module, arch: Architecture) -> nn.Module | None:
    """What ``arch`` keeps in place of ``module`` (a choice or a fixed NNI layer); ``None`` to keep it as it is."""
    kind = type(module)
    if kind is LayerChoice:
        return _layer(module, arch)
    if kind is InputChoice:
        kept = arch.input_weights(module.label)
        return KeptInputs(sorted(kept), [kept[i] for i in sorted(kept)])
    if kind is Cell:
        return _cell(module, arch)
    if kind is Repeat and isinstance(module.depth_choice, Mutable):
        return Blocks(list(module.blocks)[:module.depth_choice.freeze(arch.values)])
    if isinstance(module, VALUE_LAYERS) and module.mutables:
        return _value_layer(module, arch)
    return plain_module(module)


def _layer(choice: LayerChoice, arch: Architecture) -> nn.Module:
    """The kept ops of a ``LayerChoice`` in its own order, or the zeros of its removed edge."""
    kept = arch.op_weights(choice.label)
    if kept:
        names = [n for n in choice.names if n in kept]
        return KeptOps({str(n): choice[n] for n in names}, [kept[n] for n in names])
    shapes = arch.edge_shapes.get(choice.label)
    if shapes is None:
        raise NotBuildable(f"edge {choice.label!r} is removed and the document records no shape for it")
    return RemovedEdge([1, *shapes[0]], [1, *shapes[1]])


def _cell(cell: Cell, arch: Architecture) -> DerivedCell:
    """The cell with its kept edges, each op made by the cell's factory for that edge (as the supernet made it)."""
    factory = op_factory_of(cell)
    edges = []
    for node, entries in arch.cells[cell.label].items():
        i = int(node)
        for e in entries:
            j = int(e["input"])
            names = [str(o["op"]) for o in e["ops"]]
            made, _ = create_cell_op_candidates(_only(factory, names), i, 0, j)
            ops = {n: made[n] for n in names}
            edges.append((i, j, KeptOps(ops, [float(o["weight"]) * float(e["weight"]) for o in e["ops"]])))
    return DerivedCell(cell.preprocessor, cell.postprocessor, cell.num_predecessors, cell.num_nodes, cell.concat_dim,
                       edges)


def _only(factory: Any, names: list[str]) -> Any:
    """The cell's op factory cut to the named ops (a list's ops are named by their index), so only kept ops are made."""
    if isinstance(factory, dict):
        return {n: factory[n] for n in names}
    if isinstance(factory, list):
        return {n: factory[int(n)] for n in names}
    return factory


def _value_layer(layer: ParametrizedModule, arch: Architecture) -> nn.Module:
    """The plain layer at the values ``arch`` chose; a cropped kernel keeps the centre the supernet's largest had."""
    raw: dict[str, Any] = dict(layer.trace_kwargs)
    _, kwargs = layer.freeze_init_arguments(arch.values, **raw)
    if isinstance(raw.get("kernel_size"), MutableExpression):
        kwargs["padding"] = _cropped_padding(raw, kwargs["kernel_size"])
    return type(layer)._bound_type(**kwargs).train(layer.training)


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _largest(value: Any) -> Any:
    """An argument as the supernet's super-kernel takes it: the largest option of a choice."""
    return max(traverse_all_options(value)) if isinstance(value, MutableExpression) else value


def _cropped_padding(raw: dict[str, Any], kernel: Any) -> tuple[int, int]:
    """The supernet pads for its largest kernel; a kernel ``2r`` smaller, cropped from its centre, needs ``r`` less."""
    big, pad = _pair(_largest(raw["kernel_size"])), _pair(_largest(raw.get("padding", 0)))
    return tuple(p - (b - k) // 2 for p, b, k in zip(pad, big, _pair(kernel)))
