"""AGNet as an NNI multi-trial strategy: end to end on NAS-Bench-Graph's real tables (accuracy, latency cap, Pareto,
resume, NasExperiment's export) and on a LayerChoice/InputChoice space trained on scikit-learn's digits."""

from __future__ import annotations

import warnings
from pathlib import Path

import nni
import numpy as np
import pytest
import torch
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.experiment import NasExperiment
from nni.nas.experiment.config import NasExperimentConfig
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace, MutableLinear
from nni.nas.space import SimplifiedModelSpace
from nni.nas.strategy import Strategy
from sklearn.datasets import load_digits
from torch import nn

from hmnas_nni.common.pareto import pareto_mask
from hmnas_nni.common.surrogate import JointFit
from hmnas_nni.experiments.table_search import run_table_search
from hmnas_nni.format.errors import UsageError
from hmnas_nni.spaces import nas_bench_graph as nbg
from hmnas_nni.strategy.agnet import AGNet

warnings.filterwarnings("ignore")

QUERIES = 40
#: A small AG-Net for tests: 16 random queries, then 3 rounds of 8; a quick pre-training and short rounds.
SMALL = {"initial_queries": 16, "queries_per_round": 8, "candidates_per_round": 200, "pretrain_samples": 300,
         "pretrain_epochs": 10, "fit": JointFit(steps=50)}


def _search(dataset: str = "cora", seed: int = 0, **kwargs) -> tuple[AGNet, list[dict]]:
    strategy = AGNet(seed=seed, **{**SMALL, **kwargs})
    return strategy, run_table_search(strategy, dataset, QUERIES, seed)


@pytest.fixture(scope="module")
def accuracy_run(one_thread) -> tuple[AGNet, list[dict]]:
    return _search()


@pytest.fixture(scope="module")
def table_latency_cap() -> float:
    """A cap that 30% of cora's architectures meet."""
    return float(np.quantile([e.latency for e in nbg.load_table("cora").values()], 0.3))


def _keys(strategy: AGNet) -> list:
    return [strategy.encoding.key(q.sample) for q in strategy.history]


def test_records_are_what_the_evaluator_returned(accuracy_run) -> None:
    strategy, records = accuracy_run
    history = strategy.history
    assert len(history) == len(records) == QUERIES  # exactly the engine's budget
    for query, record in zip(history, records):
        assert query.sample == record["sample"]
        entry = nbg.lookup("cora", query.sample)
        assert query.metrics == (entry.metrics() if entry is not None else None)
        assert query.status == ("trained" if entry is not None else "failed")
    assert len(set(_keys(strategy))) == QUERIES  # no sample is queried twice
    assert [q.round for q in history] == [0] * 16 + [1] * 8 + [2] * 8 + [3] * 8
    assert all(q.predicted is None for q in history[:16])
    assert all(set(q.predicted) == {"accuracy"} for q in history[16:])


def test_best_model_first(accuracy_run) -> None:
    strategy, records = accuracy_run
    models = list(strategy.list_models())
    best = max(r["valid"] for r in records if r["valid"] is not None)
    assert models[0].metric == best and models[0].sample == max(
        (r for r in records if r["valid"] is not None), key=lambda r: r["valid"])["sample"]
    assert [m.metric for m in models] == sorted((m.metric for m in models), reverse=True)
    assert len(list(strategy.list_models(sort=False))) == QUERIES


def test_budget_and_no_duplicates_on_another_table(one_thread) -> None:
    strategy, records = _search("citeseer", seed=1)
    assert len(records) == len(strategy.history) == QUERIES
    assert len(set(_keys(strategy))) == QUERIES


def test_pareto_set_is_the_non_dominated_set(one_thread) -> None:
    strategy, records = _search(objective="pareto", seed=3)
    done = [r for r in records if r["valid"] is not None]
    acc, lat = np.array([r["valid"] for r in done]), np.array([r["latency"] for r in done])
    front = {strategy.encoding.key(r["sample"]) for r, keep in zip(done, pareto_mask(acc, lat)) if keep}
    models = list(strategy.list_models())
    assert {strategy.encoding.key(m.sample) for m in models} == front
    chosen = [(nbg.lookup("cora", m.sample).valid, nbg.lookup("cora", m.sample).latency) for m in models]
    for a, b in chosen:  # no architecture queried dominates a member of the set
        assert not any(x >= a and y <= b and (x > a or y < b) for x, y in zip(acc, lat))
    assert all(set(q.predicted) == {"accuracy", "latency"} for q in strategy.history[16:])


def test_latency_cap_is_respected(table_latency_cap, one_thread) -> None:
    strategy, records = _search(latency_cap=table_latency_cap, seed=4)
    feasible = [r for r in records if r["valid"] is not None and r["latency"] <= table_latency_cap]
    models = list(strategy.list_models())
    assert models and all(nbg.lookup("cora", m.sample).latency <= table_latency_cap for m in models)
    assert models[0].metric == max(r["valid"] for r in feasible)
    assert len(models) == len(feasible)


