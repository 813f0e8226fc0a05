"""AG-Net (Lukasik et al., "Learning Where To Look - Generative NAS is Surprisingly Efficient", 2022) as an NNI
multi-trial strategy over any NNI model space.

Each round the generator (a VAE over :class:`SpaceEncoding`, pre-trained on free random samples) and the surrogate
are retrained together on the architectures queried so far, weighted by rank (``w = 1 / (k N + rank)``), so the
prior of the latent space decodes to architectures like the best ones; many candidates are generated, the unseen
ones are scored by the surrogate, and its top ``queries_per_round`` are queried. ``objective="pareto"`` and
``latency_cap`` rank by accuracy and latency together (Pareto fronts, or accuracy under the cap). The method as
implemented and the choices the paper leaves open are in docs/agnet.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from hmnas_nni.common.encoding import Sample, SampleKey
from hmnas_nni.common.generator import ArchitectureVAE, pretrained_vae
from hmnas_nni.common.pareto import constrained_order, greedy_hypervolume, pareto_order, ranks_of
from hmnas_nni.common.surrogate import JointFit, Surrogate, feature_size, features, fit_jointly
from hmnas_nni.format.errors import UsageError

from .rounds import Pick, Query, RoundStrategy, seeded

__all__ = ["AGNet", "Query"]

_logger = logging.getLogger(__name__)


@dataclass
class _Round:
    """What one round trains on: vectors, objectives (accuracy, latency or None) and ranks of the usable queries."""

    x: np.ndarray
    accuracy: np.ndarray
    latency: np.ndarray | None
    ranks: np.ndarray
    targets: np.ndarray = field(init=False)
    scale: tuple[np.ndarray, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        columns = [self.accuracy] if self.latency is None else [self.accuracy, np.log(self.latency)]
        raw = np.stack(columns, axis=1)
        mean, std = raw.mean(axis=0), raw.std(axis=0) + 1e-8
        self.targets, self.scale = (raw - mean) / std, (mean, std)

    def unscale(self, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted accuracy and latency (None without latency) in the metrics' own units."""
        mean, std = self.scale
        raw = predicted * std + mean
        return raw[:, 0], (np.exp(raw[:, 1]) if self.latency is not None else None)


