"""``InputChoice`` in an HM-NAS supernet: the edge level, any number of inputs, each with a learned weight."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import InputChoice
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from hmnas_nni.format.architecture import Architecture

from ..derived import KeptInputs
from ..masks import MaskScores, masked_softmax
from .memo import shared_logits, shared_masks


class HMNASMixedInput(InputChoice, BaseSuperNetModule):
    """An ``InputChoice`` relaxed at the edge level: ``beta`` (softmax over inputs) and one mask per input."""

    _arch_parameter_names: list[str] = ["_arch_alpha"]

    def __init__(self, n_candidates: int, n_chosen: int | None, beta: nn.Parameter, edge_masks: MaskScores,
                 label: str) -> None:
        super().__init__(n_candidates, n_chosen=n_chosen, reduction="sum", label=label)
        if len(beta) != n_candidates:
            raise ValueError(f"beta of {label!r} has {len(beta)} entries for {n_candidates} inputs")
        self._arch_alpha = beta
        self.edge_masks = edge_masks

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        if type(module) is not InputChoice:
            return None
        if module.reduction not in ("sum", "mean"):
            raise TypeError(f"InputChoice reduction {module.reduction!r} is not supported by HMNAS (it relaxes 'sum' "
                            f"and 'mean'); {name!r} uses {module.reduction!r}: use reduction='sum' or 'mean', or "
                            "search this space with another NNI strategy")
        n = module.n_candidates
        return cls(n, module.n_chosen, shared_logits(memo, f"{module.label}#beta", n),
                   shared_masks(memo, f"{module.label}#inputs", n, mutate_kwargs), module.label)

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The kept inputs with their weights (no top-k): ``[{"input", "weight"}]``."""
        if self.label in memo:
            return {}
        live = self.edge_masks.live
        with torch.no_grad():
            w = masked_softmax(self._arch_alpha, self.edge_masks(), live).tolist() if live else []
        return {self.label: [{"input": i, "weight": wi} for i, wi in zip(live, w)]}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {self.label: dict(enumerate(torch.softmax(self._arch_alpha.detach(), -1).tolist()))}

    def arch_parameters(self):
        for name, p in self.named_parameters(recurse=False):  # its own, not the candidates'
            if name in self._arch_parameter_names:
                yield p

    def forward(self, candidate_inputs: list[torch.Tensor]) -> torch.Tensor:
        live = self.edge_masks.live
        w = masked_softmax(self._arch_alpha, self.edge_masks(), live)
        out = None
        for k, i in enumerate(live):
            y = candidate_inputs[i] * w[k]
            out = y if out is None else out + y
        return out

    def derive(self, arch: Architecture) -> nn.Module:
        """The inputs ``arch`` keeps here, with their weights."""
        kept = arch.input_weights(self.label)
        if not kept:
            raise ValueError(f"architecture keeps no input at {self.label!r}; an InputChoice keeps at least one")
        return KeptInputs(sorted(kept), [kept[i] for i in sorted(kept)])
