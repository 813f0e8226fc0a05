"""HM-NAS supermodules: what replaces NNI's ``LayerChoice`` and ``InputChoice`` in the supernet.

Operation level (``LayerChoice``): ``alpha`` (softmax over ops) and one mask per op.
Edge level (``InputChoice``): ``beta`` (softmax over a node's inputs) and one mask per input.
Where a space sums a node's edges without an ``InputChoice`` (NAS-Bench-201 cells), each
``LayerChoice`` is itself an edge and also carries a sigmoid gate and an edge mask.

Weights are normalised over the entries that are live, so the masked supernet computes
exactly what the derived network will: masked-out candidates are never executed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import InputChoice, LayerChoice, MutableModule
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from .masks import MaskScores


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, live: list[int]) -> torch.Tensor:
    """Softmax of ``logits`` over the ``live`` entries, times their (straight-through) binary masks.

    The mask multiplies the numerator only: its value is 1 on live entries, and its gradient is the
    entry's own contribution ``a_k * <dL/dout, op_k(x)>``. Inside the normaliser it would instead
    measure each entry against the mixture's average, which always condemns some entry of every
    choice and drifts every edge to a single op (a top-1 rule by another name).
    """
    idx = torch.tensor(live, device=logits.device)
    z = logits.index_select(0, idx)
    return mask.index_select(0, idx) * torch.softmax(z, dim=0)


class HMNASMixedLayer(LayerChoice, BaseSuperNetModule):
    """A ``LayerChoice`` relaxed at the operation level (and, for spaces without inputs choices, the edge level)."""

    _arch_parameter_names: list[str] = ["_arch_alpha", "_edge_gate"]

    def __init__(self, paths: dict[str, nn.Module] | list[nn.Module], alpha: nn.Parameter, op_masks: MaskScores,
                 label: str, edge_gate: nn.Parameter | None = None, edge_masks: MaskScores | None = None) -> None:
        super().__init__(paths, label=label)
        if len(alpha) != len(self.names):
            raise ValueError(f"alpha of {label!r} has {len(alpha)} entries for {len(self.names)} candidates")
        self._arch_alpha = alpha
        self._edge_gate = edge_gate
        self.op_masks = op_masks
        self.edge_masks = edge_masks
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}

    # -- NNI's supermodule interface
    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The kept ops of this choice with their weights: ``[{"op", "weight"}]``, empty if the edge is gone."""
        if self.label in memo:
            return {}
        return {self.label: [{"op": self.names[i], "weight": w} for i, w in self._kept().items()]}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {self.label: dict(zip(self.names, torch.softmax(self._arch_alpha.detach(), -1).tolist()))}

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        if type(module) is LayerChoice:
            label = module.label
            gated = mutate_kwargs["edge_level"] == "layer"
            return cls(module.candidates, memo[label], memo[f"{label}#ops"], label,
                       memo.get(f"{label}#gate") if gated else None, memo.get(f"{label}#edge") if gated else None)
        return None

    def arch_parameters(self):
        for name, p in self.named_parameters():
            if name in self._arch_parameter_names:
                yield p

    # -- forward
    def edge_open(self) -> bool:
        return bool(self.op_masks.live) and (self.edge_masks is None or bool(self.edge_masks.live))

    def _kept(self) -> dict[int, float]:
        if not self.edge_open():
            return {}
        with torch.no_grad():
            w = masked_softmax(self._arch_alpha, self.op_masks(), self.op_masks.live)
            if self._edge_gate is not None:
                w = w * torch.sigmoid(self._edge_gate[0])
        return dict(zip(self.op_masks.live, w.tolist()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.edge_open():
            return x.new_zeros(self._output_shape(x))
        live = self.op_masks.live
        w = masked_softmax(self._arch_alpha, self.op_masks(), live)
        if self._edge_gate is not None and self.edge_masks is not None:
            # the edge gate scales the op weights, not the edge's output: no extra activation kept for backward
            w = w * (torch.sigmoid(self._edge_gate[0]) * self.edge_masks()[0])
        out = None
        for k, i in enumerate(live):
            y = self[self.names[i]](x) * w[k]
            out = y if out is None else out + y
        self._shapes[tuple(x.shape)] = tuple(out.shape)
        return out

    def _output_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Shape a removed edge must still produce (zeros), learned from an earlier live pass."""
        shape = self._shapes.get(tuple(x.shape))
        if shape is None:
            with torch.no_grad():
                shape = tuple(self[self.names[0]](x).shape)
            self._shapes[tuple(x.shape)] = shape
        return shape


class HMNASMixedInput(InputChoice, BaseSuperNetModule):
    """An ``InputChoice`` relaxed at the edge level: any number of inputs, each with a learned weight."""

    _arch_parameter_names: list[str] = ["_arch_alpha"]

    def __init__(self, n_candidates: int, n_chosen: int | None, beta: nn.Parameter, edge_masks: MaskScores,
                 label: str) -> None:
        super().__init__(n_candidates, n_chosen=n_chosen, reduction="sum", label=label)
        if len(beta) != n_candidates:
            raise ValueError(f"beta of {label!r} has {len(beta)} entries for {n_candidates} inputs")
        self._arch_alpha = beta
        self.edge_masks = edge_masks

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The kept inputs with their weights (no top-k): ``[{"input", "weight"}]``, empty if the node is gone."""
        if self.label in memo:
            return {}
        live = self.edge_masks.live
        if not live:
            return {self.label: []}
        with torch.no_grad():
            w = masked_softmax(self._arch_alpha, self.edge_masks(), live).tolist()
        return {self.label: [{"input": i, "weight": wi} for i, wi in zip(live, w)]}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {self.label: dict(enumerate(torch.softmax(self._arch_alpha.detach(), -1).tolist()))}

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        if type(module) is InputChoice:
            if module.reduction not in ("sum", "mean"):
                raise TypeError(f"HMNAS supports InputChoice with reduction 'sum' or 'mean'; {name!r} uses "
                                f"{module.reduction!r}")
            return cls(module.n_candidates, module.n_chosen, memo[module.label], memo[f"{module.label}#edges"],
                       module.label)
        return None

    def arch_parameters(self):
        for name, p in self.named_parameters():
            if name in self._arch_parameter_names:
                yield p

    def forward(self, candidate_inputs: list[torch.Tensor]) -> torch.Tensor:
        live = self.edge_masks.live
        if not live:
            return torch.zeros_like(candidate_inputs[0])
        w = masked_softmax(self._arch_alpha, self.edge_masks(), live)
        out = None
        for k, i in enumerate(live):
            y = candidate_inputs[i] * w[k]
            out = y if out is None else out + y
        return out


def unsupported_mutable_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
    """Last hook: any mutable left unrelaxed is an error naming the module, its type and what HMNAS supports."""
    if isinstance(module, MutableModule) and not isinstance(module, BaseSuperNetModule) and module.mutables:
        raise TypeError(
            f"HMNAS cannot relax module {name!r} of type {type(module).__name__}: it supports "
            "nni.nas.nn.pytorch.LayerChoice (operation level) and InputChoice with reduction sum/mean (edge level). "
            "Express the choice with those, or search this space with another NNI strategy."
        )
    return True
