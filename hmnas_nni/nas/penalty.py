"""HM-NAS's latency awareness as an NNI penalty: ``HMNAS(penalty=LatencyPenalty(table, baseline=target_ms))``.

NNI's differentiable strategies take ``penalty=``, an
:class:`~nni.nas.oneshot.pytorch.profiler.ExpectationProfilerPenalty` that adds
``scale * nonlinear(profile / baseline - 1)`` to the architecture loss. :class:`LatencyPenalty` is that penalty over
a latency table (:mod:`hmnas_nni.format.latency_table`): :class:`~hmnas_nni.nas.strategy.HMNAS` binds it to its
supernet in ``mutate_model`` (refusing a table that does not fit the search), after which its profile is the
expected latency of the network the masks keep (:class:`~hmnas_nni.nas.cost.LatencyModel`, through the
straight-through masks, so every mask score gets the latency its entry saves as gradient). The same table also
weights HM-NAS's sparsity term (:meth:`LatencyPenalty.sparsity_weights`) and ranks the family of nested networks
by predicted latency. Without a ``baseline`` (no target) the penalty only weights the sparsity term.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty
from nni.nas.profiler import Profiler

from .cost import LatencyModel, latency_model_for
from .defaults import DEFAULTS
from .hierarchy import Hierarchy

NONLINEAR = ("linear", "positive", "negative", "absolute")
AGGREGATE = ("add", "mul")


class MaskedLatencyProfiler(Profiler):
    """NNI profiler of an HM-NAS supernet: the latency a table predicts for the network its masks keep now."""

    def __init__(self, model: LatencyModel) -> None:
        super().__init__(None)
        self.model = model

    def profile(self, sample: Any = None) -> torch.Tensor:
        """The masked network's expected latency (ms), with the masks' straight-through gradient. ``sample`` is not
        read: HM-NAS's network is the one its masks keep."""
        return self.model.expected_ms()


