"""NASES ("Neural Architecture Search in Embedding Space") as an NNI multi-trial strategy over any NNI model space.

Reinforcement learning acts in a continuous embedding of the space instead of over its discrete choices: the
architecture autoencoder shared with AG-Net (:class:`~hmnas_nni.common.generator.ArchitectureVAE` over the space's
:class:`~hmnas_nni.common.encoding.SpaceEncoding`) is pre-trained on free random samples; the controller is a
diagonal Gaussian policy over its latent space, started at the embedding of those samples (the pre-trained
controller); each action is a latent point, decoded (argmax per choice) into an architecture that is always a valid
sample of the space, and its reward is the architecture's validation accuracy (times ``(latency / cap) ** w``, the
MnasNet-style latency term, with a ``latency_cap``). The policy is trained by REINFORCE: per round, ``batch_size``
actions, advantages normalised over the batch (mean baseline), one Adam step on the mean and log standard deviation.
Actions that decode to architectures queried before are answered from the record (no query spent). The choices
the abstract leaves open are in docs/nases.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from hmnas_nni.common.encoding import Sample, SampleKey
from hmnas_nni.common.generator import ArchitectureVAE, pretrained_vae
from hmnas_nni.format.errors import UsageError

from .rounds import Pick, RoundStrategy

_logger = logging.getLogger(__name__)


@dataclass
class GaussianPolicy:
    """A diagonal Gaussian over latent points, trained by REINFORCE with Adam (numpy: plain, reproducible state)."""

    mean: np.ndarray
    log_std: np.ndarray
    learning_rate: float
    min_log_std: float
    steps: int = 0
    moments: list[np.ndarray] = field(default_factory=list)  # Adam's first and second moments of (mean, log_std)

    def act(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` latent points drawn from the policy."""
        return self.mean + np.exp(self.log_std) * rng.standard_normal((n, self.mean.size))

    def reinforce(self, actions: np.ndarray, rewards: np.ndarray) -> bool:
        """One policy-gradient step: ascend ``mean(A_i * grad log pi(a_i))`` with normalised advantages ``A``;
        False (no step) when the rewards do not differ."""
        spread = rewards.std()
        if len(rewards) < 2 or spread <= 1e-12:
            return False
        advantage = (rewards - rewards.mean()) / spread
        std = np.exp(self.log_std)
        scaled = (actions - self.mean) / std
        grads = [(advantage[:, None] * scaled / std).mean(axis=0), (advantage[:, None] * (scaled**2 - 1)).mean(axis=0)]
        self._adam(grads)
        return True

    def _adam(self, grads: list[np.ndarray], beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        """Adam ascent on (mean, log_std); the standard deviation never falls below ``exp(min_log_std)``."""
        if not self.moments:
            self.moments = [np.zeros_like(g) for g in grads] + [np.zeros_like(g) for g in grads]
        self.steps += 1
        params = [self.mean, self.log_std]
        for i, g in enumerate(grads):
            m, v = self.moments[i], self.moments[i + 2]
            m[:] = beta1 * m + (1 - beta1) * g
            v[:] = beta2 * v + (1 - beta2) * g * g
            step = m / (1 - beta1**self.steps) / (np.sqrt(v / (1 - beta2**self.steps)) + eps)
            params[i] += self.learning_rate * step
        np.maximum(self.log_std, self.min_log_std, out=self.log_std)


@dataclass
class _Batch:
    """One round's actions and the architectures they decode to."""

    round: int
    actions: np.ndarray
    samples: list[Sample]


class NASES(RoundStrategy):
    """NASES: a Gaussian policy in a pre-trained architecture embedding, trained by REINFORCE (see the module doc).

    Parameters
    ----------
    batch_size
        Actions per round (one policy step each round); their unseen architectures are the round's queries.
    learning_rate
        Adam's step size on the policy's mean and log standard deviation.
    min_std
        Floor of the policy's standard deviation, as a fraction of the embedding's spread (keeps exploring).
    pretrain_samples, latent, hidden, pretrain_epochs, kl_weight
        The autoencoder: random samples it reconstructs before the search (free), latent size, width, epochs and
        the weight of its KL term.
    latency_cap, latency_exponent
        With a cap, the reward is ``accuracy * (latency / cap) ** latency_exponent`` and the result is the best
        architecture within the cap.
    max_free_steps
        Policy steps a round may take on actions that decode only to queried architectures (answered from the
        record) before it queries random unseen ones instead.
    metric, latency_metric, max_queries, seed
        As for every round strategy (:class:`~hmnas_nni.strategy.rounds.RoundStrategy`).
    """

    def __init__(self, *, batch_size: int = 8, learning_rate: float = 0.1, min_std: float = 0.1,
                 pretrain_samples: int = 2000, latent: int = 16, hidden: int = 64, pretrain_epochs: int = 20,
                 kl_weight: float = 0.05, latency_cap: float | None = None, latency_exponent: float = -0.07,
                 max_free_steps: int = 50, metric: str = "default", latency_metric: str = "latency",
                 max_queries: int | None = None, seed: int | None = None) -> None:
        super().__init__(latency_cap=latency_cap, metric=metric, latency_metric=latency_metric,
                         max_queries=max_queries, seed=seed)
        _check_arguments(batch_size, learning_rate, min_std, pretrain_samples, max_free_steps)
        self.batch_size, self.learning_rate, self.min_std = batch_size, learning_rate, min_std
        self.pretrain_samples, self.latent, self.hidden = pretrain_samples, latent, hidden
        self.pretrain_epochs, self.kl_weight = pretrain_epochs, kl_weight
        self.latency_exponent, self.max_free_steps = latency_exponent, max_free_steps
        self._vae: ArchitectureVAE | None = None
        self._policy: GaussianPolicy | None = None
        self._start: tuple[np.ndarray, np.ndarray] | None = None  # mean and spread of the pre-training embedding
        self._batch: _Batch | None = None  # the last round's actions: the policy learns from them next round

    def extra_repr(self) -> str:
        return (f"batch_size={self.batch_size}, learning_rate={self.learning_rate}, latency_cap={self.latency_cap}, "
                f"seed={self.seed}")

    def prepare(self) -> None:
        """Pre-train the autoencoder (deterministic in the seed, so a resumed search rebuilds the same one)."""
        if self._vae is None:
            self._vae, losses = pretrained_vae(self.encoding, samples=self.pretrain_samples, seed=self.seed,
                                               latent=self.latent, hidden=self.hidden, epochs=self.pretrain_epochs,
                                               kl_weight=self.kl_weight)
            if losses:
                _logger.info("NASES: autoencoder pre-trained on %d random samples, loss %.3f -> %.3f",
                             self.pretrain_samples, losses[0], losses[-1])

    def ask(self, round_: int) -> list[Pick]:
        """Learn from the last round's rewards, then act: the unseen architectures of this round's actions."""
        self.prepare()
        if self._batch is None or self._batch.round != round_ - 1:
            self._replay(round_ - 1)  # a resumed search rebuilds the policy from its record
        return self._step(round_)

    # The policy ----------------------------------------------------------------------------------------------------

    def _replay(self, last: int) -> None:
        """The policy as it was after round ``last`` acted (every round's actions and rewards are reproducible)."""
        self._policy, self._batch = self._initial_policy(), None
        for round_ in range(last + 1):
            self._step(round_)

    def _initial_policy(self) -> GaussianPolicy:
        """The pre-trained controller: centred on the embedding of the pre-training samples, with their spread
        (embedded once; every replay starts from a fresh copy)."""
        if self._start is None:
            assert self._vae is not None
            rng = np.random.default_rng([self.seed, 2])
            samples = self.encoding.random_samples(max(self.pretrain_samples, 2 * self.batch_size), rng)
            embedded = self._vae.embed(torch.from_numpy(self.encoding.encode_many(samples))).numpy()
            self._start = embedded.astype(np.float64).mean(axis=0), embedded.astype(np.float64).std(axis=0) + 1e-6
        mean, spread = self._start
        return GaussianPolicy(mean.copy(), np.log(spread), self.learning_rate,
                              float(np.log(self.min_std * spread.mean())))

    def _step(self, round_: int) -> list[Pick]:
        """Update on the last batch, then draw this round's actions; actions that decode only to queried
        architectures are learnt from at once (up to ``max_free_steps``), then random unseen samples are queried."""
        assert self._policy is not None
        rewards = self._rewards()  # every reward known before this round (free steps only add known ones)
        if self._batch is not None:
            self._learn(self._batch, rewards)
        seen = self.seen(before=round_)
        rng = np.random.default_rng([self.seed, 1, round_])
        for _ in range(self.max_free_steps + 1):
            self._batch = _Batch(round_, actions := self._policy.act(self.batch_size, rng), self._decode(actions))
            picks = self._unseen(self._batch.samples, seen)
            if picks:
                return picks
            self._learn(self._batch, rewards)
        self._batch = None
        return [(s, None) for s in self.unseen_random(rng, self.batch_size, seen)]

    def _decode(self, actions: np.ndarray) -> list[Sample]:
        """The architectures of latent points: the decoder's logits, argmax per choice (always a valid sample)."""
        assert self._vae is not None
        with torch.no_grad():
            logits = self._vae.decode(torch.from_numpy(actions.astype(np.float32))).numpy()
        return self.encoding.decode_many(logits)

    def _unseen(self, samples: list[Sample], seen: set[SampleKey]) -> list[Pick]:
        """The distinct samples not queried before (in action order), as picks."""
        found: dict[SampleKey, Sample] = {}
        for sample in samples:
            key = self.encoding.key(sample)
            if key not in seen and self.encoding.valid(sample):
                found.setdefault(key, sample)
        return [(s, None) for s in found.values()]

    def _learn(self, batch: _Batch, rewards: dict[SampleKey, float | None]) -> None:
        """One REINFORCE step on the actions whose architectures have a reward (failed or invalid ones get the
        batch's lowest reward; pending ones are left out)."""
        assert self._policy is not None
        values = [rewards.get(self.encoding.key(s), np.nan) for s in batch.samples]
        known = np.array([v for v in values if v is not None], dtype=np.float64)
        if not np.isfinite(known).any():
            return
        floor = float(np.nanmin(known))
        keep = [i for i, v in enumerate(values) if v is not None]
        reward = np.array([floor if not np.isfinite(values[i]) else values[i] for i in keep], dtype=np.float64)
        self._policy.reinforce(batch.actions[keep], reward)

    def _rewards(self) -> dict[SampleKey, float | None]:
        """Reward of every queried architecture: accuracy (with the latency term), NaN if failed, None if pending."""
        rewards: dict[SampleKey, float | None] = {}
        for query in self._history:
            key = self.encoding.key(query.sample)
            if query.status == "running":
                rewards[key] = None
                continue
            found = self.objectives(query)
            rewards[key] = np.nan if found is None else self._reward(*found)
        return rewards

    def _reward(self, accuracy: float, latency: float | None) -> float:
        """Accuracy, times ``(latency / cap) ** latency_exponent`` with a cap (MnasNet's soft latency term)."""
        if self.latency_cap is None or latency is None:
            return accuracy
        return accuracy * (latency / self.latency_cap) ** self.latency_exponent


def _check_arguments(batch_size: int, learning_rate: float, min_std: float, pretrain_samples: int,
                     max_free_steps: int) -> None:
    """A one-line error for an argument that cannot work."""
    if batch_size < 2:
        raise UsageError(f"NASES(batch_size={batch_size}) must be at least 2: the baseline is the batch's mean reward")
    if not learning_rate > 0 or not min_std > 0:
        raise UsageError(f"NASES(learning_rate={learning_rate}, min_std={min_std}) must both be positive")
    if pretrain_samples < 2 or max_free_steps < 0:
        raise UsageError(f"NASES(pretrain_samples={pretrain_samples}) must be at least 2 (the controller starts at "
                         f"their embedding) and max_free_steps ({max_free_steps}) at least 0")
