"""Binary masks with real-valued scores: ``m = 1[s >= tau]`` forward, straight-through backward.

One :class:`MaskScores` per choice holds the scores of all its entries (the K ops of a ``LayerChoice``
or of a cell edge, the N inputs of an ``InputChoice`` or of a cell node, or the single gate of an edge).
Modules that share a label share the object, as NNI's DARTS shares ``alpha``.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class _StraightThroughStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, tau: float) -> torch.Tensor:  # noqa: ANN001
        return (scores >= tau).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad, None  # dL/ds := dL/dm


def binarize(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Threshold ``scores`` at ``tau``; the gradient passes straight through to the scores."""
    return _StraightThroughStep.apply(scores, tau)


class MaskScores(nn.Module):
    """Mask scores of one choice, plus what the hierarchy rules decided about each entry.

    ``forced`` entries stay on whatever their score (the last-path rule); entries not ``alive``
    were removed by the hierarchy (their edge or node is gone). ``live`` lists the entries the
    forward pass executes; it is refreshed by :class:`~hmnas_nni.nas.hierarchy.Hierarchy` after
    every mask update, so the forward pass never reads a tensor back from the device.
    """

    def __init__(self, size: int, init: float, tau: float) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"mask threshold tau must be > 0, got {tau}")
        self.tau = tau
        self.scores = nn.Parameter(torch.full((size,), float(init)))
        self.register_buffer("forced", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("alive", torch.ones(size, dtype=torch.bool))
        self.live: list[int] = list(range(size))
        #: Entries that carry data: False for a 'none' op (its output is zeros), so keeping it alone does not
        #: connect an edge, and a path the rules keep by force never runs through it.
        self.carries: list[bool] = [True] * size

    def switched_on(self) -> list[bool]:
        """What the scores alone say, before the hierarchy rules."""
        return (self.scores.detach() >= self.tau).tolist()

    def forward(self) -> torch.Tensor:
        """Binary mask of every entry: thresholded scores, forced entries on, removed entries off."""
        m = binarize(self.scores, self.tau)
        m = m + (self.forced & (m.detach() == 0)).to(m.dtype)
        return m * self.alive.to(m.dtype)

    def extra_repr(self) -> str:
        return f"size={self.scores.numel()}, tau={self.tau}, live={self.live}"


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
