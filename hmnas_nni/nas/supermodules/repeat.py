"""NNI's ``Repeat`` with a depth choice in an HM-NAS supernet: the block level.

One step mask per block beyond the minimum depth (:class:`~hmnas_nni.nas.supermodules.values.ValueMasks` over the
candidate depths): blocks are kept from the start, a removed block removes everything in it, and the depth never
goes below the minimum. The blocks after the chosen depth are not run; the output is the chosen prefix's, as a
one-hot weighted sum of the prefixes that ran, so the step masks get their gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from nni.mutable import Mutable
from nni.nas.nn.pytorch import Repeat
from nni.nas.oneshot.pytorch.supermodule._expression_utils import traverse_all_options, weighted_sum
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from hmnas_nni.format.architecture import Architecture

from ..derived import Blocks
from .operation import shared_value_masks


class HMNASMixedRepeat(Repeat, BaseSuperNetModule):
    """A ``Repeat`` whose depth is chosen by step masks."""

    def __init__(self, blocks: list[nn.Module], depth: Any, memo: dict[str, Any], settings: dict[str, Any]) -> None:
        super().__init__(blocks, depth)
        self.value_masks = nn.ModuleDict({
            label.replace(".", "__"): shared_value_masks(memo, label, mutable.values, settings)
            for label, mutable in depth.simplify().items()
        })

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        if type(module) is Repeat and isinstance(module.depth_choice, Mutable):
            return cls(list(module.blocks), module.depth_choice, memo, mutate_kwargs)
        return None

    def _depth_weights(self) -> dict[int, Any]:
        weights = {m.label: m.weights() for m in self.value_masks.values()}
        return dict(traverse_all_options(self.depth_choice, weights=weights))

    def chosen_depth(self) -> int:
        return max(d for d, w in self._depth_weights().items() if float(torch.as_tensor(w).detach()) > 0.5)

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {m.label: m.chosen() for m in self.value_masks.values() if m.label not in memo}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {m.label: {v: float(w) for v, w in m.weights().items()} for m in self.value_masks.values()
                if m.label not in memo}

    def forward(self, x: Any) -> Any:
        weights = self._depth_weights()
        depth = max(d for d, w in weights.items() if float(w) > 0.5)
        outputs, output_weights = [], []
        if 0 in weights:
            outputs.append(x)
            output_weights.append(weights[0])
        for i, block in enumerate(self.blocks[:depth], start=1):
            x = block(x)
            if i in weights:
                outputs.append(x)
                output_weights.append(weights[i])
        return weighted_sum(outputs, output_weights)

    def derive(self, arch: Architecture) -> nn.Module:
        """The first blocks, as many as the depth ``arch`` chose."""
        values = {m.label: arch.values[m.label] for m in self.value_masks.values()}
        depth = self.depth_choice.freeze(values)
        return Blocks(list(self.blocks)[:depth])
