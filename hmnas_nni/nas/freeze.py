"""A network from a model space and HM-NAS's sample: what NNI's ``space.freeze(sample)`` does for one-choice samples.

NNI's ``freeze`` takes one candidate per choice (``{label: "conv3x3"}``). HM-NAS's sample keeps any number of ops
per edge and inputs per node, each with its learned weight (``{label: [{"op": "conv3x3", "weight": 0.6}, ...]}``),
which lies outside NNI's sample space: NNI refuses it (``SampleValidationError`` or ``SampleMissingError``).
:func:`freeze` takes the same two arguments and gives the network HM-NAS derived::

    sample = experiment.export_top_models(formatter="dict")[0]
    net = freeze(space, sample)                                 # the searched space: its supernet's weights
    net = freeze(MySpace(), sample, input_shape=[3, 32, 32])    # a fresh space: its own initial weights
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.format.errors import UsageError

from .build import NotBuildable, build_network
from .derive import derive_network
from .samples import architecture_from_export
from .strategy import HMNAS
from .supermodules import HMNASMixedLayer


def freeze(space: nn.Module, sample: Mapping[str, Any], input_shape: Sequence[int] | None = None) -> nn.Module:
    """The network HM-NAS's ``sample`` describes in ``space``, with ``space``'s weights: cut out of ``space`` itself
    when it is the supernet an HM-NAS search trained (NNI's one-shot strategies turn the space they are given into
    their supernet); for a fresh space, built from a copy of its modules, or, where that needs a supernet (a
    removed edge, whose zeros need its shape; a space's own mixed operations), cut out of an HM-NAS supernet of a
    copy. ``input_shape`` (C, H, W) is needed when the sample removes an edge of a fresh space: the zeros that
    stand for it take the edge's output shape."""
    if not isinstance(sample, Mapping):
        raise UsageError(f"freeze takes HM-NAS's sample, a dict {{label: kept entries}}; got {type(sample).__name__}")
    shape = _shape(input_shape)
    if not any(isinstance(m, BaseSuperNetModule) for m in space.modules()):
        try:  # a fresh space: built from its own modules with no supernet, where the builder knows every choice
            return build_network(copy.deepcopy(space), _document(sample, space, shape))
        except NotBuildable:
            pass
    supernet = _hmnas_supernet(space)
    arch = _document(sample, supernet, shape)
    _record_removed_edge_shapes(supernet, arch)
    return derive_network(supernet, arch)


def _document(sample: Mapping[str, Any], space: nn.Module, shape: list[int] | None) -> Architecture:
    """HM-NAS's sample as a document checked against ``space`` (a fresh space or its HM-NAS supernet)."""
    try:
        return architecture_from_export(dict(sample), space, input_shape=shape)
    except (TypeError, ValueError) as e:
        fix = ("pass the sample HMNAS exported for it (export_top_models(formatter='dict')), or an NNI one-choice "
               "sample to space.freeze")
        raise UsageError(f"freeze: the sample does not fit this space ({e}); {fix}") from None


def _hmnas_supernet(space: nn.Module) -> nn.Module:
    """``space`` if HM-NAS already made it a supernet, else an HM-NAS supernet of a copy (``space`` is kept)."""
    relaxed = [m for m in space.modules() if isinstance(m, BaseSuperNetModule)]
    if relaxed and not all(hasattr(m, "derive") for m in relaxed):
        name = type(next(m for m in relaxed if not hasattr(m, "derive"))).__name__
        raise UsageError(f"freeze: this space is another one-shot strategy's supernet (it holds {name}); pass a "
                         "fresh instance of the space, or the space an HMNAS search ran on")
    if relaxed:
        return space
    supernet = copy.deepcopy(space)
    HMNAS().mutate_model(supernet)
    return supernet


def _shape(input_shape: Sequence[int] | None) -> list[int] | None:
    if input_shape is None:
        return None
    shape = list(input_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise UsageError(f"freeze: input_shape must be positive integers (C, H, W), got {input_shape!r}")
    return shape


def _record_removed_edge_shapes(supernet: nn.Module, arch: Architecture) -> None:
    """Run the supernet once on zeros (batch 1, eval mode, its mode restored) when an edge the sample removes has
    not run yet, so its zeros know their shape."""
    unknown = [m.label for m in supernet.modules() if isinstance(m, HMNASMixedLayer) and m.edge_shape() is None
               and m.label in arch.ops and not arch.ops[m.label]]
    if not unknown:
        return
    if arch.input_shape is None:
        raise UsageError(f"freeze: the sample removes edge {unknown[0]!r}, whose output shape is unknown before the "
                         "space has run; pass input_shape=(C, H, W), the shape of one input")
    training = supernet.training
    supernet.eval()
    try:
        with torch.no_grad():
            supernet(torch.zeros(1, *arch.input_shape))
    finally:
        supernet.train(training)
