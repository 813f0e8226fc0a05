"""NASIB: architecture search within a stated budget (wall-clock, GPU-hours or epochs), an NNI one-shot strategy.

    experiment = NasExperiment(model_space, evaluator, NASIB(budget="10m"))   # evaluator: max_epochs large
    experiment.run()

It explores by uniform path sampling (each step trains one random candidate of every ``LayerChoice``, weights
only, as NNI's RandomOneShot), then exploits with HM-NAS (alpha/beta, then learned masks, then a settle epoch),
planning the split from step and epoch times it measures and re-planning at every epoch start
(:mod:`hmnas_nni.nas.budget_plan` states the rule and why). It stops at the step where the rest of the budget is
needed to finish, and exports HM-NAS's masked architecture, whose derived network is the masked supernet.
``budget_record()`` (in ``metrics.json`` under ``hmnas search``) says what it spent and planned.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from hmnas_nni.format.budget import Budget, parse_budget

from .budget import BudgetClock
from .budget_plan import PlanInputs, exploit_phase, explore_next
from .lightning import HMNASLightningModule
from .strategy import HMNAS
from .supermodules import HMNASMixedLayer

#: Full-supernet steps of the first epoch: the first traces the supernet's dataflow (HM-NAS reads its graph from
#: it), the next two are timed.
FULL_STEPS = (0, 1, 2)


class NASIBLightningModule(HMNASLightningModule):
    """HM-NAS's step with a budget: sampled exploration epochs first, then HM-NAS's phases as planned."""

    def __init__(self, *args: Any, budget: Budget, clock: BudgetClock | None, explore_share: float,
                 min_exploit: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget, self.clock = budget, clock
        self.explore_share, self.min_exploit = explore_share, min_exploit
        self.phases: dict[int, str] = {}  # epoch -> "explore" / "architecture" / "masking" / "settle"
        self.step_seconds: dict[str, float] = {}  # "explore" / "full" (weights only) / "exploit" -> one step
        self.explored_seconds = 0.0
        self._epoch_t0 = 0.0

    # -- the plan
    def layers(self) -> list[HMNASMixedLayer]:
        return [m for m in self.model.modules() if isinstance(m, HMNASMixedLayer)]

    def plan_inputs(self) -> PlanInputs:
        """What the rule reads now: seconds under a wall-clock budget, epochs (each one unit) under an epoch one."""
        if self.budget.epochs is not None:
            return self.epoch_plan_inputs()
        clock, batches = self.clock, max(1, int(self.trainer.num_training_batches))
        end = clock.epoch_end_seconds or 0.0
        explore = self.step_seconds.get("explore", 0.0)
        exploit = self.step_seconds.get("exploit", 2 * self.step_seconds.get("full", explore))
        return PlanInputs(left=clock.left() - clock.reserve(batches), budget=self.budget.seconds,
                          explored_seconds=self.explored_seconds,
                          explored_epochs=sum(p == "explore" for p in self.phases.values()),
                          explore_epoch=batches * explore + end, exploit_epoch=batches * exploit + end,
                          max_candidates=max((len(m.names) for m in self.layers()), default=1),
                          epochs_left=(self.trainer.max_epochs or 10**9) - self.trainer.current_epoch)

    def epoch_plan_inputs(self) -> PlanInputs:
        """The rule's inputs under an epoch budget: every epoch costs one, so the plan is the same on any machine."""
        allowed, epoch = self.budget.epochs, self.trainer.current_epoch
        explored = sum(p == "explore" for p in self.phases.values())
        return PlanInputs(left=float(allowed - epoch), budget=float(allowed), explored_seconds=float(explored),
                          explored_epochs=explored, explore_epoch=1.0, exploit_epoch=1.0,
                          max_candidates=max((len(m.names) for m in self.layers()), default=1),
                          epochs_left=min((self.trainer.max_epochs or 10**9), allowed) - epoch)

    def choose_phase(self) -> str:
        """The phase of the epoch starting now (the first always explores: it also times the steps)."""
        epoch = self.trainer.current_epoch
        if not self.phases or all(p == "explore" for p in self.phases.values()):
            if epoch == 0 or explore_next(self.plan_inputs(), self.explore_share, self.min_exploit):
                return "explore"
        exploited = sum(p != "explore" for p in self.phases.values())
        masked = sum(p == "masking" for p in self.phases.values())
        return exploit_phase(self.plan_inputs(), exploited, masked)

    def phase(self, epoch: int | None = None) -> str:
        """HM-NAS's phase names: exploration is NASIB's warm-up, settling is masking with fixed masks."""
        epoch = self.trainer.current_epoch if epoch is None else epoch
        own = self.phases.get(epoch, "masking")
        return {"explore": "warmup", "settle": "masking"}.get(own, own)

    def masks_training(self) -> bool:
        return self.phases.get(self.trainer.current_epoch) == "masking"

    # -- hooks
    def on_fit_start(self):
        if self.clock is None:
            self.clock = BudgetClock(self.budget)
        return super().on_fit_start()

    def on_train_epoch_start(self):
        self.clock.epoch_started()
        self.phases[self.trainer.current_epoch] = self.choose_phase()
        self._epoch_t0 = time.perf_counter()
        return super().on_train_epoch_start()

    def training_step(self, batch, batch_idx):
        own = self.phases[self.trainer.current_epoch]
        timed = "exploit" if own != "explore" else "explore"
        if own == "explore" and self.trainer.current_epoch == 0 and batch_idx in FULL_STEPS:
            timed = "full"  # a whole-supernet weight step: about half an exploitation step
        elif own == "explore":
            self._sample()
        started = time.perf_counter()
        try:
            return super().training_step(batch, batch_idx)
        finally:
            for layer in self.layers():
                layer.sampled = None
            self._time(timed, time.perf_counter() - started, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx, *args, **kwargs):
        self.clock.step_ended()
        if not self.trainer.should_stop and self.clock.must_stop(max(1, int(self.trainer.num_training_batches))):
            self.trainer.should_stop = True
            self.clock.stopped_by_budget = True
        return super().on_train_batch_end(outputs, batch, batch_idx, *args, **kwargs)

    def on_train_epoch_end(self):
        self.clock.epoch_ended()
        if self.clock.epochs_spent() and not self.trainer.should_stop:
            self.trainer.should_stop = True
            self.clock.stopped_by_budget = True
        if self.phases[self.trainer.current_epoch] == "explore":
            self.explored_seconds += time.perf_counter() - self._epoch_t0
        return super().on_train_epoch_end()

    # -- helpers
    def _sample(self) -> None:
        """One uniformly drawn live candidate per ``LayerChoice`` (torch's RNG: reseeded per epoch by the search)."""
        for layer in self.layers():
            live = layer.op_masks.live or list(range(len(layer.names)))
            layer.sampled = live[int(torch.randint(len(live), ()))]

    def _time(self, kind: str, seconds: float, batch_idx: int) -> None:
        if batch_idx == 0 and self.trainer.current_epoch == 0:
            return  # the first step also traces the supernet
        old = self.step_seconds.get(kind)
        self.step_seconds[kind] = seconds if old is None else 0.7 * old + 0.3 * seconds

    def record(self) -> dict[str, Any]:
        """The plan as it ran: phase per epoch, measured step times, seconds spent exploring."""
        return {"nasib_phases": [self.phases[e] for e in sorted(self.phases)],
                "nasib_step_seconds": dict(self.step_seconds), "nasib_explored_seconds": self.explored_seconds}