class LatencyPenalty(ExpectationProfilerPenalty):
    """NNI's expectation penalty on a latency table, for :class:`~hmnas_nni.nas.strategy.HMNAS`:
    ``loss + scale * max(0, E[latency] / baseline - 1)`` during the masking phase, ``E[latency]`` the table's
    prediction for the network the masks keep; and each mask's sparsity term weighted by the latency its entry
    saves (mean weight 1, so ``sparsity`` keeps its meaning).

    Parameters
    ----------
    table
        A :class:`~hmnas_nni.format.latency_table.LatencyTable` (or the path of one) measured for the searched space.
        HMNAS refuses, when it binds the penalty, a table that does not fit the search (another space, space
        arguments or input shape, or, with ``serving``, another batch, runtime or device).
    baseline
        The latency target in ms (``HMNAS(latency_target_ms=)``, ``hmnas search --latency-target``); ``None``: no
        target term, the table only weights the sparsity term and ranks the family.
    scale
        Weight of the target term (``HMNAS(latency_weight=)``, ``--latency-weight``).
    serving
        Where the network will run, as a table records it: ``{"batch", "runtime", "device"}`` (``hmnas search``
        passes this machine's). Without it the table's own are taken, and the log says which.
    nonlinear, aggregate
        As NNI's :class:`~nni.nas.oneshot.pytorch.profiler.ProfilerPenalty`; HM-NAS's term is ``"positive"`` and
        ``"add"``.
    """

    def __init__(self, table: Any, baseline: float | None = None, scale: float = DEFAULTS.latency_weight, *,
                 serving: Mapping[str, Any] | None = None, nonlinear: str = "positive", aggregate: str = "add") -> None:
        if table is None:
            raise ValueError("LatencyPenalty needs a latency table (a LatencyTable or its path); measure one with "
                             "hmnas_nni.export.latency.table_for_space (`hmnas latency`)")
        _check(baseline, scale, nonlinear, aggregate)
        super().__init__(None, baseline, scale, nonlinear=nonlinear, aggregate=aggregate)  # profiler: bind()
        self.table = table
        self.serving = serving

    @classmethod
    def of(cls, model: LatencyModel, baseline: float | None = None,
           scale: float = DEFAULTS.latency_weight) -> LatencyPenalty:
        """A penalty already bound to ``model`` (a latency model built by hand, e.g. from a dict of costs)."""
        _check(baseline, scale, "positive", "add")
        penalty = cls.__new__(cls)
        ExpectationProfilerPenalty.__init__(penalty, MaskedLatencyProfiler(model), baseline, scale,
                                            nonlinear="positive", aggregate="add")
        penalty.table, penalty.serving = model.table, None
        return penalty

    # -- binding
    def bind(self, supernet: nn.Module, hierarchy: Hierarchy) -> LatencyModel:
        """Read the table for ``supernet`` (an HM-NAS supernet and its hierarchy of masks), refusing one that does
        not fit the search (:func:`~hmnas_nni.nas.cost.latency_model_for`); a later bind replaces this one."""
        if self.table is None:
            raise ValueError("this LatencyPenalty was made from a latency model without a table (LatencyPenalty.of);"
                             " pass a LatencyTable or its path to LatencyPenalty to search with it")
        model = latency_model_for(supernet, hierarchy, self.table, self.baseline, self.serving)
        self.profiler = MaskedLatencyProfiler(model)
        return model

    @property
    def model(self) -> LatencyModel | None:
        """The latency model of the supernet this penalty is bound to (``None`` before :meth:`bind`)."""
        return self.profiler.model if isinstance(self.profiler, MaskedLatencyProfiler) else None

    def _bound(self) -> LatencyModel:
        if self.model is None:
            raise RuntimeError("LatencyPenalty is not bound to a supernet yet: pass it to HMNAS(penalty=...), whose "
                               "mutate_model binds it")
        return self.model

    # -- what HMNAS reads
    def profile(self, sample: Any = None) -> torch.Tensor:
        """The expected latency (ms) of the network the masks keep, with the masks' straight-through gradient;
        ``sample`` (NNI's probabilities) is not read."""
        return self._bound().expected_ms()

    def forward(self, loss: torch.Tensor, sample: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """NNI's penalty: ``loss + scale * max(0, E / baseline - 1)`` and its details; ``loss`` unchanged
        without a baseline."""
        if self.baseline is None:
            return loss, {"loss_original": loss, "loss_final": loss}
        return super().forward(loss, sample)

    def sparsity_weights(self) -> list[torch.Tensor]:
        """Per mask (in ``hierarchy.all_masks()`` order), each entry's weight in the sparsity term: the latency it
        saves over the mean saving."""
        return self._bound().sparsity_weights()

    def predicted_ms(self) -> float:
        """The table's prediction for the network the masks keep now."""
        return self._bound().predicted_ms()

    @property
    def input_shape(self) -> list[int] | None:
        """The input shape (C, H, W) the table was measured at, once bound."""
        model = self.model
        return None if model is None or model.input_shape is None else list(model.input_shape)

    def extra_repr(self) -> str:
        where = self.table if not hasattr(self.table, "space") else f"table of {self.table.space}"
        return f"{where}, baseline={self.baseline}, scale={self.scale}, bound={self.model is not None}"


def _check(baseline: Any, scale: Any, nonlinear: str, aggregate: str) -> None:
    if baseline is not None and not baseline > 0:
        raise ValueError(f"LatencyPenalty baseline (the latency target in ms: latency_target_ms, --latency-target) "
                         f"must be > 0, got {baseline!r}")
    if not scale >= 0:
        raise ValueError(f"LatencyPenalty scale (latency_weight, --latency-weight) must be >= 0, got {scale!r}")
    if nonlinear not in NONLINEAR or aggregate not in AGGREGATE:
        raise ValueError(f"LatencyPenalty nonlinear must be one of {list(NONLINEAR)} and aggregate one of "
                         f"{list(AGGREGATE)}, got {nonlinear!r} and {aggregate!r}")
