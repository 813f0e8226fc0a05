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

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from nni.nas.execution import ExecutionEngine
from nni.nas.execution.event import FinalMetricEvent, ModelEventType, TrainingEndEvent
from nni.nas.space import ExecutableModelSpace, ModelStatus
from nni.nas.strategy import Strategy
from nni.nas.strategy.base import StrategyStatus

from hmnas_nni.common.encoding import Sample, SampleKey, SpaceEncoding
from hmnas_nni.common.generator import ArchitectureVAE, pretrain
from hmnas_nni.common.pareto import constrained_order, greedy_hypervolume, pareto_mask, pareto_order, ranks_of
from hmnas_nni.common.surrogate import JointFit, Surrogate, feature_size, features, fit_jointly
from hmnas_nni.format.errors import UsageError

_logger = logging.getLogger(__name__)

OBJECTIVES = ("accuracy", "pareto")
#: Random draws tried for one unseen sample before the space is taken as explored.
MAX_DRAWS = 2000


@dataclass
class Query:
    """One queried architecture: its sample, what the evaluator reported, the round and the surrogate's prediction."""

    sample: Sample
    round: int
    predicted: dict[str, float] | None = None  # None for random queries
    metrics: Any = None  # exactly what the trial reported (a dict or a number); None until it reports
    status: str = "running"  # then "trained" or "failed"

    def as_dict(self) -> dict[str, Any]:
        """The record as plain data (for state dicts and result files)."""
        return asdict(self)


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


