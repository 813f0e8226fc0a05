"""MAML (Finn et al., 2017) for any network: inner-loop adaptation through ``torch.func``, meta-training on episodes
and meta-testing with a 95% confidence interval.

The network's parameters are a dict handed to :func:`torch.func.functional_call`; an inner step is
``theta - inner_lr * grad`` with the gradient from :func:`torch.func.grad`. Second-order MAML differentiates the
meta-loss through those steps; first-order MAML (``first_order=True``) detaches the inner gradients. Batch
normalisation uses the statistics of the batch at hand, in training and testing alike, as MAML does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from hmnas_nni.format.errors import UsageError

from .episodes import Episode, EpisodeSampler

Params = dict[str, torch.Tensor]


@dataclass
class MAMLSettings:
    """How a learner is meta-trained and tested: the inner loop, the outer loop and the episodes it meets."""

    inner_steps: int = 5
    inner_lr: float = 0.4
    test_inner_steps: int = 10  # MAML adapts longer at test time
    meta_lr: float = 1e-3
    meta_batch: int = 4
    iterations: int = 300
    first_order: bool = True

    def check(self) -> MAMLSettings:
        """One-line errors for settings that cannot run."""
        for name in ("inner_steps", "test_inner_steps", "meta_batch", "iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"MAML {name} must be a positive integer, got {value!r}")
        for name in ("inner_lr", "meta_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"MAML {name} must be a positive number, got {value!r}")
        return self


def _loss(net: nn.Module) -> Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy of ``net`` under given parameters: the function the inner loop differentiates. Buffers
    (batch-norm running statistics) are fresh copies on every call: they are not used in training mode, and
    ``torch.func`` may not update the module's own in place."""
    def loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(_call(net, params, x), y)
    return loss


def _call(net: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` under ``params`` and copies of its buffers."""
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    return functional_call(net, (params, buffers), (x,))


def adapt(net: nn.Module, params: Params, episode: Episode, steps: int, lr: float,
          first_order: bool = True) -> Params:
    """The parameters after ``steps`` gradient steps on the episode's support set."""
    step = grad(_loss(net))
    for _ in range(steps):
        g = step(params, episode.support_x, episode.support_y)
        params = {k: p - lr * (g[k].detach() if first_order else g[k]) for k, p in params.items()}
    return params


def episode_accuracy(net: nn.Module, params: Params, episode: Episode) -> float:
    """Accuracy of adapted parameters on the episode's query set."""
    with torch.no_grad():
        logits = _call(net, params, episode.query_x)
    return float((logits.argmax(1) == episode.query_y).float().mean())


def meta_train(net: nn.Module, sampler: EpisodeSampler, settings: MAMLSettings, start: int = 0,
               progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Meta-train ``net`` in place on episodes ``start``, ``start + 1``, ...; returns each iteration's query loss."""
    settings.check()
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=settings.meta_lr)
    loss_of, losses, episode = _loss(net), [], start
    for it in range(settings.iterations):
        opt.zero_grad()
        total = 0.0
        for _ in range(settings.meta_batch):
            task = sampler.episode(episode)
            episode += 1
            fast = adapt(net, dict(net.named_parameters()), task, settings.inner_steps, settings.inner_lr,
                         settings.first_order)
            loss = loss_of(fast, task.query_x, task.query_y) / settings.meta_batch
            loss.backward()
            total += float(loss.detach())
        opt.step()
        losses.append(total)
        if progress is not None:
            progress(it, total)
    return losses


def meta_test(net: nn.Module, episodes: Iterable[Episode], settings: MAMLSettings) -> tuple[float, float]:
    """Mean query accuracy after adaptation over the episodes and its 95% confidence interval (1.96 standard
    errors), as few-shot papers report it."""
    net.train()  # batch statistics, as in meta-training
    params = {k: p.detach() for k, p in net.named_parameters()}
    accs = [episode_accuracy(net, adapt(net, params, e, settings.test_inner_steps, settings.inner_lr), e)
            for e in episodes]
    return confidence_interval(accs)


def confidence_interval(values: Iterable[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval."""
    a = np.asarray(list(values), dtype=float)
    if len(a) < 2:
        raise UsageError(f"a confidence interval needs at least 2 episodes, got {len(a)}")
    return float(a.mean()), float(1.96 * a.std(ddof=1) / math.sqrt(len(a)))
