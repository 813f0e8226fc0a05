"""AG-Net beside NNI's strategies from the command line: the NAS-Bench-Graph benchmark (seconds) and a tiny search
with trained trials on digits; records match what the evaluator returned, fronts are non-dominated, resume reuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hmnas_nni.cli.main import main
from hmnas_nni.common.pareto import dominance
from hmnas_nni.spaces.nas_bench_graph import best_entry

BENCH = ["table-bench", "--datasets", "cora", "--strategies", "agnet,random", "--seeds", "2", "--queries", "24",
         "--workers", "1"]
TRIALS = ["multitrial", "--space", "nb201", "--space-args", '{"channels": 4}', "--dataset", "digits", "--subset", "256",
          "--epochs", "1", "--batch-size", "32", "--trials", "5", "--strategy", "agnet-pareto"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("table-bench") / "out"
    assert main([*BENCH, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multitrial") / "out"
    assert main([*TRIALS, "--out", str(out)]) == 0
    return out


def test_the_table_benchmark_records_every_run_and_writes_its_figures(bench: Path) -> None:
    doc = json.loads((bench / "results.json").read_text())
    assert len(doc["runs"]) == 4 and {r["strategy"] for r in doc["runs"]} == {"agnet", "random"}
    best_test = best_entry("cora", "test")[1].test
    for run in doc["runs"]:
        assert run["queries"] == 24 and len(run["curve"]) == 24
        assert all(v is None or 0 < v <= best_test + 1e-9 for v in run["curve"])
        assert all(0 <= hv <= 1 for hv in run["hypervolume"].values())
    listed = json.loads((bench / "manifest.json").read_text())["files"]
    assert {"results.json", "table.md", "curves.png", "hypervolume.png"} <= set(listed)
    assert "| agnet |" in (bench / "table.md").read_text()


def test_a_resumed_table_benchmark_reuses_the_runs_it_has(bench: Path) -> None:
    before = json.loads((bench / "results.json").read_text())["runs"]
    assert main([*BENCH, "--out", str(bench), "--resume"]) == 0
    after = json.loads((bench / "results.json").read_text())["runs"]
    assert after == before  # read back, not searched again (same seconds to the digit)


def test_trained_trials_are_recorded_as_reported_and_the_front_is_non_dominated(trials: Path) -> None:
    records = json.loads((trials / "trials.json").read_text())
    result = json.loads((trials / "result.json").read_text())
    assert len(records) == 5 and result["trials"] == 5
    for t in records:
        m = t["metrics"]
        assert set(m) == {"default", "accuracy", "latency", "params"} and m["default"] == m["accuracy"]
        assert 0 <= m["accuracy"] <= 1 and m["latency"] > 0 and m["params"] > 0 and not t["reused"]
    assert len({json.dumps(t["sample"], sort_keys=True) for t in records}) == 5  # no sample trained twice
    acc = np.array([t["metrics"]["accuracy"] for t in records])
    lat = np.array([t["metrics"]["latency"] for t in records])
    front = [records.index(t) for t in result["pareto"]]
    assert not dominance(acc, lat)[:, front].any()  # no trial dominates a member of the reported front
    assert result["best"]["metrics"]["accuracy"] == acc.max()
    assert (trials / "front.png").stat().st_size > 0


def test_a_resumed_multitrial_search_trains_nothing_twice(trials: Path) -> None:
    before = json.loads((trials / "trials.json").read_text())
    assert main([*TRIALS, "--out", str(trials), "--resume"]) == 0
    after = json.loads((trials / "trials.json").read_text())
    assert [t["sample"] for t in after] == [t["sample"] for t in before]
    assert all(t["reused"] for t in after) and [t["metrics"] for t in after] == [t["metrics"] for t in before]


MT_BENCH = ["multitrial-bench", "--space", "nb201", "--space-args", '{"channels": 4}', "--dataset", "digits",
            "--subset", "256", "--epochs", "1", "--batch-size", "32", "--trials", "2", "--strategies", "nases,random",
            "--seeds", "1"]


def test_the_trained_trial_benchmark_summarises_what_each_run_recorded(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([*MT_BENCH, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [(r["strategy"], r["seed"]) for r in doc["runs"]] == [("nases", 0), ("random", 0)]
    for run in doc["runs"]:
        recorded = json.loads((out / "runs" / f"{run['strategy']}-seed0" / "trials.json").read_text())
        assert run["trials"] == recorded and len(recorded) == 2
        best = doc["summary"][run["strategy"]]["best_mean"]
        assert best == list(np.maximum.accumulate([t["metrics"]["accuracy"] for t in recorded]))
        assert 0 <= doc["summary"][run["strategy"]]["hypervolume"][0] <= 1
    assert {"results.json", "table.md", "curves.png", "fronts.png"} <= set(
        json.loads((out / "manifest.json").read_text())["files"])
    assert main([*MT_BENCH, "--out", str(out), "--resume"]) == 0  # every run finished: read back, nothing trained
    assert json.loads((out / "results.json").read_text())["runs"] == doc["runs"]
    assert main([*MT_BENCH[:-4], "--strategies", "nases,hyperband", "--out", str(tmp_path / "bad")]) == 2
