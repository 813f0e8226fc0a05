"""NASIB's rule for spending a budget: how many epochs to explore by path sampling, then how to exploit.

The rule, re-applied at the start of every epoch from measured times (the abstract gives none):

1. **Exploitation keeps a floor**: ``min_exploit`` (3) full-supernet epochs must fit in what is left, at the
   measured exploitation epoch time (estimated, before any, from full-supernet steps timed in the first epoch).
   HM-NAS needs one epoch to learn alpha/beta, at least one to learn the masks and one with the masks fixed so
   BatchNorm settles on the exported architecture.
2. **Exploration is worth up to one epoch per candidate**: uniform path sampling trains each of a choice's ``n``
   candidates on ``1/n`` of the steps, so ``n`` (the largest choice's size) epochs give every candidate an
   epoch's worth of training in expectation; more adds little for ranking them.
3. **Exploration takes at most ``explore_share`` (half) of the budget**: it learns no architecture, exploitation
   does.
An epoch explores while 2 and 3 allow it and 1 still holds after it. Exploitation then runs ``architecture``,
then ``masking``; the epoch after which no further exploitation epoch fits is the settle epoch (masks fixed).
Why: a sampled step runs one candidate per choice, so exploration trains every candidate's weights several
times more cheaply than the full supernet and without the rich-get-richer bias of learning alpha on untrained
weights; on a short budget the floor in 1 wins (little exploration), on a long one 2 caps exploration and the
rest goes to exploitation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanInputs:
    """What the rule reads at an epoch start (seconds are wall-clock)."""

    left: float  # budget left, after the reserve for the last epoch end and the finishing writes
    budget: float  # the whole budget
    explored_seconds: float  # spent exploring so far
    explored_epochs: int
    explore_epoch: float  # one exploration epoch (measured or estimated)
    exploit_epoch: float  # one exploitation epoch (measured or estimated)
    max_candidates: int  # candidates of the largest choice
    epochs_left: int  # epochs the trainer still allows (--epochs)


def explore_next(p: PlanInputs, explore_share: float = 0.5, min_exploit: int = 3) -> bool:
    """Whether the next epoch explores (rules 1-3)."""
    if p.explored_epochs >= p.max_candidates or p.epochs_left <= min_exploit:
        return False
    if p.explored_seconds + p.explore_epoch > explore_share * p.budget:
        return False
    return p.left - p.explore_epoch >= min_exploit * p.exploit_epoch


def exploit_phase(p: PlanInputs, exploited_epochs: int, masked_epochs: int = 1) -> str:
    """``architecture`` (first exploitation epoch, when three or more fit), ``masking``, or ``settle`` (the last
    epoch that fits: masks fixed). No settling before a masking epoch ran: masks that never learned keep every op."""
    fit = min(p.epochs_left, int(p.left // max(p.exploit_epoch, 1e-9)))
    if exploited_epochs == 0 and fit >= 3:
        return "architecture"
    if fit <= 1 and exploited_epochs > 0 and masked_epochs > 0:
        return "settle"
    return "masking"
