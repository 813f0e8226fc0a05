"""NAS-Bench-Graph through NNI: the safe table reader, the model space, the table evaluator, and NNI's own
multi-trial strategies searching the real tables shipped by the ``nas-bench-graph`` package."""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.experiment import NasExperiment, NasExperimentConfig
from nni.nas.space import ModelStatus
from nni.nas.strategy import Random
from nni.nas.strategy import hpo as nni_hpo

from hmnas_nni.experiments.table_search import QueryRecorder, best_so_far, nni_strategies, run_table_search
from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.safe_pickle import PickleFileError, read_plain_pickle
from hmnas_nni.spaces import nas_bench_graph as nbg

ALL_SKIP = {"link": 8, "op1": "skip", "op2": "skip", "op3": "skip", "op4": "skip"}


@pytest.fixture(scope="module")
def raw_cora() -> dict:
    """Cora's table as the package ships it, field names and all."""
    return read_plain_pickle(nbg.table_path("cora"))


def one_line(error: pytest.ExceptionInfo) -> str:
    """The error's message, checked to be a single line."""
    message = str(error.value)
    assert "\n" not in message
    return message


# --- the safe reader --------------------------------------------------------------------------------------------

def test_reader_refuses_a_pickle_naming_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.bench"
    evil.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())  # protocol 0: os.system('touch ...')
    with pytest.raises(PickleFileError) as error:
        read_plain_pickle(evil)
    message = one_line(error)
    assert "os.system" in message and str(evil) in message
    assert not marker.exists()


def test_reader_refuses_numpy_arrays_and_object_dtypes(tmp_path: Path) -> None:
    for i, value in enumerate([np.arange(3), np.array([None], dtype=object)[0:1]]):
        path = tmp_path / f"{i}.pkl"
        path.write_bytes(pickle.dumps(value))
        with pytest.raises(PickleFileError, match="not plain data"):
            read_plain_pickle(path)


def test_reader_reads_plain_data_and_numpy_numbers(tmp_path: Path) -> None:
    data = {"a": [1, 2.5, (True, None)], 7: "x", "n": np.float64(1.25), "i": np.int32(-3), "b": np.bool_(True)}
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(data))
    read = read_plain_pickle(path)
    assert read == {"a": [1, 2.5, (True, None)], 7: "x", "n": 1.25, "i": -3, "b": True}
    assert type(read["n"]) is float and type(read["i"]) is int and type(read["b"]) is bool


