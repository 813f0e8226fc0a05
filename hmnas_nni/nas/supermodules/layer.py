"""``LayerChoice`` in an HM-NAS supernet: the operation level, and the edge level where a space sums its edges.

Operation level: ``alpha`` (softmax over ops) and one mask per op. Where a space sums a node's edges
without an ``InputChoice`` (NAS-Bench-201 cells), each ``LayerChoice`` is itself an edge and also carries
a sigmoid gate and an edge mask. Weights are normalised over the live ops, so the masked supernet computes
exactly what the derived network will: masked-out candidates are never executed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from hmnas_nni.format.architecture import Architecture

from ..derived import KeptOps, RemovedEdge
from ..masks import MaskScores, masked_softmax
from .memo import shared_gate, shared_logits, shared_masks

#: Class names of the zero ('none') ops of DARTS-style spaces (NNI's hub spaces, NAS-Bench-201 and ours).
ZERO_OPS = ("Zero", "Zeros")


def is_zero_op(name: str, op: nn.Module | None) -> bool:
    """Whether a LayerChoice candidate is the 'none' op, whose output is all zeros."""
    return name == "none" or type(op).__name__ in ZERO_OPS


class HMNASMixedLayer(LayerChoice, BaseSuperNetModule):
    """A ``LayerChoice`` relaxed at the operation level (and, with a gate, the edge level)."""

    _arch_parameter_names: list[str] = ["_arch_alpha", "_edge_gate"]
    #: A candidate index set by a path-sampling step (NASIB's exploration): only it runs, unweighted.
    sampled: int | None = None

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
    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        if type(module) is not LayerChoice:
            return None
        label, n = module.label, len(module.names)
        alpha = shared_logits(memo, f"{label}#alpha", n)
        op_masks = shared_masks(memo, f"{label}#ops", n, mutate_kwargs)
        children = dict(module.named_children())
        op_masks.carries = [not is_zero_op(str(c), children.get(str(c))) for c in module.names]
        if mutate_kwargs["edge_level"] != "layer":
            return cls(module.candidates, alpha, op_masks, label)
        return cls(module.candidates, alpha, op_masks, label, shared_gate(memo, f"{label}#gate"),
                   shared_masks(memo, f"{label}#edge", 1, mutate_kwargs))

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The kept ops of this choice with their weights: ``[{"op", "weight"}]``, empty if the edge is gone."""
        if self.label in memo:
            return {}
        return {self.label: [{"op": self.names[i], "weight": w} for i, w in self.kept().items()]}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {self.label: dict(zip(self.names, torch.softmax(self._arch_alpha.detach(), -1).tolist()))}

    def arch_parameters(self):
        for name, p in self.named_parameters(recurse=False):  # its own, not the candidates'
            if name in self._arch_parameter_names:
                yield p

    # -- forward
    def edge_open(self) -> bool:
        return bool(self.op_masks.live) and (self.edge_masks is None or bool(self.edge_masks.live))

    def weights(self) -> torch.Tensor:
        """Weights of the live ops: ``mask * softmax(alpha)`` over them, times the edge gate where there is one."""
        w = masked_softmax(self._arch_alpha, self.op_masks(), self.op_masks.live)
        if self._edge_gate is not None and self.edge_masks is not None:
            # the gate scales the op weights, not the edge's output: no extra activation kept for backward
            w = w * (torch.sigmoid(self._edge_gate[0]) * self.edge_masks()[0])
        return w

    def kept(self) -> dict[int, float]:
        """Index -> weight of every kept op (empty when the edge is removed)."""
        if not self.edge_open():
            return {}
        with torch.no_grad():
            return dict(zip(self.op_masks.live, self.weights().tolist()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sampled is not None:
            return self[self.names[self.sampled]](x)
        if not self.edge_open():
            return x.new_zeros(self._output_shape(x))
        w = self.weights()
        out = None
        for k, i in enumerate(self.op_masks.live):
            y = self[self.names[i]](x) * w[k]
            out = y if out is None else out + y
        self._shapes[tuple(x.shape)] = tuple(out.shape)
        return out

    def edge_shape(self) -> tuple[list[int], list[int]] | None:
        """The edge's first recorded input and output shapes (without the batch), or ``None`` before any pass."""
        if not self._shapes:
            return None
        in_shape, out_shape = next(iter(self._shapes.items()))
        return list(in_shape[1:]), list(out_shape[1:])

    def _output_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Shape a removed edge must still produce (zeros), learned from an earlier live pass."""
        shape = self._shapes.get(tuple(x.shape))
        if shape is None:
            with torch.no_grad():
                shape = tuple(self[self.names[0]](x).shape)
            self._shapes[tuple(x.shape)] = shape
        return shape

    # -- derivation
    def derive(self, arch: Architecture) -> nn.Module:
        """The ops ``arch`` keeps here with their weights, or zeros of the edge's shape if it keeps none."""
        kept = arch.op_weights(self.label)
        if kept:
            names = [n for n in self.names if n in kept]  # in the supernet's order, as it sums them
            return KeptOps({str(n): self[n] for n in names}, [kept[n] for n in names])
        shapes = self.edge_shape()
        if shapes is None:
            raise RuntimeError(f"edge {self.label!r} is removed but the supernet never ran it, so its output shape "
                               "is unknown; run the supernet once on an input before deriving")
        return RemovedEdge([1, *shapes[0]], [1, *shapes[1]])
