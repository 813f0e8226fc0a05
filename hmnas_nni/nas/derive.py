"""Derived networks: an architecture cut out of an HM-NAS supernet, with its weights, for any NNI model space.

:func:`derive_network` replaces every relaxed module of the supernet with what the architecture keeps there
(a weighted sum of the kept ops, the kept inputs with their weights, a cell without its removed edges and
nodes) and every fixed NNI layer with its plain PyTorch class. The result holds no NNI mutable and no
architecture parameter, and computes exactly what the masked supernet computed: no derivation gap.
:func:`network_from_architecture` does the same from files alone (``arch.json`` and, optionally, the weights
of any one-shot supernet of that space).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import MutableModule, ParametrizedModule, Repeat
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from hmnas_nni.format.architecture import Architecture

from .dataflow import DataflowProbe
from .derived import Blocks

#: Names of the parameters and buffers that belong to the search (architecture logits, gates, masks), in HM-NAS's
#: supernets and NNI's one-shot supernets alike; everything else is a network weight.
ARCHITECTURE_NAMES = frozenset({"_arch_alpha", "_arch_beta", "_edge_gate", "op_masks", "edge_masks", "input_masks"})


class WeightsMismatch(ValueError):
    """Supernet weights that do not fit the architecture's space."""


def is_architecture_key(key: str) -> bool:
    """Whether a state-dict key is a search parameter rather than a network weight."""
    return any(part in ARCHITECTURE_NAMES for part in key.split("."))


def network_weights(supernet: nn.Module) -> dict[str, torch.Tensor]:
    """The supernet's network weights and BatchNorm statistics, without the search's parameters."""
    return {k: v for k, v in supernet.state_dict().items() if not is_architecture_key(k)}


def plain_module(module: nn.Module) -> nn.Module | None:
    """A fixed NNI layer (``MutableConv2d`` with no choice left ...) as its plain PyTorch class, weights kept;
    a fixed ``Repeat`` as plain :class:`Blocks`; ``None`` for anything else."""
    if isinstance(module, ParametrizedModule) and not module.mutables:
        bound = getattr(type(module), "_bound_type", None)
        if bound is not None and type(module).__module__.startswith("nni."):
            plain = bound(*module.trace_args, **module.trace_kwargs)
            # every attribute the plain class has, as the layer holds it now (spaces may set eps, momentum ... after
            # construction), its parameters and buffers included
            plain.__dict__.update({k: v for k, v in module.__dict__.items() if k in plain.__dict__})
            return plain
    if isinstance(module, Repeat) and not module.mutables and type(module).forward is Repeat.forward:
        return Blocks(list(module.blocks)).train(module.training)
    return None


def _replace(module: nn.Module, arch: Architecture) -> None:
    """Replace, top-down, every relaxed module below ``module`` by its derived form and every fixed NNI layer
    by its plain class."""
    for name, child in list(module.named_children()):
        if isinstance(child, BaseSuperNetModule):
            if not hasattr(child, "derive"):
                raise TypeError(f"{type(child).__name__} at {name!r} is not an HM-NAS supermodule; derive networks "
                                "from a supernet made by HMNAS (network_from_architecture loads other weights)")
            new = child.derive(arch)
            new = plain_module(new) or new
        else:
            new = plain_module(child)
        if new is not None:
            setattr(module, name, new)
            child = new
        _replace(child, arch)


def _strip_probes(net: nn.Module) -> None:
    """Drop dataflow probes a deep copy carried over from the supernet (they belong to the search)."""
    for m in net.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for key in [k for k, h in hooks.items() if isinstance(getattr(h, "__self__", None), DataflowProbe)]:
                del hooks[key]


def derive_network(supernet: nn.Module, arch: Architecture, keep_supernet: bool = True) -> nn.Module:
    """The network ``arch`` describes, cut out of the HM-NAS ``supernet`` with its weights; the supernet is kept
    unless ``keep_supernet=False`` (then it is cut up in place, which saves a deep copy of it)."""
    net = copy.deepcopy(supernet) if keep_supernet else supernet
    _strip_probes(net)
    _replace(net, arch)
    leftover = [f"{n} ({type(m).__name__})" for n, m in net.named_modules()
                if isinstance(m, BaseSuperNetModule) or (isinstance(m, MutableModule) and m.mutables)]
    if leftover:
        raise TypeError(f"derived network still holds choices at {leftover[:3]}; HMNAS relaxes them all, so this "
                        "supernet was not made by HMNAS")
    attr = getattr(net, "derived_network_attr", None)
    return getattr(net, attr) if attr else net


def load_network_weights(supernet: nn.Module, state: Mapping[str, torch.Tensor], where: str = "weights") -> None:
    """Load a one-shot supernet's network weights (HM-NAS's or any NNI strategy's) into an HM-NAS supernet."""
    own = network_weights(supernet)
    theirs = {k: v for k, v in state.items() if not is_architecture_key(k)}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    if missing or unexpected:
        detail = f"{len(missing)} weights missing (e.g. {missing[0]!r})" if missing else \
            f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]!r})"
        raise WeightsMismatch(f"{where} do not fit this space: {detail}; were they searched on another space or with "
                              "other space_args?")
    for k in own:
        if tuple(theirs[k].shape) != tuple(own[k].shape):
            raise WeightsMismatch(f"{where}: {k!r} has shape {tuple(theirs[k].shape)}, the space needs "
                                  f"{tuple(own[k].shape)}; were they searched with other space_args?")
    supernet.load_state_dict(theirs, strict=False)