def test_resume_continues_without_querying_again(accuracy_run, tmp_path: Path, one_thread) -> None:
    uninterrupted, _ = accuracy_run
    first = AGNet(seed=0, **SMALL)
    run_table_search(first, "cora", 20, 0)  # stopped halfway through the first generated round
    path = tmp_path / "state.ckpt"
    torch.save(first.state_dict(), path)  # NNI's checkpoint serialiser: torch.save / torch.load

    resumed = AGNet(seed=0, max_queries=QUERIES, **SMALL)
    engine = SequentialExecutionEngine(max_model_count=QUERIES, continue_on_failure=True)
    resumed.initialize(nbg.benchmark_space("cora"), engine)
    resumed.load_state_dict(torch.load(path))
    resumed.run()
    before = {first.encoding.key(q.sample) for q in first.history}
    after = [resumed.encoding.key(m.sample) for m in engine.list_models()]
    assert len(after) == QUERIES - 20 and not before & set(after)  # only new architectures were queried
    assert [q.sample for q in resumed.history] == [q.sample for q in uninterrupted.history]  # as if never stopped
    assert [q.metrics for q in resumed.history] == [q.metrics for q in uninterrupted.history]
    assert next(resumed.list_models()).sample == next(uninterrupted.list_models()).sample


def export_from_experiment(strategy: Strategy, queries: int, top_k: int, tmp_path: Path) -> list[dict]:
    """``NasExperiment`` on cora's table with ``strategy`` for ``queries`` queries; what it exports as dicts."""
    config = NasExperimentConfig("sequential", "raw")
    config.execution_engine.max_model_count = queries
    config.execution_engine.continue_on_failure = True
    config.experiment_working_directory = str(tmp_path)
    experiment = NasExperiment(nbg.NasBenchGraphSpace("cora"), nbg.NasBenchGraphEvaluator("cora"), strategy, config)
    try:
        experiment.run()
        return experiment.export_top_models(top_k=top_k, formatter="dict")
    finally:
        experiment.stop()


def test_nas_experiment_exports_the_pareto_set(tmp_path: Path, one_thread) -> None:
    strategy = AGNet(seed=5, objective="pareto", **SMALL)
    exported = export_from_experiment(strategy, 24, 100, tmp_path)
    assert len(strategy.history) == 24
    assert exported == [strategy.history[i].sample for i in strategy.best()]
    assert exported[0] == max((q for q in strategy.history if q.metrics), key=lambda q: q.metrics["valid"]).sample


# --- A LayerChoice / InputChoice space trained on digits ------------------------------------------------------

class DigitsSpace(ModelSpace):
    """An MLP for 8x8 digits: hidden width, activation and which two of three features feed the head."""

    def __init__(self) -> None:
        super().__init__()
        width = nni.choice("width", [16, 32])
        self.fc = MutableLinear(64, width)
        self.act = LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}, label="act")
        self.mix = InputChoice(3, 2, reduction="sum", label="mix")
        self.head = MutableLinear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        return self.head(self.mix([h, h * h, torch.zeros_like(h)]))


def train_on_digits(model: nn.Module, report: str) -> None:
    """A few full-batch steps on 1,000 digits; reports validation accuracy (a number, or a dict with parameters)."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x[:1000]), y[:1000])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    accuracy = float((model(x[1000:]).argmax(1) == y[1000:]).float().mean())
    params = float(sum(p.numel() for p in model.parameters()))
    nni.report_final_result(accuracy if report == "number" else {"default": accuracy, "params": params})


def _digits_search(strategy: AGNet, report: str, queries: int) -> SequentialExecutionEngine:
    space = SimplifiedModelSpace.from_model(DigitsSpace(), FunctionalEvaluator(train_on_digits, report=report))
    engine = SequentialExecutionEngine(max_model_count=queries)
    strategy(space, engine)
    return engine


def test_any_nni_space_with_real_training(one_thread) -> None:
    strategy = AGNet(seed=0, initial_queries=4, queries_per_round=4, candidates_per_round=50, pretrain_samples=200,
                     pretrain_epochs=10, fit=JointFit(steps=50), latency_metric="params", objective="pareto")
    engine = _digits_search(strategy, "dict", 12)
    assert len(strategy.history) == 12 == len({strategy.encoding.key(q.sample) for q in strategy.history})
    assert [q.metrics["default"] for q in strategy.history] == [m.metric for m in engine.list_models()]
    front = list(strategy.list_models())
    acc = [q.metrics["default"] for q in strategy.history]
    params = [q.metrics["params"] for q in strategy.history]
    assert len(front) == int(pareto_mask(acc, params).sum())


def test_a_latency_objective_needs_a_latency_metric(one_thread) -> None:
    strategy = AGNet(seed=0, initial_queries=2, queries_per_round=2, candidates_per_round=10, pretrain_samples=0,
                     objective="pareto")
    with pytest.raises(UsageError, match=r"lacks a positive number for one of \['default', 'latency'\]"):
        _digits_search(strategy, "number", 4)


@pytest.mark.parametrize("kwargs,message", [
    ({"objective": "latency"}, "objective='latency'"),
    ({"queries_per_round": 0}, "queries_per_round=0"),
    ({"candidates_per_round": 4, "queries_per_round": 8}, "candidates_per_round=4"),
    ({"latency_cap": -1.0}, "latency_cap=-1.0"),
    ({"rank_weight_k": 0}, "rank_weight_k=0"),
])
def test_bad_arguments_name_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        AGNet(**kwargs)
