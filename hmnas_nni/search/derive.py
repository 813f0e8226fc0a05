"""The one place the search layer calls the NAS core's entry points: a strategy's export -> architecture -> network.

Every other module (the monitor, ``hmnas show``, retraining, the comparison, the Python API example) goes
through these functions, so a change of the core's signatures is made here alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from hmnas_nni.format.architecture import Architecture, ChoiceSpec
from hmnas_nni.nas.rebuild import derived_of, network_from_architecture
from hmnas_nni.nas.samples import architecture_of
from hmnas_nni.spaces import catalogue as space_catalogue


def catalogue(space: nn.Module) -> dict[str, ChoiceSpec]:
    """The space's choices (label -> kind and candidates), for any NNI model space or its supernet."""
    return space_catalogue(space)


def to_architecture(sample: dict[str, Any], space: nn.Module, strategy: str) -> Architecture:
    """An exported sample as an architecture document: HM-NAS's multi-level form or NNI's ``{label: choice}``."""
    return architecture_of(sample, space, strategy, getattr(space, "hmnas_input_shape", None))


def derived_network(arch: Architecture, weights: nn.Module | Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The plain network of ``arch``, inheriting ``weights`` (a supernet or its state dict) when given."""
    if isinstance(weights, nn.Module):
        return derived_of(weights, arch)
    return network_from_architecture(arch, weights)


def check_architecture(arch: Architecture) -> Architecture:
    """``arch`` validated against its own space's choices (unknown ops, labels, inputs, values) and built once (a cell
    keeps a path from the input to the output)."""
    network_from_architecture(arch)
    return arch


def candidate_ops(space: nn.Module) -> int:
    """How many candidate operations the space offers in all: per op choice, and per edge of every cell."""
    total = 0
    for spec in catalogue(space).values():
        if spec.kind == "op":
            total += len(spec.candidates)
        elif spec.kind == "cell":
            total += sum(spec.node_ids()) * len(spec.candidates)  # node i has i candidate inputs
    return total


def derive(pl_module: Any, space: nn.Module, strategy: str) -> tuple[Architecture, nn.Module]:
    """The architecture a one-shot module exports now, and its network with the supernet's weights."""
    supernet = pl_module.training_module.model
    arch = to_architecture(pl_module.export(), supernet, strategy)
    return arch, derived_network(arch, supernet)
