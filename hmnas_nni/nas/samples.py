"""Search results as architecture documents: HM-NAS's multi-level export, or any NNI strategy's sample."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.spaces.catalogue import catalogue
from hmnas_nni.spaces.registry import space_identity

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
    arch = Architecture(name, args, parts["op"], parts["input"], strategy, parts["cell"], parts["value"], input_shape)
    return Architecture.from_dict(arch.to_dict()).validate(cat)  # through the parser: the same checks as a file


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
    """Any strategy's export as a document: HMNAS's multi-level export, or an NNI strategy's sample."""
    if strategy in MULTI_LEVEL:
        return architecture_from_export(sample, supernet, strategy, input_shape)
    return architecture_from_nni(sample, supernet, strategy, input_shape)
