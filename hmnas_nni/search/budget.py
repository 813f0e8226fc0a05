"""``--budget``: stop any one-shot strategy's search cleanly when its budget is spent.

:class:`BudgetStop` is a Lightning callback on the search's trainer: it times every training step and every
end of epoch with a :class:`~hmnas_nni.nas.budget.BudgetClock` and sets ``trainer.should_stop`` after the
step at which one more would overrun a wall-clock (or GPU-hour) budget, or after the last epoch of an epoch
budget (Lightning then validates, the monitor derives the architecture of the partial epoch and the search
exports it as after a full run). What was spent lands in ``metrics.json``'s ``final`` (``budget_kind``,
``budget_seconds`` or ``budget_allowed_epochs``, ``spent_seconds``, ``budget_epochs``, ``budget_steps``,
``stopped_by_budget``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl

from hmnas_nni.nas.budget import BudgetClock

_logger = logging.getLogger(__name__)


def batches_per_epoch(trainer: pl.Trainer) -> int:
    """Training batches of one epoch (0 when Lightning does not know)."""
    n = trainer.num_training_batches
    return int(n) if isinstance(n, (int, float)) and n == n and n != float("inf") else 0


class BudgetStop(pl.Callback):
    """Stop training at the step boundary where the rest of the budget is needed to finish."""

    def __init__(self, clock: BudgetClock) -> None:
        self.clock = clock

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.epoch_started()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.clock.step_ended()
        if not trainer.should_stop and self.clock.must_stop(batches_per_epoch(trainer)):
            self._stop(trainer, f"at epoch {trainer.current_epoch}, step {batch_idx + 1}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the epoch's own work: refuse to begin an epoch whose first step could not be finished in time."""
        self.clock.epoch_ended()
        if not trainer.should_stop and (self.clock.epochs_spent() or self.clock.must_stop(batches_per_epoch(trainer))):
            self._stop(trainer, f"after epoch {trainer.current_epoch}")

    def _stop(self, trainer: pl.Trainer, where: str) -> None:
        trainer.should_stop = True
        self.clock.stopped_by_budget = True
        limit = (f"{self.clock.seconds:.1f} s" if self.clock.seconds is not None
                 else f"{self.clock.allowed_epochs} epochs")
        _logger.info("budget: stopping %s, %.1f s spent of %s", where, self.clock.elapsed(), limit)