class NASIB(HMNAS):
    """Budget-aware NAS: explore by path sampling, exploit with HM-NAS's masks, stop in time.

    Parameters
    ----------
    budget
        Wall-clock budget: seconds, or ``"90s"`` / ``"4m"`` / ``"1h"``, or GPU-hours (``"0.5gpuh"``: wall-clock
        time of the one GPU the search trains on). It counts from the start of training unless :meth:`use_budget`
        gives an earlier clock (``hmnas search`` counts from its own start). Or training epochs (``"12ep"``): the
        same rule with every epoch costing one, so the schedule is the same on any machine.
    explore_share
        The largest fraction of the budget exploration may take (rule 3 of :mod:`hmnas_nni.nas.budget_plan`).
    min_exploit
        Exploitation epochs that must still fit after an exploration epoch (rule 1).
    Other keyword arguments are HM-NAS's (``warmup_epochs`` and ``arch_epochs`` are planned here, not taken).
    """

    def __init__(self, *, budget: float | str, explore_share: float = 0.5, min_exploit: int = 3,
                 **kwargs: Any) -> None:
        kwargs.pop("warmup_epochs", None)
        kwargs.pop("arch_epochs", None)
        super().__init__(warmup_epochs=0, arch_epochs=0, **kwargs)
        if not 0 <= explore_share <= 1:
            raise ValueError(f"explore_share must be in [0, 1], got {explore_share!r}")
        if min_exploit < 1:
            raise ValueError(f"min_exploit must be >= 1 epoch, got {min_exploit!r}")
        self.budget = parse_budget(budget)
        self.explore_share, self.min_exploit = explore_share, min_exploit
        self.clock: BudgetClock | None = None

    def use_budget(self, clock: BudgetClock) -> None:
        """Plan on ``clock``'s budget and start time (its own copy: the caller's callback times its own steps)."""
        self.budget = clock.budget
        self.clock = clock.copy()

    def configure_oneshot_module(self, training_module) -> NASIBLightningModule:
        if self.hierarchy is None:
            raise RuntimeError("NASIB: mutate_model must run before configure_oneshot_module")
        return NASIBLightningModule(
            training_module, self.hierarchy, budget=self.budget, clock=self.clock, explore_share=self.explore_share,
            min_exploit=self.min_exploit, arc_learning_rate=self.arc_learning_rate,
            mask_learning_rate=self.mask_learning_rate, warmup_epochs=0, arch_epochs=0, sparsity=self.sparsity,
            settle_epochs=0, gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step, penalty=self.penalty)

    def budget_record(self) -> dict[str, Any]:
        """What the search spent and planned (empty before it ran)."""
        try:
            module = self.oneshot_module
        except Exception:  # noqa: BLE001 - NNI raises when the strategy never started
            return {}
        return {**module.clock.record(), **module.record()} if module.clock is not None else module.record()
