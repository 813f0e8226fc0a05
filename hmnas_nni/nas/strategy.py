"""HM-NAS as an NNI one-shot strategy: use it wherever NNI's ``DARTS`` goes.

    from nni.nas.experiment import NasExperiment
    from hmnas_nni import HMNAS
    NasExperiment(model_space, evaluator, HMNAS()).run()

The strategy turns every ``LayerChoice`` / ``InputChoice`` of the space into an HM-NAS
supermodule, trains the supernet with :class:`HMNASLightningModule`, and exports the
multi-level architecture: every kept op and input with its learned weight, no top-k.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from nni.mutable import Categorical, CategoricalMultiple
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.oneshot.pytorch.strategy import DARTS
from nni.nas.space import ModelStatus, RawFormatModelSpace

from .defaults import DEFAULTS
from .hierarchy import Hierarchy
from .lightning import HMNASLightningModule
from .masks import MaskScores
from .supermodules import HMNASMixedInput, HMNASMixedLayer, unsupported_mutable_hook

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
        Where edges live: ``"input"`` (each ``InputChoice`` candidate is an edge), ``"layer"`` (each
        ``LayerChoice`` is an edge with its own gate, for cells that sum their edges), ``"none"`` (chains),
        or ``"auto"``: the space's ``hmnas_edge_level`` attribute, else ``"input"`` when it has input choices.
    """

    def __init__(self, *, arc_learning_rate: float = DEFAULTS.arc_learning_rate,
                 mask_learning_rate: float = DEFAULTS.mask_learning_rate, warmup_epochs: int = DEFAULTS.warmup_epochs,
                 arch_epochs: int = DEFAULTS.arch_epochs, tau: float = DEFAULTS.tau,
                 mask_init: float = DEFAULTS.mask_init, sparsity: float = DEFAULTS.sparsity,
                 settle_epochs: int = DEFAULTS.settle_epochs, edge_level: str = "auto",
                 gradient_clip_val: float | None = None, log_prob_every_n_step: int = 10, **kwargs: Any) -> None:
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs, **kwargs)
        if tau <= 0:
            raise ValueError(f"tau (mask threshold) must be > 0, got {tau}")
        if mask_init < tau:
            raise ValueError(f"mask_init ({mask_init}) must be >= tau ({tau}) so every op starts switched on")
        if sparsity < 0:
            raise ValueError(f"sparsity weight must be >= 0, got {sparsity}")
        if edge_level not in EDGE_LEVELS:
            raise ValueError(f"edge_level must be one of {EDGE_LEVELS}, got {edge_level!r}")
        for name, value in (("warmup_epochs", warmup_epochs), ("arch_epochs", arch_epochs),
                            ("settle_epochs", settle_epochs)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.mask_learning_rate = mask_learning_rate
        self.arch_epochs = arch_epochs
        self.tau = tau
        self.mask_init = mask_init
        self.sparsity = sparsity
        self.settle_epochs = settle_epochs
        self.edge_level = edge_level
        self.hierarchy: Hierarchy | None = None
        self._masks: dict[str, Any] = {}
        self._resolved_edge_level = "input"

    # -- supernet
    def default_mutation_hooks(self):
        return [HMNASMixedLayer.mutate, HMNASMixedInput.mutate, unsupported_mutable_hook]

    def resolve_edge_level(self, model: ModelSpace) -> str:
        if self.edge_level != "auto":
            return self.edge_level
        declared = getattr(model, "hmnas_edge_level", None)
        if declared:
            return declared
        has_inputs = any(isinstance(m, CategoricalMultiple) for m in model.simplify().values())
        return "input" if has_inputs else "layer"

    def mutate_model(self, model):
        if not isinstance(model, ModelSpace):
            raise TypeError(f"HMNAS searches an NNI ModelSpace; got {type(model).__name__}")
        self._resolved_edge_level = self.resolve_edge_level(model)
        op_masks: dict[str, MaskScores] = {}
        input_masks: dict[str, MaskScores] = {}
        edge_masks: dict[str, MaskScores] = {}
        self._masks = {}
        for label, mutable in model.simplify().items():
            if isinstance(mutable, CategoricalMultiple):
                input_masks[label] = self._masks[f"{label}#edges"] = MaskScores(len(mutable.values), self.mask_init,
                                                                                self.tau)
            elif isinstance(mutable, Categorical):
                op_masks[label] = self._masks[f"{label}#ops"] = MaskScores(len(mutable.values), self.mask_init,
                                                                           self.tau)
                if self._resolved_edge_level == "layer":
                    edge_masks[label] = self._masks[f"{label}#edge"] = MaskScores(1, self.mask_init, self.tau)
                    self._masks[f"{label}#gate"] = nn.Parameter(torch.full((1,), 2.0))  # sigmoid(2) = 0.88: open
        graphs = model.cell_graphs() if hasattr(model, "cell_graphs") else []
        self.hierarchy = Hierarchy(graphs, op_masks, input_masks, edge_masks)
        model = super().mutate_model(model)  # creates alpha/beta per label, then runs the hooks
        self.hierarchy.apply()
        return model

    def run_hook(self, hook, name: str, module: nn.Module, memo: dict[str, Any]):
        if not memo.get("_validated"):
            memo.update(self._arch_parameters)
            memo.update(self._masks)
            memo["_validated"] = True
        return hook(module, name, memo, {"edge_level": self._resolved_edge_level})

    # -- search
    def configure_oneshot_module(self, training_module) -> HMNASLightningModule:
        if self.hierarchy is None:
            raise RuntimeError("HMNAS: mutate_model must run before configure_oneshot_module")
        return HMNASLightningModule(
            training_module, self.hierarchy, arc_learning_rate=self.arc_learning_rate,
            mask_learning_rate=self.mask_learning_rate, warmup_epochs=self.warmup_epochs,
            arch_epochs=self.arch_epochs, sparsity=self.sparsity, settle_epochs=self.settle_epochs,
            gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step,
        )

    # -- export
    def export_architecture(self) -> dict[str, Any]:
        """The multi-level architecture: ``{label: [{"op"|"input", "weight"}]}`` for every choice."""
        return self.oneshot_module.export()

    def list_models(self, sort: bool = True, limit: int | None = 1) -> Iterator[RawFormatModelSpace]:
        """Yield the derived model: its ``sample`` is the multi-level architecture (NNI's ``formatter='dict'``)."""
        self.oneshot_module.set_model(self.supernet)
        model = RawFormatModelSpace(self.supernet, None)
        model.sample = self.export_architecture()
        model.status = ModelStatus.Frozen
        yield model
