"""Multi-trial strategies that query architectures in rounds and keep what every trial reported.

:class:`RoundStrategy` holds what AG-Net and NASES share: NNI's hooks (the whole metric dict of each trial, kept by
its own final-metric callback, since NNI keeps only ``metric['default']``), the query loop under the engine's budget
and the strategy's own, the record of every query, the results (by accuracy, the best under a latency cap, or the
Pareto set) and an ask/tell interface (:meth:`RoundStrategy.ask`, :meth:`~RoundStrategy.record`,
:meth:`~RoundStrategy.tell`) through which :class:`~hmnas_nni.strategy.tuner.RoundTuner` serves the same search to
``nnictl``. A subclass says only what each round queries (:meth:`RoundStrategy.ask`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from nni.nas.execution import ExecutionEngine
from nni.nas.execution.event import FinalMetricEvent, ModelEventType, TrainingEndEvent
from nni.nas.space import ExecutableModelSpace, ModelStatus
from nni.nas.strategy import Strategy
from nni.nas.strategy.base import StrategyStatus

from hmnas_nni.common.encoding import Sample, SampleKey, SpaceEncoding
from hmnas_nni.common.pareto import pareto_mask
from hmnas_nni.format.errors import UsageError

_logger = logging.getLogger(__name__)

OBJECTIVES = ("accuracy", "pareto")
#: Random draws tried for one unseen sample before the space is taken as explored.
MAX_DRAWS = 2000
#: One proposal of a round: the sample and what the strategy predicted for it (None: no prediction).
Pick = tuple[Sample, dict[str, float] | None]


@dataclass
class Query:
    """One queried architecture: its sample, what the evaluator reported, the round and the strategy's prediction."""

    sample: Sample
    round: int
    predicted: dict[str, float] | None = None  # None for random queries
    metrics: Any = None  # exactly what the trial reported (a dict or a number); None until it reports
    status: str = "running"  # then "trained" or "failed"

    def as_dict(self) -> dict[str, Any]:
        """The record as plain data (for state dicts and result files)."""
        return asdict(self)


