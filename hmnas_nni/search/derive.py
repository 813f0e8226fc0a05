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
from hmnas_nni.nas.materialize import materialize
from hmnas_nni.spaces import ProjectSpace, build_space


def catalogue(space: ProjectSpace) -> dict[str, ChoiceSpec]:
    """The space's choices (label -> kind and candidates)."""
    return space.catalogue()


def to_architecture(sample: dict[str, Any], space: ProjectSpace, strategy: str) -> Architecture:
    """An exported sample as an architecture document: HM-NAS's multi-level form or NNI's ``{label: choice}``."""
    choices = catalogue(space)
    if strategy == "hmnas":
        ops = {k: v for k, v in sample.items() if choices[k].kind == "op"}
        inputs = {k: v for k, v in sample.items() if choices[k].kind == "input"}
        arch = Architecture(space.name, dict(space.space_args), ops, inputs, strategy=strategy)
        return arch.validate(choices)
    return Architecture.from_nni_sample(sample, space.name, dict(space.space_args), strategy, choices)


def derived_network(arch: Architecture, weights: nn.Module | Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The plain network of ``arch``, inheriting ``weights`` (a supernet or its state dict) when given."""
    return materialize(arch, weights)


def check_architecture(arch: Architecture) -> Architecture:
    """``arch`` validated against its own space's choices (unknown ops, labels, inputs)."""
    return arch.validate(catalogue(build_space(arch.space, **arch.space_args)))


def candidate_ops(space: ProjectSpace) -> int:
    """How many candidate operations the space offers in all."""
    return sum(len(s.candidates) for s in catalogue(space).values() if s.kind == "op")


def derive(pl_module: Any, space: ProjectSpace, strategy: str) -> tuple[Architecture, nn.Module]:
    """The architecture a one-shot module exports now, and its network with the supernet's weights."""
    arch = to_architecture(pl_module.export(), space, strategy)
    return arch, derived_network(arch, pl_module.training_module.model)
