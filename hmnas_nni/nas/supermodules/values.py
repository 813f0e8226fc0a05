"""The weight level's masks: one mask per step between the sorted candidates of a value choice.

A width choice ``{16, 24, 32}`` has two steps, the channel groups ``[16:24)`` and ``[24:32)``; a kernel choice
``{3, 5, 7}`` has two rings (the 5x5 ring around the 3x3 centre, the 7x7 ring around the 5x5); a depth choice
``{1, 2, 3}`` has one step per block beyond the first. Steps are nested, as NNI's own mixed operations share
their weights (a prefix of channels, a centre crop of kernels, the first blocks): step ``k`` counts only when
every step before it is on, so the masks always pick one candidate, the largest whose steps are all on, and
the smallest candidate is never masked (a value choice has no empty candidate).
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch

from ..masks import MaskScores


class ValueMasks(MaskScores):
    """Step masks of one value choice (``len(values) - 1`` entries) and the candidate they pick."""

    def __init__(self, values: list[Any], init: float, tau: float, label: str) -> None:
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
            raise TypeError(f"value choice {label!r} has candidates {values}, which are not supported: HMNAS masks "
                            "numeric value choices (widths, kernel sizes, ratios, depths)")
        super().__init__(max(1, len(values) - 1), init, tau)
        self.values = sorted(values)
        self.label = label

    def steps(self) -> torch.Tensor:
        """The binary step masks, straight-through (forced, alive and the prefix rule applied)."""
        return self()[: len(self.values) - 1]

    def one_hot(self) -> torch.Tensor:
        """A one-hot weight over :attr:`values` (in sorted order) that carries the steps' gradients.

        ``p_k = m_1 ... m_k (1 - m_{k+1})``: the candidate after the last step that is on.
        """
        m = self.steps()
        ones = torch.ones(1, dtype=m.dtype, device=m.device)
        on_through = torch.cumprod(torch.cat([ones, m]), 0)  # [1, m1, m1 m2, ...]
        next_off = torch.cat([1 - m, ones])  # [1 - m1, 1 - m2, ..., 1]
        return on_through * next_off

    def chosen(self) -> Any:
        """The candidate the masks pick."""
        return self.values[int(self.one_hot().detach().argmax())]

    def picked(self) -> Any:
        """:meth:`chosen`, read from the live steps the hierarchy rules computed (no read back from the device)."""
        k = 0
        while k < len(self.values) - 1 and k in self.live:
            k += 1
        return self.values[k]

    def weights(self) -> dict[Any, torch.Tensor]:
        """Candidate -> its weight (one of them 1), in the form NNI's ``traverse_all_options`` takes."""
        return dict(zip(self.values, self.one_hot()))

    def extra_repr(self) -> str:
        return f"label={self.label!r}, values={self.values}, tau={self.tau}"
