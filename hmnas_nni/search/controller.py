"""NNI's ENAS controller read as a function of whole architectures: their log-probabilities and hidden states.

NNI 3.0's default ENAS controller (``nni.nas.strategy._rl_impl.default_policy_fn``) is a PPO policy whose actor
reads an observation ``{action_history, cur_step, action_dim}``: an LSTM runs over a start token followed by the
choices in ``action_history`` and the actor reads its state at position ``cur_step``. The LSTM is causal, so that
state depends on the first ``cur_step`` choices only. Handing it a whole architecture's choices with
``cur_step = t`` therefore scores choice ``t`` exactly as the controller did when it sampled it, and
``cur_step = n`` (past the last of ``n`` choices) gives the state after all of them: the hidden state
:func:`hidden_states` reads. An architecture is a row of choice indices, in the order of the controller's steps
(``TuningTrajectoryGenerator.search_labels``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

#: Probabilities below this are read as this, so that a choice the controller all but rules out has a finite log.
MIN_PROB = 1e-12


def actor_of(policy: Any) -> nn.Module:
    """The actor of NNI's default ENAS policy; a one-line error for a policy whose states this module cannot read."""
    actor = getattr(policy, "actor", None)
    if actor is None or not hasattr(actor, "preprocess"):
        raise TypeError(f"{type(policy).__name__} is not NNI's default ENAS policy (an actor with an LSTM "
                        "'preprocess'); build ENAS without policy_fn to use the memory buffer or the diagnostic")
    return actor


def observations(actions: torch.Tensor, num_choices: Sequence[int], steps: torch.Tensor) -> dict[str, torch.Tensor]:
    """The actor's observations of architectures ``actions`` (rows of choice indices) at ``steps`` (one per row)."""
    widest = max(num_choices)
    width = torch.tensor([*num_choices, widest], device=actions.device)  # past the last step: every choice
    return {"action_history": actions.long(), "cur_step": steps.long(), "action_dim": width[steps.long()]}


def _expanded(actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every architecture repeated once per step, and the step of each repeat: (B * n, n) and (B * n,)."""
    rows, steps = actions.shape
    repeated = actions.repeat_interleave(steps, dim=0)
    return repeated, torch.arange(steps, device=actions.device).repeat(rows)


def log_probs(actor: nn.Module, actions: torch.Tensor, num_choices: Sequence[int]) -> torch.Tensor:
    """Log-probability of each architecture (a row of ``actions``) under the controller now, with gradients."""
    rows, steps = actions.shape
    repeated, step = _expanded(actions)
    probs, _state = actor(observations(repeated, num_choices, step))
    chosen = probs.gather(1, repeated.gather(1, step[:, None])).squeeze(1)
    return chosen.clamp_min(MIN_PROB).log().view(rows, steps).sum(1)


def hidden_states(actor: nn.Module, actions: torch.Tensor, num_choices: Sequence[int]) -> torch.Tensor:
    """The controller's state after reading all choices of each architecture (what its actor head reads): (B, H)."""
    rows, steps = actions.shape
    after_last = torch.full((rows,), steps, device=actions.device)
    return actor.preprocess(observations(actions, num_choices, after_last))


def as_tensor(architectures: Sequence[Sequence[int]], like: nn.Module) -> torch.Tensor:
    """Rows of choice indices as a long tensor on the device of ``like``'s parameters."""
    device = next(like.parameters()).device
    return torch.tensor([list(a) for a in architectures], dtype=torch.long, device=device)


@torch.no_grad()
def sample(actor: nn.Module, num_choices: Sequence[int], count: int,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` architectures drawn from the controller choice by choice, as its own sampling draws them, and the
    entropy (nats) of each step's distribution, averaged over the draws: (count, n) and (n,)."""
    device = next(actor.parameters()).device
    steps = len(num_choices)
    actions = torch.zeros(count, steps, dtype=torch.long, device=device)
    entropy = torch.zeros(steps)
    for t in range(steps):
        probs, _state = actor(observations(actions, num_choices, torch.full((count,), t, device=device)))
        probs = probs[:, :num_choices[t]].double().cpu()
        actions[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)
        entropy[t] = float(-(probs * probs.clamp_min(MIN_PROB).log()).sum(1).mean())
    return actions, entropy
