"""NASES as an NNI multi-trial strategy: end to end on NAS-Bench-Graph's real tables (records, latency cap, resume,
NasExperiment's export, its NNI tuner), on a LayerChoice/InputChoice space trained on digits, and its policy step."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from nni.nas.execution import SequentialExecutionEngine

from hmnas_nni.experiments.multitrial import nni_search_space
from hmnas_nni.experiments.table_search import run_table_search
from hmnas_nni.format.errors import UsageError
from hmnas_nni.spaces import nas_bench_graph as nbg
from hmnas_nni.strategy.nases import NASES, GaussianPolicy
from hmnas_nni.strategy.tuner import NASESTuner
from tests.test_agnet import _digits_search, export_from_experiment

warnings.filterwarnings("ignore")

QUERIES = 40
#: A small NASES for tests: a quick pre-training of the autoencoder, rounds of 8 actions.
SMALL = {"batch_size": 8, "pretrain_samples": 300, "pretrain_epochs": 10}


@pytest.fixture(scope="module")
def run(one_thread) -> tuple[NASES, list[dict]]:
    strategy = NASES(seed=0, **SMALL)
    return strategy, run_table_search(strategy, "cora", QUERIES, 0)


def test_records_are_what_the_evaluator_returned(run) -> None:
    strategy, records = run
    history = strategy.history
    assert len(history) == len(records) == QUERIES
    for query, record in zip(history, records):
        assert query.sample == record["sample"]
        entry = nbg.lookup("cora", query.sample)
        assert query.metrics == (entry.metrics() if entry is not None else None)
    assert len({strategy.encoding.key(q.sample) for q in history}) == QUERIES  # never queried twice
    rounds = [q.round for q in history]
    assert rounds == sorted(rounds) and len(set(rounds)) >= QUERIES // 8  # at most a batch of queries per round


def test_the_policy_moved_and_the_best_comes_first(run) -> None:
    strategy, records = run
    initial = strategy._initial_policy()
    assert not np.allclose(strategy._policy.mean, initial.mean)  # REINFORCE steps were taken
    models = list(strategy.list_models())
    assert models[0].metric == max(r["valid"] for r in records if r["valid"] is not None)


def test_resume_rebuilds_the_policy_and_continues_as_if_never_stopped(run, tmp_path: Path, one_thread) -> None:
    uninterrupted, _ = run
    first = NASES(seed=0, **SMALL)
    run_table_search(first, "cora", 20, 0)
    path = tmp_path / "state.ckpt"
    torch.save(first.state_dict(), path)

    resumed = NASES(seed=0, max_queries=QUERIES, **SMALL)
    engine = SequentialExecutionEngine(max_model_count=QUERIES, continue_on_failure=True)
    resumed.initialize(nbg.benchmark_space("cora"), engine)
    resumed.load_state_dict(torch.load(path))
    resumed.run()
    assert len(engine.list_models()) == QUERIES - 20
    assert [q.sample for q in resumed.history] == [q.sample for q in uninterrupted.history]
    assert np.allclose(resumed._policy.mean, uninterrupted._policy.mean)


def test_latency_cap_shapes_the_reward_and_bounds_the_result(one_thread) -> None:
    cap = float(np.quantile([e.latency for e in nbg.load_table("cora").values()], 0.3))
    strategy = NASES(seed=2, latency_cap=cap, **SMALL)
    records = run_table_search(strategy, "cora", 24, 2)
    feasible = [r for r in records if r["valid"] is not None and r["latency"] <= cap]
    models = list(strategy.list_models())
    assert len(models) == len(feasible) and all(nbg.lookup("cora", m.sample).latency <= cap for m in models)
    assert strategy._reward(0.8, 2 * cap) == pytest.approx(0.8 * 2 ** -0.07)


def test_nas_experiment_exports_the_best(tmp_path: Path, one_thread) -> None:
    strategy = NASES(seed=5, **SMALL)
    exported = export_from_experiment(strategy, 16, 1, tmp_path)
    assert len(strategy.history) == 16
    assert exported == [max((q for q in strategy.history if q.metrics), key=lambda q: q.metrics["valid"]).sample]


def test_the_tuner_proposes_what_the_strategy_would(one_thread) -> None:
    space = nbg.NasBenchGraphSpace("cora")
    tuner = NASESTuner(seed=0, **SMALL)
    tuner.update_search_space(nni_search_space(space))
    for parameter_id in range(12):
        sample = tuner.generate_parameters(parameter_id)
        entry = nbg.lookup("cora", sample)
        if entry is None:
            tuner.trial_end(parameter_id, success=False)
        else:
            tuner.receive_trial_result(parameter_id, sample, entry.metrics())
    history = tuner.history
    assert len({tuner.strategy.encoding.key(q.sample) for q in history}) == 12
    assert all(q.status in {"trained", "failed"} for q in history)


def test_any_nni_space_with_real_training(one_thread) -> None:
    strategy = NASES(seed=0, batch_size=4, pretrain_samples=200, pretrain_epochs=10)
    engine = _digits_search(strategy, "number", 8)
    assert len(strategy.history) == 8 == len({strategy.encoding.key(q.sample) for q in strategy.history})
    assert [q.metrics for q in strategy.history] == [m.metric for m in engine.list_models()]


def test_reinforce_moves_the_mean_towards_rewarded_actions() -> None:
    policy = GaussianPolicy(np.zeros(2), np.zeros(2), learning_rate=0.1, min_log_std=-1.0)
    actions = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert policy.reinforce(actions, np.array([1.0, 0.0, 1.0, 0.0]))
    assert policy.mean[0] > 0 and policy.mean[1] == 0
    assert not policy.reinforce(actions, np.ones(4))  # equal rewards: no step


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 1}, "batch_size=1"),
    ({"learning_rate": 0}, "learning_rate=0"),
    ({"pretrain_samples": 0}, "pretrain_samples=0"),
    ({"latency_cap": -1.0}, "latency_cap=-1.0"),
    ({"objective": "pareto"}, "objective"),
])
def test_bad_arguments_name_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises((UsageError, TypeError), match=message):
        NASES(**kwargs)