class RoundStrategy(Strategy):
    """A multi-trial strategy that queries the picks of :meth:`ask` round by round and records every result.

    ``metric`` and ``latency_metric`` are keys of the metric dict each trial reports (``metric="default"`` also reads
    a plain number); ``latency_cap`` ranks architectures within it above every one over it; ``objective="pareto"``
    makes the result the Pareto set of (accuracy, latency); ``max_queries`` is the strategy's own budget beside the
    engine's; ``seed`` seeds every draw (None picks one and keeps it in the state dict).
    """

    def __init__(self, *, latency_cap: float | None = None, objective: str = "accuracy", metric: str = "default",
                 latency_metric: str = "latency", max_queries: int | None = None, seed: int | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if objective not in OBJECTIVES:
            raise UsageError(f"{name}(objective={objective!r}) is not known; use one of {list(OBJECTIVES)}")
        if latency_cap is not None and not latency_cap > 0:
            raise UsageError(f"{name}(latency_cap={latency_cap}) must be a positive latency, or None for no cap")
        if max_queries is not None and max_queries < 1:
            raise UsageError(f"{name}(max_queries={max_queries}) must be None or at least 1")
        self.latency_cap, self.objective = latency_cap, objective
        self.metric, self.latency_metric, self.max_queries = metric, latency_metric, max_queries
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self._history: list[Query] = []
        self._models: dict[int, ExecutableModelSpace] = {}  # history index -> model object (not in the state dict)
        self._running: dict[int, int] = {}  # id(model) -> history index
        self._encoding: SpaceEncoding | None = None

    @property
    def uses_latency(self) -> bool:
        """Whether latency is an objective (Pareto) or a constraint (a cap)."""
        return self.objective == "pareto" or self.latency_cap is not None

    @property
    def history(self) -> list[Query]:
        """Every query in order: sample, reported metrics, round, prediction, status."""
        return list(self._history)

    @property
    def encoding(self) -> SpaceEncoding:
        """The encoding of the model space being searched."""
        if self._encoding is None:
            raise RuntimeError(f"{type(self).__name__} is not initialised with a model space yet")
        return self._encoding

    # Ask and tell --------------------------------------------------------------------------------------------------

    def set_space(self, space: Any) -> None:
        """Search ``space`` (an NNI model space or a dict of mutables) outside an engine, through ask/tell."""
        self._encoding = SpaceEncoding(space)

    def prepare(self) -> None:
        """Work done once before the first round (a subclass's pre-training); resumed searches skip what is kept."""

    def ask(self, round_: int) -> list[Pick]:
        """The picks of round ``round_``, best first (the results of every earlier round are in); [] ends the search."""
        raise NotImplementedError

    def record(self, sample: Sample, round_: int, predicted: dict[str, float] | None = None) -> int:
        """Add a query about to be evaluated; returns its index in the history."""
        self._history.append(Query(dict(sample), round_, predicted))
        return len(self._history) - 1

    def tell(self, index: int, metrics: Any, trained: bool = True) -> None:
        """The result of query ``index``: the whole reported metric, or ``trained=False`` for a failed trial."""
        query = self._history[index]
        query.metrics = copy.deepcopy(metrics) if trained else None
        query.status = "trained" if trained else "failed"
        self._check_report(query)

    def next_round(self) -> int:
        """The round a search resumed from its history continues with (the last round may be unfinished)."""
        return self._history[-1].round if self._history else 0

    def budget_left(self) -> bool:
        """Whether the strategy's own budget allows another query."""
        return self.max_queries is None or len(self._history) < self.max_queries

    # NNI's hooks ---------------------------------------------------------------------------------------------------

    def _initialize(self, model_space: ExecutableModelSpace, engine: ExecutionEngine) -> ExecutableModelSpace:
        self.set_space(model_space)
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
        return {"seed": self.seed, "history": [q.as_dict() for q in self._history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = int(state_dict["seed"])
        history = [Query(**q) for q in state_dict["history"]]
        for q in history:
            if q.status == "running":  # stopped before it reported: queried again on resume
                _logger.warning("query %s never finished; it is dropped and may be queried again", q.sample)
        self._history = [q for q in history if q.status != "running"]

    # The search ----------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        self.prepare()
        round_ = self.next_round()
        while self._can_query():
            picks = self.ask(round_)
            if not picks:
                _logger.info("%s: no unseen architecture is left to query; stopping", type(self).__name__)
                break
            self._submit(picks, round_)
            round_ += 1
        self.engine.wait_models()

    def _can_query(self) -> bool:
        """Whether the engine's budget and the strategy's own allow another query."""
        return self.engine.budget_available() and self.budget_left()

    def _submit(self, picks: list[Pick], round_: int) -> None:
        """Query the round's picks not queried yet, as long as the budget lasts, and wait for their results."""
        seen = {self.encoding.key(q.sample) for q in self._history}
        submitted: list[int] = []
        for sample, predicted in picks:
            if self.encoding.key(sample) in seen:
                continue  # queried before a resume: its result is in the history already
            if not (self._can_query() and self.wait_for_resource()):
                break
            model = self.model_space.freeze(sample)
            index = self.record(sample, round_, predicted)
            seen.add(self.encoding.key(sample))
            self._models[index], self._running[id(model)] = model, index
            submitted.append(index)
            self.engine.submit_models(model)
        self.engine.wait_models(*(self._models[i] for i in submitted))
        for index in submitted:
            self._check_report(self._history[index])

    def _check_report(self, query: Query) -> None:
        """A one-line error when a trial reports no value of a metric the strategy needs."""
        if query.status == "trained" and self.objectives(query) is None:
            keys = [self.metric] + ([self.latency_metric] if self.uses_latency else [])
            raise UsageError(f"a trial reported {query.metrics!r}, which lacks a positive number for one of {keys}; "
                             f"report a dict with these keys, or pass {type(self).__name__}(metric=..., "
                             "latency_metric=...) naming its keys")

    # Samples and records -------------------------------------------------------------------------------------------

    def unseen_random(self, rng: np.random.Generator, n: int, seen: set[SampleKey]) -> list[Sample]:
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

    def seen(self, before: int) -> set[SampleKey]:
        """Keys of the samples queried in the rounds before ``before``."""
        return {self.encoding.key(q.sample) for q in self._history if q.round < before}

    def trained(self, before: int) -> list[Query]:
        """Queries of the rounds before ``before`` that reported every objective the strategy needs."""
        return [q for q in self._history if q.round < before and self.objectives(q) is not None]

    def objectives(self, query: Query) -> tuple[float, float | None] | None:
        """(accuracy, latency or None) of a trained query, or None when it failed or lacks one of them."""
        if query.status != "trained":
            return None
        accuracy = number(query.metrics, self.metric)
        latency = number(query.metrics, self.latency_metric) if self.uses_latency else None
        if accuracy is None or (self.uses_latency and (latency is None or latency <= 0)):
            return None
        return accuracy, latency

    # Results -------------------------------------------------------------------------------------------------------

    def best(self) -> list[int]:
        """History indices of the result: the Pareto set (``pareto``), else the best under the cap or by accuracy,
        best first (more accurate first)."""
        usable = [(i, self.objectives(q)) for i, q in enumerate(self._history)]
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
            raise RuntimeError(f"{type(self).__name__} has not been run; call it with a model space and an engine "
                               "first")
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
def seeded(seed: int) -> Iterator[None]:
    """Torch's global generator seeded inside the block and restored after it (weight initialisation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def number(metrics: Any, key: str) -> float | None:
    """The value of ``key`` in a reported metric (a plain number counts as ``default``), or None."""
    value = metrics.get(key) if isinstance(metrics, dict) else (metrics if key == "default" else None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
