"""A budget as a search spends it: step and epoch-end times measured, when to stop, what was spent.

The clock runs from ``started`` (``run_search`` passes the moment it was called, so start-up counts). Under a
wall-clock (or GPU-hour) budget a search stops after the step at which one more step, the end-of-epoch work
(validation, derivation, checkpoint: measured at every epoch end, guessed before the first) and the finishing
writes would overrun the budget. Under an epoch budget it stops after its last allowed epoch, and the clock
only records the time spent.
"""

from __future__ import annotations

import math
import time
from typing import Any

from hmnas_nni.format.budget import Budget

#: Seconds kept for the last writes (architecture, supernet, drawing, metrics) besides the epoch-end work.
FINISH_SECONDS = 2.0
#: Fraction of the budget kept on top, against jitter of the measured times.
MARGIN = 0.02
#: Before the first epoch end is measured, its work is guessed as this many training steps per training batch.
FIRST_EPOCH_END_GUESS = 0.75
#: Weight of the newest step time in the running estimate (the estimate is never below the newest step).
STEP_SMOOTHING = 0.3


class BudgetClock:
    """Elapsed time against a budget; step and epoch-end durations measured as the search runs."""

    def __init__(self, budget: Budget | float, started: float | None = None) -> None:
        self.budget = budget if isinstance(budget, Budget) else Budget(seconds=float(budget))
        if (self.seconds is None) == (self.allowed_epochs is None):
            raise ValueError("a budget is either seconds or epochs: give exactly one")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"a budget must be > 0 seconds, got {self.seconds!r}")
        if self.allowed_epochs is not None and not self.allowed_epochs >= 1:
            raise ValueError(f"an epoch budget must be >= 1 epoch, got {self.allowed_epochs!r}")
        self.started = time.perf_counter() if started is None else started
        self.step_seconds: float | None = None
        self.epoch_end_seconds: float | None = None
        self.steps = 0
        self.epochs = 0
        self.stopped_by_budget = False
        self._mark: float | None = None
        self._epoch_ended_at: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def seconds(self) -> float | None:
        """The wall-clock budget in seconds (``None`` under an epoch budget)."""
        return self.budget.seconds

    @property
    def allowed_epochs(self) -> int | None:
        """The epoch budget (``None`` under a wall-clock one)."""
        return self.budget.epochs

    def copy(self) -> BudgetClock:
        """A clock on the same budget and start time (its own step and epoch counts)."""
        return BudgetClock(self.budget, self.started)

    def left(self) -> float:
        """Seconds left (infinite under an epoch budget)."""
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def epochs_spent(self) -> bool:
        """Under an epoch budget, whether every allowed epoch has begun (the one running is the last)."""
        return self.allowed_epochs is not None and self.epochs >= self.allowed_epochs

    def epoch_started(self) -> None:
        """A training epoch begins: the previous epoch's end-of-epoch work is over, measure it."""
        now = time.perf_counter()
        if self._epoch_ended_at is not None:
            self.epoch_end_seconds = now - self._epoch_ended_at
        self.epochs += 1
        self._mark = now

    def epoch_ended(self) -> None:
        """The epoch's own end-of-epoch work (validation, derivation, checkpoint) is done: measure it so far."""
        if self._epoch_ended_at is not None:
            self.epoch_end_seconds = time.perf_counter() - self._epoch_ended_at

    def step_ended(self) -> float:
        """One training step is done: update the step-time estimate; the step's seconds."""
        now = time.perf_counter()
        took = now - (self._mark if self._mark is not None else now)
        self._mark = self._epoch_ended_at = now
        self.steps += 1
        smooth = took if self.step_seconds is None else (1 - STEP_SMOOTHING) * self.step_seconds + STEP_SMOOTHING * took
        self.step_seconds = max(smooth, took)
        return took

    def reserve(self, batches_per_epoch: int) -> float:
        """Seconds kept for the end of the epoch and the finishing writes."""
        end = self.epoch_end_seconds
        if end is None:
            end = FIRST_EPOCH_END_GUESS * batches_per_epoch * (self.step_seconds or 0.0)
        return end + FINISH_SECONDS + MARGIN * (self.seconds or 0.0)

    def must_stop(self, batches_per_epoch: int, more_steps: int = 1) -> bool:
        """Whether ``more_steps`` more steps would leave too little for the epoch end and the finish."""
        if self.seconds is None:
            return False  # an epoch budget ends at an epoch boundary (epochs_spent)
        step = self.step_seconds or 0.0
        return self.elapsed() + more_steps * step + self.reserve(batches_per_epoch) >= self.seconds

    def record(self) -> dict[str, Any]:
        """What was spent: the budget (its kind, seconds or allowed epochs), seconds so far, epochs begun, training
        steps, whether the budget stopped it."""
        limit = {"budget_seconds": self.seconds} if self.seconds is not None else {"budget_allowed_epochs":
                                                                                   self.allowed_epochs}
        return {"budget_kind": self.budget.kind, **limit, "spent_seconds": self.elapsed(), "budget_epochs": self.epochs,
                "budget_steps": self.steps, "stopped_by_budget": self.stopped_by_budget,
                "step_seconds": self.step_seconds, "epoch_end_seconds": self.epoch_end_seconds}
