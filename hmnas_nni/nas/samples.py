"""Search results as architecture documents: HM-NAS's multi-level export, or any NNI strategy's sample."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.spaces.catalogue import catalogue
from hmnas_nni.spaces.registry import space_identity

from .derived import RemovedEdge
from .supermodules import HMNASMixedLayer

#: Strategies whose export is HM-NAS's multi-level form (kept ops and inputs with weights).
MULTI_LEVEL = ("hmnas", "nasib")


def architecture_from_export(sample: dict[str, Any], supernet: nn.Module, strategy: str = "hmnas",
                             input_shape: list[int] | None = None) -> Architecture:
    """HMNAS's export (``{label: kept entries}``) of ``supernet`` as a validated document."""
    cat = catalogue(supernet)
    parts: dict[str, dict[str, Any]] = {"op": {}, "input": {}, "cell": {}, "value": {}}
    for label, value in sample.items():
        if label not in cat:
            raise ValueError(f"HMNAS exported label {label!r}, which the space's catalogue does not list")
        parts[cat[label].kind][label] = value
    name, args = space_identity(supernet)
    arch = Architecture(name, args, parts["op"], parts["input"], strategy, parts["cell"], parts["value"], input_shape,
                        removed_edge_shapes(supernet, parts["op"]))
    return Architecture.from_dict(arch.to_dict()).validate(cat)  # through the parser: the same checks as a file


def removed_edge_shapes(supernet: nn.Module, ops: dict[str, Any]) -> dict[str, list[list[int]]]:
    """``[input shape, output shape]`` of every removed edge whose modules (all that share its label) ran and give
    zeros by one rule, so its network is built without a forward pass; other labels are left out."""
    pairs: dict[str, list[tuple[list[int], list[int]] | None]] = {}
    for m in supernet.modules():
        if isinstance(m, HMNASMixedLayer) and ops.get(m.label) == []:
            pairs.setdefault(m.label, []).append(m.edge_shape())
    out = {}
    for label, shapes in pairs.items():
        if all(s is not None for s in shapes) and len({RemovedEdge.rule([1, *i], [1, *o]) for i, o in shapes}) == 1:
            out[label] = [shapes[0][0], shapes[0][1]]
    return out


def export_sample(supernet: nn.Module) -> dict[str, Any]:
    """HMNAS's export of ``supernet`` as its masks stand now (what its Lightning module's ``export()`` gives)."""
    sample: dict[str, Any] = {}
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule):
            sample.update(module.export(sample))
    return sample


def architecture_from_nni(sample: dict[str, Any], space: nn.Module, strategy: str,
                          input_shape: list[int] | None = None) -> Architecture:
    """An NNI strategy's sample (``{label: choice}``) of ``space`` (or its supernet) as a document, unit weights."""
    name, args = space_identity(space)
    return Architecture.from_nni_sample(sample, name, args, strategy, catalogue(space), input_shape)


def architecture_of(sample: dict[str, Any], supernet: nn.Module, strategy: str,
                    input_shape: list[int] | None = None) -> Architecture:
    """Any strategy's export as a document: HMNAS's multi-level export, or an NNI strategy's sample; at the input
    shape the search recorded on the space unless one is given."""
    if input_shape is None:
        input_shape = getattr(supernet, "hmnas_input_shape", None)
    if strategy in MULTI_LEVEL:
        return architecture_from_export(sample, supernet, strategy, input_shape)
    return architecture_from_nni(sample, supernet, strategy, input_shape)
