"""NNI multi-trial strategies on NAS-Bench-Graph's tables: one seeded search of a fixed number of queries.

:func:`run_table_search` runs any NNI multi-trial strategy the way NNI's own benchmark tests do,
``strategy(BenchmarkModelSpace(space, evaluator), SequentialExecutionEngine(max_model_count=queries,
continue_on_failure=True))``, and records every query in order. Three things differ from a plain call:

- queries are counted here: the engine only logs submissions past its budget, so records stop at ``queries``;
- NNI's ``HPOTunerStrategy`` (``TPE``) sleeps 1 s after each submission to poll its workers. The sequential engine
  has finished a model when ``submit_models`` returns, so the poll waits for nothing: for the length of the search
  the ``time`` module that ``nni.nas.strategy.hpo`` sees is replaced by one whose ``sleep`` returns at once
  (:func:`no_poll_sleep`; process-wide while it lasts, so run one search per process at a time).
  ``Strategy.wait_for_resource`` and ``ExecutionEngine.wait_models`` only sleep while a worker is busy, which
  never happens with the sequential engine.
- torch runs on one thread during the search (:func:`one_torch_thread`).

:func:`nni_strategies` gives the baselines (seeded factories) and :func:`best_so_far` the curve a figure plots.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.execution.event import FinalMetricEvent, ModelEventType, TrainingEndEvent
from nni.nas.strategy import TPE, PolicyBasedRL, Random, RegularizedEvolution, Strategy
from nni.nas.strategy import hpo as nni_hpo

from hmnas_nni.format.errors import UsageError
from hmnas_nni.spaces.nas_bench_graph import architecture_key, benchmark_space, check_dataset

#: Regularized evolution for a 300-query budget: NNI's default population of 100 spends a third of the budget on
#: random samples; 50 (a sixth) with tournaments of 10 leaves 250 mutations. Measured over 300 queries on cora, citeseer
#: and photo (20 seeds each, judged on validation only), populations of 20-100 with tournaments of 5-25 ended within
#: noise of each other (mean validation regret 0.47-0.59 pt, standard error about 0.05 pt), all well ahead of random
#: search (0.94 pt); 50/10 reached the table's best most often (9 of 60 runs).
EVOLUTION_POPULATION = 50
EVOLUTION_SAMPLE = 10
#: Fields of a record besides the sample and its table key (None for a failed query: the all-skip architecture).
METRIC_FIELDS = ("valid", "test", "latency", "params")

StrategyFactory = Callable[[int], Strategy]


def nni_strategies() -> dict[str, StrategyFactory]:
    """NNI's multi-trial baselines by name, each a factory ``seed -> fresh strategy`` (a strategy runs once).

    ``Random``, ``RegularizedEvolution`` and ``TPE`` draw from their own seeded generators; ``PolicyBasedRL`` (PPO
    from tianshou) draws from torch's global generator, which :func:`run_table_search` seeds. ``TPE`` maximises:
    its tuner's default, minimise, would search for the worst architecture.
    """
    return {
        "random": lambda seed: Random(seed=seed),
        "evolution": lambda seed: RegularizedEvolution(population_size=EVOLUTION_POPULATION,
                                                       sample_size=EVOLUTION_SAMPLE, seed=seed),
        "tpe": lambda seed: TPE(optimize_mode="maximize", seed=seed),
        "rl": lambda seed: PolicyBasedRL(),
    }


def seed_everything(seed: int) -> None:
    """Seed the global generators NNI's strategies may draw from: random, numpy, torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def no_poll_sleep() -> Iterator[None]:
    """Within the block, ``HPOTunerStrategy``'s 1 s poll between submissions returns at once (see the module doc)."""
    saved = nni_hpo.time
    nni_hpo.time = SimpleNamespace(**{**vars(time), "sleep": lambda seconds: None})
    try:
        yield
    finally:
        nni_hpo.time = saved


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Within the block, torch runs on one thread: a strategy's networks (PolicyBasedRL's policy) are tiny, and on a
    busy machine torch's thread pool spin-waits (PolicyBasedRL's 20 queries took 13-20 s on 2 threads, 0.75 s on 1)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class QueryRecorder:
    """Records the first ``queries`` models an engine finishes, in order, with the metrics their trial reported."""

    def __init__(self, engine: SequentialExecutionEngine, queries: int) -> None:
        self.engine = engine
        self.queries = queries
        self.records: list[dict[str, Any]] = []
        self._reported: dict[int, dict[str, float]] = {}  # id(model) -> its final metric dict
        engine.register_model_event_callback(ModelEventType.FinalMetric, self.on_metric)
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self.on_end)

    def on_metric(self, event: FinalMetricEvent) -> None:
        """Keep the raw metric dict: the model itself keeps only its ``default``."""
        self._reported[id(event.model)] = event.metric

    def on_end(self, event: TrainingEndEvent) -> None:
        """One query done: record its sample, key and reported metrics (None when the trial failed)."""
        reported = self._reported.pop(id(event.model), None)
        if len(self.records) >= self.queries:
            return
        sample = dict(event.model.sample)
        record = {"sample": sample, "key": architecture_key(sample)}
        record.update({f: None if reported is None else reported[f] for f in METRIC_FIELDS})
        self.records.append(record)

    def detach(self) -> None:
        """Stop listening to the engine."""
        self.engine.unregister_model_event_callback(ModelEventType.FinalMetric, self.on_metric)
        self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self.on_end)


def _check_fresh(strategy: Strategy) -> None:
    """A one-line error unless ``strategy`` is an NNI strategy that has not been attached to a space yet."""
    if not isinstance(strategy, Strategy):
        raise UsageError(f"{strategy!r} is not an NNI multi-trial strategy (nni.nas.strategy.Strategy)")
    try:
        strategy.model_space  # noqa: B018  (raises while the strategy is fresh)
    except RuntimeError:
        return
    raise UsageError(f"{strategy!r} has already searched a space; build a fresh one per search, "
                     "e.g. nni_strategies()[name](seed)")


def run_table_search(strategy: Strategy, dataset: str, queries: int, seed: int) -> list[dict[str, Any]]:
    """Search NAS-Bench-Graph's ``dataset`` table with ``strategy`` for ``queries`` queries, seeded by ``seed``.

    Returns one record per query, in query order: ``sample`` (NNI's), ``key`` (the table key), ``valid``, ``test``,
    ``latency``, ``params`` (None for a failed query, the all-skip architecture). Fewer than ``queries`` records come
    back only when the strategy stops early (it ran out of new samples).
    """
    check_dataset(dataset)
    if not isinstance(queries, int) or queries < 1:
        raise UsageError(f"queries must be a positive integer, not {queries!r}")
    _check_fresh(strategy)
    seed_everything(seed)
    space = benchmark_space(dataset)
    engine = SequentialExecutionEngine(max_model_count=queries, continue_on_failure=True)
    recorder = QueryRecorder(engine, queries)
    try:
        with no_poll_sleep(), one_torch_thread():
            strategy(space, engine)
    finally:
        recorder.detach()
    return recorder.records


def best_so_far(records: list[dict[str, Any]]) -> list[float]:
    """After each query, the test performance of the best architecture by validation so far (NaN before the first
    successful query). A tie in validation keeps the earlier architecture: a search cannot tell them apart."""
    curve, best = [], None
    for record in records:
        if record["valid"] is not None and (best is None or record["valid"] > best["valid"]):
            best = record
        curve.append(math.nan if best is None else best["test"])
    return curve