class AGNet(Strategy):
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
        super().__init__()
        _check_arguments(initial_queries, queries_per_round, candidates_per_round, pretrain_samples, latency_cap,
                         objective, max_queries, rank_weight_k, random_fraction, local_fraction)
        self.initial_queries, self.queries_per_round = initial_queries, queries_per_round
        self.candidates_per_round, self.pretrain_samples = candidates_per_round, pretrain_samples
        self.latency_cap, self.objective = latency_cap, objective
        self.metric, self.latency_metric, self.max_queries = metric, latency_metric, max_queries
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self.rank_weight_k, self.latent, self.hidden = rank_weight_k, latent, hidden
        self.pretrain_epochs, self.members, self.fit = pretrain_epochs, members, fit or JointFit()
        self.temperature, self.random_fraction, self.exploration = temperature, random_fraction, exploration
        self.local_fraction = local_fraction
        self._history: list[Query] = []
        self._models: dict[int, ExecutableModelSpace] = {}  # history index -> model object (not in the state dict)
        self._running: dict[int, int] = {}  # id(model) -> history index
        self._pretrained: dict[str, torch.Tensor] | None = None
        self._encoding: SpaceEncoding | None = None

    def extra_repr(self) -> str:
        return (f"initial_queries={self.initial_queries}, queries_per_round={self.queries_per_round}, "
                f"candidates_per_round={self.candidates_per_round}, objective={self.objective!r}, "
                f"latency_cap={self.latency_cap}, seed={self.seed}")

    @property
    def uses_latency(self) -> bool:
        """Whether latency is an objective (Pareto) or a constraint (a cap)."""
        return self.objective == "pareto" or self.latency_cap is not None

    @property
    def history(self) -> list[Query]:
        """Every query in order: sample, reported metrics, round, predicted objectives, status."""
        return list(self._history)

    @property
    def encoding(self) -> SpaceEncoding:
        """The encoding of the model space being searched."""
        if self._encoding is None:
            raise RuntimeError("AGNet is not initialised with a model space yet")
        return self._encoding

    # NNI's hooks ---------------------------------------------------------------------------------------------------

    def _initialize(self, model_space: ExecutableModelSpace, engine: ExecutionEngine) -> ExecutableModelSpace:
        self._encoding = SpaceEncoding(model_space)
        engine.register_model_event_callback(ModelEventType.FinalMetric, self._on_final_metric)
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._on_training_end)
        return model_space

    def _cleanup(self) -> None:
        self.engine.unregister_model_event_callback(ModelEventType.FinalMetric, self._on_final_metric)
        self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._on_training_end)

    def _on_final_metric(self, event: FinalMetricEvent) -> None:
        """Keep the whole metric the trial reported (NNI keeps only ``metric['default']`` on the model)."""
        index = self._running.get(id(event.model))
        if index is not None:
            self._history[index].metrics = copy.deepcopy(event.metric)

    def _on_training_end(self, event: TrainingEndEvent) -> None:
        """Record how the trial ended."""
        index = self._running.pop(id(event.model), None)
        if index is not None:
            self._history[index].status = "trained" if event.status == ModelStatus.Trained else "failed"

    def state_dict(self) -> dict:
        return {"seed": self.seed, "history": [q.as_dict() for q in self._history],
                "pretrained": dict(self._pretrained) if self._pretrained is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = int(state_dict["seed"])
        self._history = [Query(**q) for q in state_dict["history"]]
        for q in self._history:
            if q.status == "running":  # stopped before it reported: queried again on resume
                _logger.warning("query %s never finished; it is dropped and may be queried again", q.sample)
        self._history = [q for q in self._history if q.status != "running"]
        self._pretrained = state_dict.get("pretrained")

    # The search ----------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        if self._pretrained is None:
            self._pretrained = self._pretrain()
        round_ = self._history[-1].round if self._history else 0
        while self._can_query():
            if round_ == 0 or len(self._trained(before=round_)) < 2:
                picks = self._random_picks(round_)
            else:
                picks = self._round_picks(round_)
            if not picks:
                _logger.info("AGNet: no unseen architecture is left to query; stopping")
                break
            self._submit(picks, round_)
            round_ += 1
        self.engine.wait_models()

    def _can_query(self) -> bool:
        """Whether the engine's budget and the strategy's own allow another query."""
        return self.engine.budget_available() and (self.max_queries is None or len(self._history) < self.max_queries)

    def _submit(self, picks: list[tuple[Sample, dict[str, float] | None]], round_: int) -> None:
        """Query the round's picks not queried yet, as long as the budget lasts, and wait for their results."""
        seen = {self.encoding.key(q.sample) for q in self._history}
        submitted: list[int] = []
        for sample, predicted in picks:
            if self.encoding.key(sample) in seen:
                continue  # queried before a resume: its result is in the history already
            if not (self._can_query() and self.wait_for_resource()):
                break
            model = self.model_space.freeze(sample)
            index = len(self._history)
            self._history.append(Query(dict(sample), round_, predicted))
            self._models[index], self._running[id(model)] = model, index
            submitted.append(index)
            self.engine.submit_models(model)
        self.engine.wait_models(*(self._models[i] for i in submitted))
        for index in submitted:
            self._check_report(self._history[index])

    def _check_report(self, query: Query) -> None:
        """A one-line error when a trial reports no value of a metric the strategy needs."""
        if query.status == "trained" and self._objectives(query) is None:
            keys = [self.metric] + ([self.latency_metric] if self.uses_latency else [])
            raise UsageError(f"a trial reported {query.metrics!r}, which lacks a positive number for one of {keys}; "
                             "report a dict with these keys, or pass AGNet(metric=..., latency_metric=...) naming its "
                             "keys")

    # Rounds --------------------------------------------------------------------------------------------------------

    def _random_picks(self, round_: int) -> list[tuple[Sample, None]]:
        """Unseen random samples: the initial queries, or a round while fewer than two queries have results."""
        rng = np.random.default_rng([self.seed, 0, round_])
        wanted = self.initial_queries if round_ == 0 else self.queries_per_round
        seen = self._seen(before=round_)
        return [(s, None) for s in self._unseen_random(rng, wanted, seen)]

    def _round_picks(self, round_: int) -> list[tuple[Sample, dict[str, float]]]:
        """The round's top-k: retrain generator and surrogate on earlier rounds, generate, score, select."""
        data = self._round_data(round_)
        vae, surrogate = self._fit(data, round_)
        rng = np.random.default_rng([self.seed, 1, round_])
        candidates = self._candidates(vae, data, rng, self._seen(before=round_))
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
        queries = self._trained(before=round_)
        pairs = [self._objectives(q) for q in queries]
        accuracy = np.array([a for a, _ in pairs], dtype=np.float64)
        latency = np.array([lat for _, lat in pairs], dtype=np.float64) if self.uses_latency else None
        x = self.encoding.encode_many(q.sample for q in queries)
        return _Round(x, accuracy, latency, ranks_of(self._order(accuracy, latency)))

    def _fit(self, data: _Round, round_: int) -> tuple[ArchitectureVAE, Surrogate]:
        """Generator (from its pre-trained weights) and a new surrogate, trained together with rank weights."""
        with _seeded(self.seed * 1000 + round_):
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
        for sample in self._unseen_random(rng, wanted, seen | set(found)):
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

    # Samples and records -------------------------------------------------------------------------------------------

    def _pretrain(self) -> dict[str, torch.Tensor]:
        """The generator's weights after reconstructing ``pretrain_samples`` random samples of the space."""
        with _seeded(self.seed):
            vae = ArchitectureVAE(self.encoding, self.latent, self.hidden)
        if self.pretrain_samples:
            samples = self.encoding.random_samples(self.pretrain_samples, np.random.default_rng([self.seed, 2]))
            losses = pretrain(vae, samples, epochs=self.pretrain_epochs, kl_weight=self.fit.kl_weight, seed=self.seed)
            _logger.info("AGNet: generator pre-trained on %d random samples, loss %.3f -> %.3f", len(samples),
                         losses[0], losses[-1])
        return {k: v.detach().clone() for k, v in vae.state_dict().items()}

    def _unseen_random(self, rng: np.random.Generator, n: int, seen: set[SampleKey]) -> list[Sample]:
        """Up to ``n`` distinct random samples not in ``seen`` (fewer when the space runs out)."""
        found: dict[SampleKey, Sample] = {}
        for _ in range(MAX_DRAWS):
            if len(found) >= n:
                break
            sample = self.encoding.random_sample(rng)
            key = self.encoding.key(sample)
            if key not in seen:
                found.setdefault(key, sample)
        return list(found.values())

    def _seen(self, before: int) -> set[SampleKey]:
        """Keys of the samples queried in the rounds before ``before``."""
        return {self.encoding.key(q.sample) for q in self._history if q.round < before}

    def _trained(self, before: int) -> list[Query]:
        """Queries of the rounds before ``before`` that reported every objective the strategy needs."""
        return [q for q in self._history if q.round < before and self._objectives(q) is not None]

    def _objectives(self, query: Query) -> tuple[float, float | None] | None:
        """(accuracy, latency or None) of a trained query, or None when it failed or lacks one of them."""
        if query.status != "trained":
            return None
        accuracy = _number(query.metrics, self.metric)
        latency = _number(query.metrics, self.latency_metric) if self.uses_latency else None
        if accuracy is None or (self.uses_latency and (latency is None or latency <= 0)):
            return None
        return accuracy, latency

    # Results -------------------------------------------------------------------------------------------------------

    def best(self) -> list[int]:
        """History indices of the result: the Pareto set (``pareto``), else the best under the cap or by accuracy,
        best first (more accurate first)."""
        usable = [(i, self._objectives(q)) for i, q in enumerate(self._history)]
        usable = [(i, o) for i, o in usable if o is not None]
        if self.latency_cap is not None:
            usable = [(i, o) for i, o in usable if o[1] <= self.latency_cap]
        if not usable:
            return []
        index = np.array([i for i, _ in usable])
        accuracy = np.array([o[0] for _, o in usable])
        if self.objective == "pareto":
            latency = np.array([o[1] for _, o in usable])
            keep = pareto_mask(accuracy, latency)
            index, accuracy = index[keep], accuracy[keep]
        return [int(index[i]) for i in np.argsort(-accuracy, kind="stable")]

    def list_models(self, sort: bool = True, limit: int | None = None) -> Iterator[ExecutableModelSpace]:
        """``sort=True``: the models of :meth:`best` (the Pareto set, the best under the cap, or by accuracy);
        ``sort=False``: every queried model in order. Queries made before a resume come back re-frozen."""
        if self._status in (StrategyStatus.INITIALIZED, StrategyStatus.EMPTY):
            raise RuntimeError("AGNet has not been run; call it with a model space and an engine first")
        indices = self.best() if sort else list(range(len(self._history)))
        for index in indices[:limit]:
            yield self._model(index)

    def _model(self, index: int) -> ExecutableModelSpace:
        """The model of one query: the engine's object, or (before a resume) the sample frozen again with its metric."""
        if index in self._models:
            return self._models[index]
        query = self._history[index]
        model = self.model_space.freeze(query.sample)
        if query.status == "trained":
            model.metrics.final = query.metrics
            model.status = ModelStatus.Trained
        else:
            model.status = ModelStatus.Failed
        self._models[index] = model
        return model


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Torch's global generator seeded inside the block and restored after it (weight initialisation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _number(metrics: Any, key: str) -> float | None:
    """The value of ``key`` in a reported metric (a plain number counts as ``default``), or None."""
    value = metrics.get(key) if isinstance(metrics, dict) else (metrics if key == "default" else None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _reference(accuracy: np.ndarray, latency: np.ndarray, cap: float | None) -> tuple[float, float]:
    """Hypervolume reference point: a little below the worst accuracy and beyond the slowest latency (or the cap)."""
    spread_acc = max(float(np.ptp(accuracy)), 1e-6)
    spread_lat = max(float(np.ptp(latency)), 1e-9)
    worst_lat = cap if cap is not None else float(latency.max()) + 0.1 * spread_lat
    return float(accuracy.min()) - 0.1 * spread_acc, worst_lat


def _check_arguments(initial_queries: int, queries_per_round: int, candidates_per_round: int, pretrain_samples: int,
                     latency_cap: float | None, objective: str, max_queries: int | None, rank_weight_k: float,
                     random_fraction: float, local_fraction: float) -> None:
    """A one-line error for an argument that cannot work."""
    if objective not in OBJECTIVES:
        raise UsageError(f"AGNet(objective={objective!r}) is not known; use one of {list(OBJECTIVES)}")
    for name, value in (("initial_queries", initial_queries), ("queries_per_round", queries_per_round)):
        if value < 1:
            raise UsageError(f"AGNet({name}={value}) must be at least 1")
    if candidates_per_round < queries_per_round:
        raise UsageError(f"AGNet(candidates_per_round={candidates_per_round}) must be at least queries_per_round "
                         f"({queries_per_round}): the surrogate picks its top-k among the candidates")
    if pretrain_samples < 0 or (max_queries is not None and max_queries < 1):
        raise UsageError("AGNet(pretrain_samples=...) must be >= 0 and max_queries None or >= 1")
    if latency_cap is not None and not latency_cap > 0:
        raise UsageError(f"AGNet(latency_cap={latency_cap}) must be a positive latency, or None for no cap")
    if not rank_weight_k > 0:
        raise UsageError(f"AGNet(rank_weight_k={rank_weight_k}) must be positive (weights 1 / (k N + rank))")
    for name, value in (("random_fraction", random_fraction), ("local_fraction", local_fraction)):
        if not 0 <= value <= 1:
            raise UsageError(f"AGNet({name}={value}) must lie in [0, 1]")