def test_reader_reports_missing_truncated_and_corrupt_files(tmp_path: Path) -> None:
    good = pickle.dumps({"k": list(range(100))})
    cases = {"missing.pkl": None, "truncated.pkl": good[: len(good) // 2], "corrupt.pkl": b"\x80\x03garbage\xff\x00"}
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(PickleFileError) as error:
            read_plain_pickle(path, fix="copy it again")
        message = one_line(error)
        assert str(path) in message and message.endswith("copy it again")


# --- the table ------------------------------------------------------------------------------------------------

def test_a_truncated_or_foreign_table_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "cora.bench"
    truncated = nbg.table_path("cora").read_bytes()[:5000]
    monkeypatch.setattr(nbg, "table_path", lambda dataset: table)
    for content in (truncated, pickle.dumps({1: {"valid_perf": 0.5}})):
        table.write_bytes(content)
        with pytest.raises(UsageError) as error:
            nbg.load_table.__wrapped__("cora")  # the cached table stays as read
        message = one_line(error)
        assert str(table) in message and "pip install --force-reinstall nas-bench-graph==1.4.0" in message


def test_unknown_dataset_lists_the_nine() -> None:
    with pytest.raises(UsageError) as error:
        nbg.NasBenchGraphEvaluator("mnist")
    assert all(name in one_line(error) for name in nbg.DATASETS)


def test_tables_have_their_sizes_and_fields(raw_cora: dict) -> None:
    assert nbg.count_architectures("cora") == len(raw_cora) == 26206
    assert nbg.count_architectures("proteins") == 2021
    key, entry = nbg.best_entry("cora", "valid")
    assert entry.valid == max(row["valid_perf"] for row in raw_cora.values())
    assert raw_cora[key]["perf"] == entry.test
    assert nbg.best_entry("cora", "test")[1].test == max(row["perf"] for row in raw_cora.values())


# --- the space and the evaluator ------------------------------------------------------------------------------

@pytest.mark.parametrize(("dataset", "ops"), [("cora", 9), ("proteins", 5)])
def test_space_simplifies_to_link_and_four_ops(dataset: str, ops: int) -> None:
    choices = nbg.NasBenchGraphSpace(dataset).simplify()
    assert {label: len(choice) for label, choice in choices.items()} == {
        "link": 9, "op1": ops, "op2": ops, "op3": ops, "op4": ops}


@pytest.mark.parametrize(("dataset", "samples", "keys"), [("cora", 59049, 26207), ("proteins", 5625, 2022)])
def test_every_sample_maps_to_a_table_key_but_all_skip(dataset: str, samples: int, keys: int) -> None:
    table = nbg.load_table(dataset)
    found = {nbg.architecture_key(sample) for sample in nbg.all_samples(dataset)}
    assert len(nbg.all_samples(dataset)) == samples and len(found) == keys
    assert found - set(table) == {nbg.ALL_SKIP_KEY} and set(table) <= found
    assert nbg.architecture_key(ALL_SKIP) == nbg.ALL_SKIP_KEY


def test_frozen_space_holds_its_sample_and_returns_its_entry(raw_cora: dict) -> None:
    sample = {"link": 3, "op1": "gcn", "op2": "sage", "op3": "skip", "op4": "gat"}
    frozen = nbg.NasBenchGraphSpace("cora").freeze(sample)
    assert frozen.arch == sample
    assert frozen()["test"] == raw_cora[nbg.architecture_key(sample)]["perf"]
    assert nbg.NasBenchGraphSpace("cora").freeze(ALL_SKIP)() is None


def test_evaluator_reports_the_table_entry(raw_cora: dict) -> None:
    evaluator = nbg.NasBenchGraphEvaluator("cora")
    space = nbg.NasBenchGraphSpace("cora")
    rng = np.random.RandomState(0)
    for _ in range(5):
        sample: dict = {}
        space.random(memo=sample, random_state=rng)
        row = raw_cora[nbg.architecture_key(sample)]
        assert evaluator.evaluate(sample) == {"default": row["valid_perf"], "valid": row["valid_perf"],
                                              "test": row["perf"], "latency": row["latency"], "params": row["para"]}


def test_all_skip_is_a_failed_trial_not_a_crash() -> None:
    space = nbg.benchmark_space("cora")
    engine = SequentialExecutionEngine(max_model_count=2, continue_on_failure=True)
    recorder = QueryRecorder(engine, 2)
    models = [space.freeze(ALL_SKIP), space.freeze({**ALL_SKIP, "op4": "gcn"})]
    engine.submit_models(*models)
    assert [m.status for m in models] == [ModelStatus.Failed, ModelStatus.Trained]
    assert recorder.records[0]["key"] == nbg.ALL_SKIP_KEY and recorder.records[0]["valid"] is None
    assert recorder.records[1]["valid"] == models[1].metric


def test_bad_samples_name_the_fix() -> None:
    with pytest.raises(UsageError, match="0..8"):
        nbg.architecture_key({**ALL_SKIP, "link": 9})
    with pytest.raises(UsageError, match="lacks op4"):
        nbg.architecture_key({"link": 1, "op1": "gcn", "op2": "gcn", "op3": "gcn"})


def test_nas_experiment_accepts_the_space(tmp_path: Path) -> None:
    config = NasExperimentConfig("sequential", "raw")
    config.execution_engine.max_model_count = 4
    config.experiment_working_directory = str(tmp_path)
    experiment = NasExperiment(nbg.NasBenchGraphSpace("cora"), nbg.NasBenchGraphEvaluator("cora"), Random(seed=0),
                               config)
    try:
        experiment.run()
        models = list(experiment.strategy.list_models())
    finally:
        experiment.stop()
    assert len(models) == 4
    assert all(m.metric == nbg.lookup("cora", m.sample).valid for m in models)


# --- NNI's strategies on the table ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["random", "evolution", "tpe", "rl"])
def test_nni_strategy_searches_the_table(name: str) -> None:
    table = nbg.load_table("citeseer")
    records = run_table_search(nni_strategies()[name](3), "citeseer", 20, seed=3)
    assert len(records) == 20
    for record in records:
        entry = table[record["key"]]
        assert record["key"] == nbg.architecture_key(record["sample"])
        assert (record["valid"], record["test"], record["latency"], record["params"]) == \
            (entry.valid, entry.test, entry.latency, entry.params)
    assert run_table_search(nni_strategies()[name](3), "citeseer", 20, seed=3) == records


def test_tpe_polls_without_sleeping_only_during_a_search() -> None:
    strategy = nni_strategies()["tpe"](0)
    receive, sleeps = strategy.tuner.receive_trial_result, []

    def spy(*args, **kwargs):
        sleeps.append(nni_hpo.time.sleep)  # the sleep TPE's poll loop calls after this submission
        return receive(*args, **kwargs)

    strategy.tuner.receive_trial_result = spy
    assert len(run_table_search(strategy, "cora", 3, seed=0)) == 3
    assert len(sleeps) == 3 and time.sleep not in sleeps
    assert nni_hpo.time is time


def test_a_strategy_searches_once_and_queries_are_positive() -> None:
    strategy = Random(seed=0)
    run_table_search(strategy, "cora", 2, seed=0)
    with pytest.raises(UsageError, match="build a fresh one"):
        run_table_search(strategy, "cora", 2, seed=0)
    with pytest.raises(UsageError, match="positive integer"):
        run_table_search(Random(seed=0), "cora", 0, seed=0)


def test_best_so_far_follows_validation_and_keeps_the_first_of_ties() -> None:
    records = [{"valid": None, "test": None}, {"valid": 0.5, "test": 0.4}, {"valid": 0.5, "test": 0.9},
               {"valid": 0.7, "test": 0.6}, {"valid": 0.6, "test": 1.0}]
    curve = best_so_far(records)
    assert math.isnan(curve[0]) and curve[1:] == [0.4, 0.4, 0.6, 0.6]
