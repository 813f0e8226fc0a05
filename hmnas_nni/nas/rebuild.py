"""Architecture -> network, the one entry every layer above the core uses.

A strategy's export becomes a document (:func:`architecture_of`); a document becomes its network, built from the
document and its space (:mod:`.build`), inheriting a supernet's weights where they are given (cut out of an HM-NAS
supernet by :mod:`.derive`, mapped through one for any other strategy's weights). :mod:`.samples` (exports as
documents) and :mod:`.derived` (the plain modules a network is made of) serve it and are not called from above.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
import torch.nn as nn

from hmnas_nni.format.architecture import Architecture, ArchitectureError
from hmnas_nni.spaces.base import ProjectSpace
from hmnas_nni.spaces.catalogue import catalogue
from hmnas_nni.spaces.registry import SPACES, build_space, fit_input

from .build import NotBuildable, build_network
from .derive import WeightsMismatch, derive_network, is_architecture_key, load_network_weights, network_weights
from .samples import architecture_from_export, architecture_of, export_sample, removed_edge_shapes
from .supermodules import HMNASMixedCell, HMNASMixedInput, HMNASMixedLayer

__all__ = ["WeightsMismatch", "architecture_from_export", "architecture_of", "check_architecture", "derive_network",
           "derived_of", "export_sample", "is_architecture_key", "network_from_architecture", "network_of",
           "network_weights", "space_of", "supernet_of", "with_edge_shapes"]


def network_of(arch: Architecture, weights: nn.Module | Mapping[str, torch.Tensor] | None = None,
               require_path: bool = True) -> nn.Module:
    """The plain network of ``arch``, inheriting ``weights`` (a live supernet or a state dict) when given; a live
    supernet's own export, or ``require_path=False``, is built even where it ignores the input."""
    if isinstance(weights, nn.Module):
        return derived_of(weights, arch)
    return network_from_architecture(arch, weights, require_path=require_path)


def check_architecture(arch: Architecture) -> Architecture:
    """``arch`` validated against its own space's choices (unknown ops, labels, inputs, values) and built once (a cell
    keeps a path from the input to the output)."""
    network_from_architecture(arch)
    return arch


def space_of(arch: Architecture) -> nn.Module:
    """The model space ``arch`` was searched on, adapted to its input shape as the search adapted it."""
    space = build_space(arch.space, document="the architecture", **arch.space_args)
    shape = input_shape_of(arch)
    if shape is None or (isinstance(space, ProjectSpace) and space.space_args.get("in_channels") == shape[0]):
        return space  # a project space takes the channels it was built for: no trial forward needed
    return fit_input(space, tuple(shape))


def supernet_of(arch: Architecture) -> nn.Module:
    """A fresh HM-NAS supernet of the space ``arch`` was searched on, checked against the architecture."""
    from .strategy import HMNAS  # the search strategy is loaded only where a supernet is made

    space = space_of(arch)
    arch.validate(catalogue(space))
    HMNAS().mutate_model(space)
    return space


def network_from_architecture(arch: Architecture, weights: Mapping[str, torch.Tensor] | None = None,
                              where: str = "supernet weights", require_path: bool = True) -> nn.Module:
    """The network ``arch`` describes; with ``weights`` (the state dict of any one-shot supernet of that space:
    HM-NAS's or an NNI strategy's) it inherits them, else it is freshly initialised.

    Without weights it is built from the document and the space alone (:func:`~.build.build_network`); weights are
    mapped through an HM-NAS supernet of the space, cut up in place, as is a space the builder does not know.
    ``require_path`` refuses a network that ignores its input (a document that removes every path); a strategy's
    own export is measured as it is (NNI's DARTS can keep ``none`` on every path) with ``require_path=False``."""
    net = built_network(arch) if weights is None else None
    if net is None:
        supernet = supernet_of(arch)
        if weights is not None:
            load_network_weights(supernet, weights, where)
        _record_edge_shapes(supernet, arch)
        net = derive_network(supernet, arch, keep_supernet=False)  # the supernet was built for this network alone
    if require_path:
        _check_keeps_a_path(net, arch)
    net.train()
    return net


def built_network(arch: Architecture) -> nn.Module | None:
    """The network of ``arch`` built from its space's modules with no supernet, or ``None`` where the space holds
    what only a supernet derives (a space's own mixed operations) or the document lacks a removed edge's shape."""
    space = space_of(arch)
    arch.validate(catalogue(space))
    try:
        return build_network(space, arch)
    except NotBuildable:
        return None


def with_edge_shapes(arch: Architecture) -> Architecture:
    """``arch`` with the shapes of its removed edges recorded (documents written before they were), read from one
    pass of its supernet, so its network is then built without one."""
    supernet = supernet_of(arch)
    _record_edge_shapes(supernet, arch)
    return replace(arch, edge_shapes=removed_edge_shapes(supernet, arch.ops))


def _check_keeps_a_path(net: nn.Module, arch: Architecture) -> None:
    """Refuse a network whose output is the same for every input: the document removed every path through a cell
    (the search's rules never do; a hand-edited or foreign file can)."""
    shape = input_shape_of(arch)
    if shape is None:
        return
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(2, *shape, generator=generator)
    net.eval()
    with torch.no_grad():
        out = net(inputs)
    if isinstance(out, torch.Tensor) and torch.equal(out[0], out[1]):
        raise ArchitectureError(f"architecture for space {arch.space!r} removes every path from the input to the "
                                "output (its network gives the same output for every input); a cell must keep a "
                                "path: keep at least one op on an edge of each path, as HMNAS (`hmnas search`) does")


def input_shape_of(arch: Architecture) -> list[int] | None:
    """The input shape ``arch`` was searched at: recorded, or (older documents) read from a project space's args."""
    if arch.input_shape is not None:
        return list(arch.input_shape)
    a = arch.space_args
    if arch.space in SPACES and "in_channels" in a and "input_size" in a:
        return [a["in_channels"], a["input_size"], a["input_size"]]
    return None


def _record_edge_shapes(supernet: nn.Module, arch: Architecture) -> None:
    """Run the supernet once (batch 1, eval mode) so removed edges know the shape of zeros they stand for."""
    shape = input_shape_of(arch)
    if shape is None:
        if any(not entries for entries in arch.ops.values()):
            raise ArchitectureError("architecture removes edges but records no input_shape, so their output shape "
                                    "is unknown; write it with hmnas_nni.search.run.run_search (`hmnas search`), "
                                    "which records the input shape")
        return
    supernet.eval()
    with torch.no_grad():
        supernet(torch.zeros(1, *shape))


def is_hmnas_supernet(supernet: nn.Module) -> bool:
    """Whether ``supernet`` was made by HMNAS (rather than by another one-shot strategy)."""
    return any(isinstance(m, (HMNASMixedLayer, HMNASMixedInput, HMNASMixedCell)) for m in supernet.modules())


def derived_of(supernet: nn.Module, arch: Architecture) -> nn.Module:
    """The derived network of ``arch`` with the weights of ``supernet``: cut out of an HM-NAS supernet, or, for
    any other one-shot strategy's supernet, rebuilt as HM-NAS would and given that supernet's weights, even where
    that strategy's export ignores the input (measured, not refused)."""
    if is_hmnas_supernet(supernet):
        return derive_network(supernet, arch)
    device = next(supernet.parameters()).device
    weights = {k: v.detach().cpu() for k, v in supernet.state_dict().items()}
    where = f"{type(supernet).__name__} supernet weights"
    return network_from_architecture(arch, weights, where=where, require_path=False).to(device)
