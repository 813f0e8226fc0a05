"""HM-NAS as an NNI one-shot strategy: use it wherever NNI's ``DARTS`` goes.

    from nni.nas.experiment import NasExperiment
    from hmnas_nni import HMNAS
    experiment = NasExperiment(model_space, evaluator, HMNAS())
    experiment.run()
    net = experiment.export_top_models(formatter="instance")[0]   # the derived network, supernet weights kept
    arch = experiment.export_top_models(formatter="dict")[0]      # its multi-level architecture

The strategy turns every ``LayerChoice``, ``InputChoice`` and ``Cell`` of the space into an HM-NAS
supermodule, trains the supernet with :class:`HMNASLightningModule`, and exports the multi-level
architecture: every kept op and input with its learned weight, no top-k.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch.nn as nn
from nni.nas.nn.pytorch import Cell, InputChoice, ModelSpace
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty
from nni.nas.oneshot.pytorch.strategy import DARTS, OneShotStrategy
from nni.nas.oneshot.pytorch.supermodule.operation import MixedOperation
from nni.nas.space import ModelStatus, RawFormatModelSpace

from .cost import LatencyModel
from .defaults import DEFAULTS
from .derive import derive_network
from .family import family_members
from .hierarchy import Hierarchy
from .lightning import HMNASLightningModule
from .penalty import LatencyPenalty
from .samples import architecture_from_export
from .supermodules import (
    HMNAS_MIXED_OPERATIONS,
    HMNASMixedCell,
    HMNASMixedInput,
    HMNASMixedLayer,
    HMNASMixedRepeat,
    derivable,
    unsupported_mutable_hook,
)
from .supermodules.operation import DerivableOperation

EDGE_LEVELS = ("auto", "input", "layer", "none")


class HMNAS(DARTS):
    """Efficient NAS via hierarchical masking (Yan et al., 2019): multi-level encoding, learned masks, no top-k.

    Parameters
    ----------
    arc_learning_rate, mask_learning_rate
        Adam learning rates of ``alpha``/``beta`` and of the mask scores.
    warmup_epochs, arch_epochs
        Epochs of weights-only warm-up, then of architecture steps before masking starts.
    tau, mask_init
        Mask threshold (``m = 1[s >= tau]``) and the initial score (above ``tau``: everything starts on).
    sparsity
        Weight ``lambda`` of the sparsity term ``lambda * mean |s|``.
    settle_epochs
        Last epochs of the masking phase with the masks fixed (weights and ``alpha``/``beta`` still train), so
        BatchNorm statistics settle on the architecture that is exported.
    edge_level
        Where the edges of ``LayerChoice``s outside cells live: ``"input"`` (each ``InputChoice`` candidate is
        an edge), ``"layer"`` (each ``LayerChoice`` is an edge with its own gate, for cells that sum their edges),
        ``"none"`` (chains), or ``"auto"``: the space's ``hmnas_edge_level`` attribute, else ``"input"`` when it has
        input choices outside cells, else ``"layer"``. NNI ``Cell``s always have both levels.
    penalty
        Hardware awareness, as NNI's ``DARTS(penalty=)`` takes it. A :class:`~hmnas_nni.nas.penalty.LatencyPenalty`
        (a latency table, ``baseline`` the target in ms, ``scale`` its weight) is bound to the supernet in
        :meth:`mutate_model`, where a table that does not fit the search (another space, space arguments or input
        shape, or, with ``serving``, another batch, runtime or device) is refused, with or without a target. Each
        mask's sparsity term is then weighted by the latency its entry saves (mean weight 1, so ``sparsity`` keeps
        its meaning), with a target the masked network's expected latency is pushed under it by
        ``scale * max(0, expected / baseline - 1)`` during the masking phase, and ``list_models(limit=K)`` ranks
        the family by predicted latency. Any other NNI
        :class:`~nni.nas.oneshot.pytorch.profiler.ExpectationProfilerPenalty` (or the dict ``DARTS`` takes) is
        applied as NNI's DARTS applies it, to the architecture loss with :meth:`export_probs` at every
        architecture step (architecture and masking phases), its details logged as ``penalty/...``.
    latency_table, latency_target_ms, latency_weight, latency_serving
        Shorthand for ``penalty=LatencyPenalty(latency_table, baseline=latency_target_ms, scale=latency_weight,
        serving=latency_serving)`` (what ``hmnas search --latency-table --latency-target --latency-weight``
        passes); not together with ``penalty``.
    """

    def __init__(self, *, arc_learning_rate: float = DEFAULTS.arc_learning_rate,
                 mask_learning_rate: float = DEFAULTS.mask_learning_rate, warmup_epochs: int = DEFAULTS.warmup_epochs,
                 arch_epochs: int = DEFAULTS.arch_epochs, tau: float = DEFAULTS.tau,
                 mask_init: float = DEFAULTS.mask_init, sparsity: float = DEFAULTS.sparsity,
                 settle_epochs: int = DEFAULTS.settle_epochs, edge_level: str = "auto",
                 gradient_clip_val: float | None = None, log_prob_every_n_step: int = 10,
                 latency_table: Any = None, latency_target_ms: float | None = None,
                 latency_weight: float = DEFAULTS.latency_weight, latency_serving: dict[str, Any] | None = None,
                 penalty: ExpectationProfilerPenalty | dict[str, Any] | None = None, **kwargs: Any) -> None:
        _check_penalty(penalty)
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs, penalty=penalty,
                         **kwargs)
        if not tau > 0:
            raise ValueError(f"tau (mask threshold) must be > 0, got {tau}")
        if not mask_init >= tau:
            raise ValueError(f"mask_init ({mask_init}) must be >= tau ({tau}) so every op starts switched on")
        if not 0 <= sparsity < float("inf"):
            raise ValueError(f"sparsity weight must be finite and >= 0, got {sparsity}")
        if edge_level not in EDGE_LEVELS:
            raise ValueError(f"edge_level must be one of {EDGE_LEVELS}, got {edge_level!r}")
        for name, value in (("warmup_epochs", warmup_epochs), ("arch_epochs", arch_epochs),
                            ("settle_epochs", settle_epochs)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.penalty = _penalty(self.penalty, latency_table, latency_target_ms, latency_weight, latency_serving)
        self.mask_learning_rate = mask_learning_rate
        self.arch_epochs = arch_epochs
        self.tau = tau
        self.mask_init = mask_init
        self.sparsity = sparsity
        self.settle_epochs = settle_epochs
        self.edge_level = edge_level
        self.hierarchy: Hierarchy | None = None
        self._resolved_edge_level = "input"

    # -- supernet
    def default_mutation_hooks(self):
        return [HMNASMixedCell.mutate, HMNASMixedLayer.mutate, HMNASMixedInput.mutate, HMNASMixedRepeat.mutate,
                *[op.mutate for op in HMNAS_MIXED_OPERATIONS], unsupported_mutable_hook]

    def resolve_edge_level(self, model: nn.Module) -> str:
        if self.edge_level != "auto":
            return self.edge_level
        declared = getattr(model, "hmnas_edge_level", None)
        if declared:
            return declared
        return "input" if any(type(m) is InputChoice for m in _outside_cells(model)) else "layer"

    def mutate_model(self, model):
        """Turn ``model`` into an HM-NAS supernet in place, then set up its hierarchy of masks."""
        if not isinstance(model, ModelSpace):
            raise TypeError(f"HMNAS searches an NNI ModelSpace; got {type(model).__name__}")
        self._resolved_edge_level = self.resolve_edge_level(model)
        OneShotStrategy.mutate_model(self, model)  # NNI's traversal; DARTS's own first makes an alpha per label
        self.hierarchy = Hierarchy.of(model)
        self.hierarchy.apply()
        self.hierarchy.watch(model)
        if isinstance(self.penalty, LatencyPenalty):
            self.penalty.bind(model, self.hierarchy)
        return model

    def hmnas_hook(self, hook: Any) -> Any:
        """``hook`` as HM-NAS runs it, or ``None`` to leave it out. NNI runs a user's hooks (``mutation_hooks``)
        first, then the space's own (``extra_oneshot_hooks``), then HM-NAS's. A user's hooks and HM-NAS's run as
        they are; of the space's, the mixed operations a space ships for any strategy (AutoFormer's class token and
        position embedding) run under HM-NAS's value masks, and NNI's other hooks, written for its DARTS
        supermodules (NASNet's stages), are left out: what they would relax meets HM-NAS's own hooks."""
        if hook in self.extra_mutation_hooks:
            return hook
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, type) and issubclass(owner, MixedOperation) and not issubclass(owner, DerivableOperation):
            return derivable(owner).mutate
        if getattr(hook, "__module__", "").startswith("nni."):
            return None
        return hook

    def run_hook(self, hook, name: str, module: nn.Module, memo: dict[str, Any]):
        hook = self.hmnas_hook(hook)
        if hook is None:
            return None  # not this hook's module: NNI goes on to the next hook
        settings = {"edge_level": self._resolved_edge_level, "tau": self.tau, "mask_init": self.mask_init}
        return hook(module, name, memo, settings)

    # -- search
    def configure_oneshot_module(self, training_module) -> HMNASLightningModule:
        if self.hierarchy is None:
            raise RuntimeError("HMNAS: mutate_model must run before configure_oneshot_module")
        return HMNASLightningModule(
            training_module, self.hierarchy, arc_learning_rate=self.arc_learning_rate,
            mask_learning_rate=self.mask_learning_rate, warmup_epochs=self.warmup_epochs,
            arch_epochs=self.arch_epochs, sparsity=self.sparsity, settle_epochs=self.settle_epochs,
            gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step, penalty=self.penalty,
        )

    # -- export
    def export_architecture(self) -> dict[str, Any]:
        """The multi-level architecture: ``{label: [{"op"|"input", "weight"}]}``, ``{cell: {node: [...]}}``."""
        return self.oneshot_module.export()

    def list_models(self, sort: bool = True, limit: int | None = 1) -> Iterator[RawFormatModelSpace]:
        """Yield the derived model: ``formatter='instance'`` gives the derived network with the supernet's
        weights, ``formatter='dict'`` its multi-level architecture (``{label: kept entries}``). With ``limit=K``
        (NNI's ``export_top_models(top_k=K)``), the family of K nested networks from the scores thresholded at
        increasing levels, the search's own first, ranked by predicted latency with a latency table (else by
        entries kept); ``limit=None`` yields every distinct member."""
        self.oneshot_module.set_model(self.supernet)
        if limit == 1:
            samples = [self.export_architecture()]
        else:
            shape = self.latency_table_input_shape()
            samples = [m.sample for m in family_members(self.supernet, self.hierarchy, limit, self.latency, shape)]
        for sample in samples:
            model = RawFormatModelSpace(derive_network(self.supernet, architecture_from_export(sample, self.supernet)),
                                        None)
            model.sample = sample
            model.status = ModelStatus.Frozen
            yield model

    @property
    def latency(self) -> LatencyModel | None:
        """The latency model of a bound :class:`~hmnas_nni.nas.penalty.LatencyPenalty` (``None`` without one)."""
        return self.penalty.model if isinstance(self.penalty, LatencyPenalty) else None

    def latency_table_input_shape(self) -> list[int] | None:
        """The input shape (C, H, W) of the latency table, if there is one."""
        return self.penalty.input_shape if isinstance(self.penalty, LatencyPenalty) else None


def _check_penalty(penalty: Any) -> None:
    """Refuse, in one line, a penalty HMNAS cannot apply (NNI's DARTS would fail an assert mid-search)."""
    if penalty is not None and not isinstance(penalty, (ExpectationProfilerPenalty, dict)):
        raise TypeError(f"HMNAS penalty of type {type(penalty).__name__} is not supported; pass a LatencyPenalty "
                        "(hmnas_nni.nas.penalty) or an NNI ExpectationProfilerPenalty (or the dict DARTS takes)")


def _penalty(penalty: ExpectationProfilerPenalty | None, table: Any, target_ms: float | None, weight: float,
             serving: dict[str, Any] | None) -> ExpectationProfilerPenalty | None:
    """``penalty``, or the :class:`LatencyPenalty` the ``latency_*`` shorthand stands for."""
    if target_ms is not None and table is None:
        raise ValueError(f"latency_target_ms={target_ms!r} needs a latency_table (or penalty=LatencyPenalty(table, "
                         "baseline=...)); measure a table with hmnas_nni.export.latency.table_for_space "
                         "(`hmnas latency`)")
    if not weight >= 0:
        raise ValueError(f"latency_weight must be >= 0, got {weight!r}")
    if table is None:
        return penalty
    if penalty is not None:
        raise ValueError("pass the latency table either as penalty=LatencyPenalty(table, ...) or as latency_table=, "
                         "not both")
    return LatencyPenalty(table, target_ms, weight, serving=serving)


def _outside_cells(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` that is not inside an NNI ``Cell``."""
    for child in model.children():
        if isinstance(child, (Cell, HMNASMixedCell)):
            continue
        yield child
        yield from _outside_cells(child)
