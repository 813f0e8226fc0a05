"""How one HM-NAS training step searches: NNI's first-order DARTS step plus a masking phase.

Schedule (epochs): ``warmup_epochs`` of supernet weights only, then ``arch_epochs`` alternating
weight steps (train split) with ``alpha``/``beta`` steps (validation split), then the masking
phase, where the architecture step also trains the mask scores under a sparsity term and the
hierarchy rules are re-applied after every step. The last ``settle_epochs`` keep the masks fixed
so that BatchNorm statistics settle on the architecture that will be exported.

Hardware awareness comes as NNI's ``penalty``: a :class:`~hmnas_nni.nas.penalty.LatencyPenalty` weights the
sparsity term by the latency each entry saves and, with a target, adds its term to the masking phase's
architecture loss; any other NNI ``ExpectationProfilerPenalty`` is applied as NNI's DARTS applies it, to every
architecture step's loss with :meth:`export_probs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
import torch.nn as nn
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty

from .defaults import DEFAULTS
from .hierarchy import Hierarchy
from .penalty import LatencyPenalty

PHASES = ("warmup", "architecture", "masking")


class NumericalFault(RuntimeError):
    """A non-finite loss or architecture parameter; the search stops and says where."""


class HMNASLightningModule(DartsLightningModule):
    def __init__(self, training_module: pl.LightningModule, hierarchy: Hierarchy, *,
                 arc_learning_rate: float = DEFAULTS.arc_learning_rate,
                 mask_learning_rate: float = DEFAULTS.mask_learning_rate, warmup_epochs: int = DEFAULTS.warmup_epochs,
                 arch_epochs: int = DEFAULTS.arch_epochs, sparsity: float = DEFAULTS.sparsity,
                 settle_epochs: int = DEFAULTS.settle_epochs,
                 gradient_clip_val: float | None = None, log_prob_every_n_step: int = 10,
                 penalty: ExpectationProfilerPenalty | None = None) -> None:
        super().__init__(training_module, arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs, penalty=penalty)
        if isinstance(penalty, LatencyPenalty) and penalty.model is None:
            raise ValueError("the LatencyPenalty is not bound to this supernet: HMNAS.mutate_model binds it (or build "
                             "it bound with LatencyPenalty.of)")
        self.hierarchy = hierarchy
        self.mask_learning_rate = mask_learning_rate
        self.arch_epochs = arch_epochs
        self.sparsity = sparsity
        self.settle_epochs = settle_epochs
        self._searched: list[nn.Parameter] | None = None
        self._weights: list[nn.Parameter] | None = None

    # -- parameters and optimizers
    def mask_parameters(self) -> list[nn.Parameter]:
        return [m.scores for m in self.hierarchy.all_masks()]

    def searched_parameters(self) -> list[nn.Parameter]:
        """alpha/beta/gates and mask scores, listed once: every step needs them, and walking every module for them
        costs as much as a small space's forward."""
        if self._searched is None:
            self._searched = [*self.arch_parameters(), *self.mask_parameters()]
        return self._searched

    def trainable_weights(self) -> list[nn.Parameter]:
        """The trainable network weights (everything trainable but the searched parameters), listed once."""
        if self._weights is None:
            searched = {id(p) for p in self.searched_parameters()}
            self._weights = [p for p in self.parameters() if p.requires_grad and id(p) not in searched]
        return self._weights

    def postprocess_weight_optimizers(self, optimizer):
        """Keep ``alpha``/``beta``/gates (as DARTS does) and mask scores out of the weight optimizer."""
        blacklist = set(self.searched_parameters())
        for opt in optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]:
            if isinstance(opt, torch.optim.Optimizer):
                for group in opt.param_groups:
                    group["params"] = [p for p in group["params"] if p not in blacklist]
        return optimizer

    def configure_architecture_optimizers(self) -> torch.optim.Optimizer:
        arch, masks = self.arch_parameters(), self.mask_parameters()
        if not arch and not masks:
            raise ValueError("No architecture parameters found: the space has no choice HMNAS relaxes to search.")
        # alpha/beta as NNI's DARTS trains them; mask scores with a longer momentum, so that only a consistent
        # straight-through signal (not batch noise) moves a score across the threshold. A space of value choices
        # alone (widths, kernels, depths) has masks and no alpha/beta.
        groups = [{"params": arch, "lr": self.arc_learning_rate, "weight_decay": 1e-3, "betas": (0.5, 0.999)},
                  {"params": masks, "lr": self.mask_learning_rate, "weight_decay": 0.0, "betas": (0.9, 0.999)}]
        return torch.optim.Adam([g for g in groups if g["params"]])

    # -- phases
    def phase(self, epoch: int | None = None) -> str:
        epoch = self.trainer.current_epoch if epoch is None else epoch
        if epoch < self.warmup_epochs:
            return "warmup"
        if epoch < self.warmup_epochs + self.arch_epochs:
            return "architecture"
        return "masking"

    def on_fit_start(self):
        self.hierarchy.apply()
        return super().on_fit_start()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints carry the traced dataflow, so a resumed search applies the same hierarchy rules."""
        checkpoint["hmnas_dataflow"] = self.hierarchy.state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.hierarchy.load_state(checkpoint.get("hmnas_dataflow"))

    def masks_training(self) -> bool:
        """Masks learn during the masking phase, except in its last ``settle_epochs`` (if it has more epochs)."""
        epoch, last = self.trainer.current_epoch, self.trainer.max_epochs
        masking_start = self.warmup_epochs + self.arch_epochs
        settle_from = max(masking_start + 1, last - self.settle_epochs) if last is not None else None
        return self.phase() == "masking" and (settle_from is None or epoch < settle_from)

    def on_train_epoch_start(self):
        phase = self.phase()
        for p in self.arch_parameters():
            p.requires_grad_(phase != "warmup")
        masks_on = self.masks_training()
        for p in self.mask_parameters():
            p.requires_grad_(masks_on)
        return self.training_module.on_train_epoch_start()

    @property
    def latency(self) -> LatencyPenalty | None:
        """The penalty when it is a :class:`~hmnas_nni.nas.penalty.LatencyPenalty` (HM-NAS's own), else ``None``."""
        return self.penalty if isinstance(self.penalty, LatencyPenalty) else None

    def sparsity_loss(self) -> torch.Tensor:
        """``lambda * mean |s|`` over every mask score: pushes towards fewer ops and edges. With a latency penalty,
        each score's term is weighted by the latency its entry saves (mean weight 1): expensive entries go first."""
        scores = torch.cat([s.reshape(-1) for s in self.mask_parameters()])
        if self.latency is None:
            return self.sparsity * scores.abs().mean()
        weights = torch.cat([w.reshape(-1) for w in self.latency.sparsity_weights()]).to(scores.device)
        return self.sparsity * (weights * scores.abs()).mean()

    def masking_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The masking phase's architecture loss: ``loss`` plus the sparsity term, plus a latency penalty's target
        term ``scale * max(0, E / baseline - 1)``, ``E`` the masked network's expected latency (from the table,
        through the straight-through masks)."""
        loss = loss + self.sparsity_loss()
        if self.latency is not None and self.latency.baseline is not None:
            loss, _ = self.latency(loss)
        return loss

    @contextmanager
    def weights_frozen(self) -> Iterator[None]:
        """Network weights need no gradient for the duration: the architecture step's backward then computes only
        the architecture's (the weight step zeroes weight gradients before its own backward anyway)."""
        weights = self.trainable_weights()
        for p in weights:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in weights:
                p.requires_grad_(True)

    # -- one step
    def training_step(self, batch, batch_idx):
        phase = self.phase()
        if phase != "warmup":
            with self.weights_frozen():
                self.architecture_step(batch["val"], batch_idx)
        result = self.training_module.training_step(batch["train"], 2 * batch_idx + 1)
        w_loss = self._loss(result)
        self._check_finite(w_loss, batch_idx, phase, "weight loss")
        self.advance_optimization(w_loss, batch_idx, self.gradient_clip_val)
        self.advance_lr_schedulers(batch_idx)
        self.log("phase", float(PHASES.index(phase)), prog_bar=False)
        if batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs(self.export_probs())
        return result

    def architecture_step(self, batch, batch_idx: int) -> None:
        """One step of alpha/beta (and, while masks train, mask scores) on a validation batch."""
        arc_optim = self.architecture_optimizers()
        phase = self.phase()
        arc_optim.zero_grad()
        loss = self._loss(self.training_module.training_step(batch, 2 * batch_idx))
        if self.penalty is not None and self.latency is None:  # an NNI penalty, as NNI's DARTS applies it
            loss, details = self.penalty(loss, self.export_probs())
            self.log_dict({f"penalty/{k}": v for k, v in details.items()})
        masking = self.masks_training()
        if masking:
            loss = self.masking_loss(loss)
        self._check_finite(loss, batch_idx, phase, "architecture loss")
        if not loss.requires_grad:
            return  # nothing searchable trains in this phase (a space of value choices alone before masking)
        self.manual_backward(loss)
        arc_optim.step()
        self._check_arch_finite(batch_idx, phase)
        if masking:
            self.hierarchy.apply()
            if self.latency is not None:
                self.log("expected_latency_ms", self.latency.predicted_ms(), prog_bar=False)

    @staticmethod
    def _loss(result):
        return result["loss"] if isinstance(result, dict) else result

    def _check_finite(self, loss: torch.Tensor, batch_idx: int, phase: str, what: str) -> None:
        if not math.isfinite(float(loss.detach())):
            raise NumericalFault(f"non-finite {what} ({float(loss.detach())}) at epoch {self.trainer.current_epoch}, "
                                 f"step {batch_idx}, phase {phase!r}; lower the learning rates or check the data")

    def _check_arch_finite(self, batch_idx: int, phase: str) -> None:
        searched = self.searched_parameters()
        if searched and not torch.isfinite(torch.cat([p.detach().reshape(-1) for p in searched])).all():
            raise NumericalFault(f"non-finite architecture parameter at epoch {self.trainer.current_epoch}, "
                                 f"step {batch_idx}, phase {phase!r}; lower arc_learning_rate / "
                                 "mask_learning_rate (--arc-lr / --mask-lr)")
