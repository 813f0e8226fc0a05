"""Turn an architecture into a plain ``nn.Module``, optionally inheriting the supernet's weights.

The derived network keeps exactly the supernet's module paths, with each choice's kept
candidates under ``ops``: ``cells.0.edges.0_1.conv_3x3.1.weight`` in the supernet is
``cells.0.edges.0_1.ops.conv_3x3.1.weight`` in the derived network. That holds for HM-NAS
supernets and NNI's own (DARTS, ENAS, ...), so every strategy is evaluated through one path.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.spaces import ClassifierNet, build_space
from hmnas_nni.spaces.derived import DerivedOps


class WeightsMismatch(ValueError):
    """Supernet weights that do not fit the architecture's network."""


def materialize(arch: Architecture, supernet: nn.Module | Mapping[str, torch.Tensor] | None = None) -> ClassifierNet:
    """Build the derived network of ``arch``; with ``supernet`` (module or state dict) it inherits its weights."""
    space = build_space(arch.space, **arch.space_args)
    net = space.derived_network(arch)
    if supernet is not None:
        inherit_weights(net, supernet)
    return net


def supernet_state(supernet: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of a supernet body, keyed as in the space's ``net`` (works for a space or its state dict)."""
    if isinstance(supernet, nn.Module):
        supernet = getattr(supernet, "net", supernet).state_dict()
    prefix = "net."
    if any(k.startswith(prefix) for k in supernet):
        supernet = {k[len(prefix):]: v for k, v in supernet.items() if k.startswith(prefix)}
    return dict(supernet)


def inherit_weights(net: nn.Module, supernet: nn.Module | Mapping[str, torch.Tensor]) -> None:
    """Copy every weight and BN statistic of ``net`` from the supernet it was derived from."""
    source = supernet_state(supernet)
    choice_paths = [name for name, m in net.named_modules() if isinstance(m, DerivedOps)]
    state = {}
    for key, value in net.state_dict().items():
        skey = key
        for path in choice_paths:
            if key.startswith(f"{path}.ops."):
                skey = f"{path}.{key[len(path) + 5:]}"
                break
        if skey not in source:
            raise WeightsMismatch(f"supernet has no weight {skey!r} for derived weight {key!r}: "
                                  "was it searched on another space or with other space_args?")
        if source[skey].shape != value.shape:
            raise WeightsMismatch(f"supernet weight {skey!r} has shape {tuple(source[skey].shape)}, "
                                  f"the derived network needs {tuple(value.shape)}")
        state[key] = source[skey]
    net.load_state_dict(state, strict=True)