class AGNet(RoundStrategy):
    """AG-Net: a generator and a surrogate retrained each round on the rank-weighted queries (see the module doc).

    Parameters
    ----------
    initial_queries
        Random architectures queried before the first round.
    queries_per_round
        The surrogate's top-k among the generated candidates, queried each round.
    candidates_per_round
        Architectures generated each round (duplicates and queried ones are dropped before scoring).
    pretrain_samples
        Random samples the generator learns to reconstruct before the search (free: nothing is queried).
    latency_cap
        Latency limit (units of ``latency_metric``): architectures within it rank above every one over it.
    objective
        ``"accuracy"`` or ``"pareto"`` (maximise ``metric``, minimise ``latency_metric``).
    metric, latency_metric
        Keys of the metric dict each trial reports (``metric="default"`` also reads a plain number).
    max_queries
        The strategy's own query budget (None: the engine's budget alone).
    seed
        Seed of every random draw (samples, generation, training); None picks one and keeps it in the state dict.
    rank_weight_k
        ``k`` of the weights ``1 / (k N + rank)``: smaller focuses on the best few, larger spreads over all.
    latent, hidden, pretrain_epochs, members
        Latent size and width of the VAE, its pre-training epochs, surrogate ensemble size.
    fit
        Steps, learning rate and loss weights of each round's joint training (:class:`JointFit`).
    temperature
        Standard deviation of the latent prior the candidates are drawn from.
    random_fraction
        Share of each round's candidates drawn uniformly from the space instead of generated (exploration).
    local_fraction
        Share of the generated candidates decoded near queried architectures (latent Gaussians of queries drawn in
        proportion to their rank weights) instead of from the prior.
    exploration
        Multiple of the ensemble's standard deviation added to predicted accuracy (0: the mean alone).
    """

    def __init__(self, *, initial_queries: int = 16, queries_per_round: int = 16, candidates_per_round: int = 500,
                 pretrain_samples: int = 2000, latency_cap: float | None = None, objective: str = "accuracy",
                 metric: str = "default", latency_metric: str = "latency", max_queries: int | None = None,
                 seed: int | None = None, rank_weight_k: float = 1e-2, latent: int = 16, hidden: int = 64,
                 pretrain_epochs: int = 20, members: int = 3, fit: JointFit | None = None, temperature: float = 1.0,
                 random_fraction: float = 0.1, local_fraction: float = 0.0, exploration: float = 0.0) -> None:
        super().__init__(latency_cap=latency_cap, objective=objective, metric=metric, latency_metric=latency_metric,
                         max_queries=max_queries, seed=seed)
        _check_arguments(initial_queries, queries_per_round, candidates_per_round, pretrain_samples, rank_weight_k,
                         random_fraction, local_fraction)
        self.initial_queries, self.queries_per_round = initial_queries, queries_per_round
        self.candidates_per_round, self.pretrain_samples = candidates_per_round, pretrain_samples
        self.rank_weight_k, self.latent, self.hidden = rank_weight_k, latent, hidden
        self.pretrain_epochs, self.members, self.fit = pretrain_epochs, members, fit or JointFit()
        self.temperature, self.random_fraction, self.exploration = temperature, random_fraction, exploration
        self.local_fraction = local_fraction
        self._pretrained: dict[str, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (f"initial_queries={self.initial_queries}, queries_per_round={self.queries_per_round}, "
                f"candidates_per_round={self.candidates_per_round}, objective={self.objective!r}, "
                f"latency_cap={self.latency_cap}, seed={self.seed}")

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "pretrained": dict(self._pretrained) if self._pretrained is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._pretrained = state_dict.get("pretrained")

    # Rounds --------------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Pre-train the generator once (its weights are kept in the state dict)."""
        if self._pretrained is None:
            self._pretrained = self._pretrain()

    def ask(self, round_: int) -> list[Pick]:
        """Random picks at first (and while fewer than two queries have results), then the surrogate's top-k."""
        self.prepare()
        if round_ == 0 or len(self.trained(before=round_)) < 2:
            return self._random_picks(round_)
        return self._round_picks(round_)

    def _random_picks(self, round_: int) -> list[Pick]:
        """Unseen random samples: the initial queries, or a round while fewer than two queries have results."""
        rng = np.random.default_rng([self.seed, 0, round_])
        wanted = self.initial_queries if round_ == 0 else self.queries_per_round
        seen = self.seen(before=round_)
        return [(s, None) for s in self.unseen_random(rng, wanted, seen)]

    def _round_picks(self, round_: int) -> list[Pick]:
        """The round's top-k: retrain generator and surrogate on earlier rounds, generate, score, select."""
        data = self._round_data(round_)
        vae, surrogate = self._fit(data, round_)
        rng = np.random.default_rng([self.seed, 1, round_])
        candidates = self._candidates(vae, data, rng, self.seen(before=round_))
        if not candidates:
            return []
        x = torch.from_numpy(self.encoding.encode_many(candidates))
        with torch.no_grad():
            mean, std = surrogate.predict(features(vae, x, self.fit.reads))
        accuracy, latency = data.unscale(mean)
        optimistic = accuracy + self.exploration * std[:, 0] * data.scale[1][0]  # ranks; the mean is recorded
        order = self._select(data, optimistic, latency)
        picks = []
        for i in order[:self.queries_per_round]:
            predicted = {"accuracy": float(accuracy[i])}
            if latency is not None:
                predicted["latency"] = float(latency[i])
            picks.append((candidates[i], predicted))
        return picks

    def _round_data(self, round_: int) -> _Round:
        """The usable queries of the rounds before ``round_``, their objectives and their ranks."""
        queries = self.trained(before=round_)
        pairs = [self.objectives(q) for q in queries]
        accuracy = np.array([a for a, _ in pairs], dtype=np.float64)
        latency = np.array([lat for _, lat in pairs], dtype=np.float64) if self.uses_latency else None
        x = self.encoding.encode_many(q.sample for q in queries)
        return _Round(x, accuracy, latency, ranks_of(self._order(accuracy, latency)))

    def _fit(self, data: _Round, round_: int) -> tuple[ArchitectureVAE, Surrogate]:
        """Generator (from its pre-trained weights) and a new surrogate, trained together with rank weights."""
        with seeded(self.seed * 1000 + round_):
            vae = ArchitectureVAE(self.encoding, self.latent, self.hidden)
            vae.load_state_dict(self._pretrained)
            surrogate = Surrogate(feature_size(vae, self.fit.reads), data.targets.shape[1], members=self.members)
        fit_jointly(vae, surrogate, data.x, data.targets, self._weights(data), self.fit, seed=self.seed * 1000 + round_)
        return vae, surrogate

    def _weights(self, data: _Round) -> np.ndarray:
        """Rank weights ``1 / (k N + rank)`` of the round's queries (the weighted-retraining rule)."""
        return 1.0 / (self.rank_weight_k * len(data.ranks) + data.ranks)

    def _candidates(self, vae: ArchitectureVAE, data: _Round, rng: np.random.Generator,
                    seen: set[SampleKey]) -> list[Sample]:
        """Generated (from the prior, and near the weighted queries) and random candidates, unique and unseen
        (random ones top up what generation misses)."""
        n_random = int(round(self.random_fraction * self.candidates_per_round))
        n_near = int(round(self.local_fraction * (self.candidates_per_round - n_random)))
        generated = vae.generate(self.candidates_per_round - n_random - n_near, rng, self.temperature)
        if n_near:
            generated += vae.generate_near(data.x, self._weights(data), n_near, rng, self.temperature)
        found: dict[SampleKey, Sample] = {}
        for sample in generated:
            key = self.encoding.key(sample)
            if key not in seen and self.encoding.valid(sample):
                found.setdefault(key, sample)
        wanted = max(n_random, self.queries_per_round - len(found))
        for sample in self.unseen_random(rng, wanted, seen | set(found)):
            found.setdefault(self.encoding.key(sample), sample)
        return list(found.values())

    def _select(self, data: _Round, accuracy: np.ndarray, latency: np.ndarray | None) -> list[int]:
        """Candidate indices best first by predicted objectives (accuracy, capped accuracy, or hypervolume gain)."""
        if latency is None:
            return [int(i) for i in np.argsort(-accuracy, kind="stable")]
        if self.objective == "accuracy":
            return [int(i) for i in constrained_order(accuracy, latency, self.latency_cap)]
        cap = self.latency_cap if self.latency_cap is not None else math.inf
        feasible = data.latency <= cap
        known_acc, known_lat = data.accuracy[feasible], data.latency[feasible]
        reference = _reference(data.accuracy, data.latency, self.latency_cap)
        inside = np.flatnonzero(latency <= cap)
        picked = greedy_hypervolume(known_acc, known_lat, accuracy[inside], latency[inside], self.queries_per_round,
                                    reference)
        chosen = [int(inside[i]) for i in picked]
        rest = [int(i) for i in constrained_order(accuracy, latency, cap) if int(i) not in set(chosen)]
        return chosen + rest

    def _order(self, accuracy: np.ndarray, latency: np.ndarray | None) -> np.ndarray:
        """Indices of queried points best first under the objective (the ranks of the weighted retraining)."""
        if latency is None:
            return np.argsort(-accuracy, kind="stable")
        if self.objective == "accuracy":
            return constrained_order(accuracy, latency, self.latency_cap)
        cap = self.latency_cap if self.latency_cap is not None else math.inf
        inside, over = np.flatnonzero(latency <= cap), np.flatnonzero(latency > cap)
        return np.concatenate([inside[pareto_order(accuracy[inside], latency[inside])],
                               over[np.argsort(latency[over], kind="stable")]]).astype(np.int64)

    def _pretrain(self) -> dict[str, torch.Tensor]:
        """The generator's weights after reconstructing ``pretrain_samples`` random samples of the space."""
        vae, losses = pretrained_vae(self.encoding, samples=self.pretrain_samples, seed=self.seed, latent=self.latent,
                                     hidden=self.hidden, epochs=self.pretrain_epochs, kl_weight=self.fit.kl_weight)
        if losses:
            _logger.info("AGNet: generator pre-trained on %d random samples, loss %.3f -> %.3f", self.pretrain_samples,
                         losses[0], losses[-1])
        return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def _reference(accuracy: np.ndarray, latency: np.ndarray, cap: float | None) -> tuple[float, float]:
    """Hypervolume reference point: a little below the worst accuracy and beyond the slowest latency (or the cap)."""
    spread_acc = max(float(np.ptp(accuracy)), 1e-6)
    spread_lat = max(float(np.ptp(latency)), 1e-9)
    worst_lat = cap if cap is not None else float(latency.max()) + 0.1 * spread_lat
    return float(accuracy.min()) - 0.1 * spread_acc, worst_lat


def _check_arguments(initial_queries: int, queries_per_round: int, candidates_per_round: int, pretrain_samples: int,
                     rank_weight_k: float, random_fraction: float, local_fraction: float) -> None:
    """A one-line error for an argument that cannot work."""
    for name, value in (("initial_queries", initial_queries), ("queries_per_round", queries_per_round)):
        if value < 1:
            raise UsageError(f"AGNet({name}={value}) must be at least 1")
    if candidates_per_round < queries_per_round:
        raise UsageError(f"AGNet(candidates_per_round={candidates_per_round}) must be at least queries_per_round "
                         f"({queries_per_round}): the surrogate picks its top-k among the candidates")
    if pretrain_samples < 0:
        raise UsageError(f"AGNet(pretrain_samples={pretrain_samples}) must be >= 0")
    if not rank_weight_k > 0:
        raise UsageError(f"AGNet(rank_weight_k={rank_weight_k}) must be positive (weights 1 / (k N + rank))")
    for name, value in (("random_fraction", random_fraction), ("local_fraction", local_fraction)):
        if not 0 <= value <= 1:
            raise UsageError(f"AGNet({name}={value}) must lie in [0, 1]")
