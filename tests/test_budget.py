"""``--budget``: durations are read or refused in one line, and a budgeted search stops in time, exports what it
has and records what it spent (real NNI strategies, Lightning and data, tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmnas_nni import Architecture
from hmnas_nni.format.budget import Budget, budget_seconds, parse_budget
from hmnas_nni.format.errors import UsageError
from hmnas_nni.search.config import TINY_SPACE_ARGS, SearchConfig
from hmnas_nni.search.run import run_search

ROOT = Path(__file__).resolve().parents[1]
#: Over-budget allowance: the goal's 5%, plus a floor for timer jitter on a loaded 2-core machine.
TOLERANCE, FLOOR_SECONDS = 0.05, 1.5


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("4m", 240), ("1.5h", 5400), ("30", 30), (12, 12),
                                               ("2 min", 120), ("1e2s", 100)])
def test_durations_are_read(text, seconds) -> None:
    assert budget_seconds(text) == seconds


@pytest.mark.parametrize("text", ["4x", "", "m", "-3m", "nan", "inf", "2s", True, "1h30"])
def test_bad_durations_are_refused(text) -> None:
    with pytest.raises(UsageError, match="duration"):
        budget_seconds(text)


@pytest.mark.parametrize(("text", "budget"), [("12ep", Budget(epochs=12)), ("1 epochs", Budget(epochs=1)),
                                              ("0.5gpuh", Budget(seconds=1800.0, gpu=True)),
                                              ("2gpu-h", Budget(seconds=7200.0, gpu=True)), ("4m", Budget(240.0))])
def test_budgets_in_epochs_and_gpu_hours_are_read(text, budget) -> None:
    assert parse_budget(text) == budget
    assert parse_budget(text).kind == ("epochs" if budget.epochs else "gpu-hours" if budget.gpu else "wall-clock")


@pytest.mark.parametrize(("text", "says"), [("2.5ep", "whole number of epochs"), ("0ep", "whole number of epochs"),
                                            ("0.001gpuh", "at least 5 s"), ("3 fortnights", "not a duration")])
def test_bad_epoch_and_gpu_budgets_are_refused(text, says) -> None:
    with pytest.raises(UsageError, match=says):
        parse_budget(text)


def test_a_duration_is_asked_where_epochs_cannot_serve() -> None:
    with pytest.raises(UsageError, match="counts epochs; this needs a duration"):
        budget_seconds("12ep")


def test_epoch_budget_stops_after_its_epochs_and_records_them(tmp_path, one_thread) -> None:
    config = SearchConfig(space="nb201", dataset="digits", strategy="hmnas", epochs=10_000, subset=128,
                          batch_size=32, space_args=TINY_SPACE_ARGS["nb201"], out=str(tmp_path), progress=False,
                          budget="3ep")
    final = run_search(config).final
    assert final["budget_kind"] == "epochs" and final["budget_allowed_epochs"] == 3
    assert final["budget_epochs"] == 3 and final["stopped_by_budget"] is True and "budget_seconds" not in final
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(saved["history"]) == 3 and saved["status"] == "finished"


@pytest.mark.parametrize("strategy", ["hmnas", "darts"])
def test_budgeted_search_stops_in_time_and_records_its_spend(tmp_path, one_thread, strategy) -> None:
    budget = 10.0
    config = SearchConfig(space="nb201", dataset="digits", strategy=strategy, epochs=10_000, subset=256,
                          batch_size=32, space_args=TINY_SPACE_ARGS["nb201"], out=str(tmp_path), progress=False,
                          budget=f"{budget:g}s")
    started = time.perf_counter()
    final = run_search(config).final
    wall = time.perf_counter() - started
    assert wall <= budget * (1 + TOLERANCE) + FLOOR_SECONDS, wall
    assert final["stopped_by_budget"] is True and final["budget_seconds"] == budget
    assert 0 < final["spent_seconds"] <= wall
    assert final["budget_steps"] >= 1 and 1 <= final["budget_epochs"] < 10_000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "finished" and saved["final"]["spent_seconds"] == final["spent_seconds"]
    assert saved["config"]["budget"] == "10s"
    assert len(saved["history"]) == final["budget_epochs"]  # the partial last epoch is derived and recorded too
    assert Architecture.load(tmp_path / "arch.json").strategy == strategy
    assert (tmp_path / "supernet.safetensors").stat().st_size > 0


def test_search_without_budget_records_no_spend(tmp_path, one_thread) -> None:
    final = run_search(SearchConfig(space="nb201", dataset="digits", epochs=1, subset=64, batch_size=32,
                                    space_args=TINY_SPACE_ARGS["nb201"], out=str(tmp_path), progress=False)).final
    assert "budget_seconds" not in final and "stopped_by_budget" not in final


@pytest.mark.parametrize(("args", "says"), [(["--budget", "4x"], "budget '4x' is not a duration"),
                                            (["--budget", "1s"], "at least 5 s"),
                                            (["--budget", "1m", "--distributed", "ddp"], "not supported"),
                                            (["--budget", "1gpuh", "--accelerator", "cpu"], "is in GPU-hours"),
                                            (["--budget", "2.5ep"], "whole number of epochs")])
def test_bad_budget_option_is_one_line(tmp_path, args, says) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "hmnas_nni.cli", "search", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert not out.exists()


def test_compare_passes_the_time_budget_to_every_search(tmp_path) -> None:
    from hmnas_nni.experiments.compare import ALL_STRATEGIES, NASIB_EPOCHS, make_plan, search_config

    assert "nasib" not in ALL_STRATEGIES  # compared by name only: it needs a time budget
    with pytest.raises(UsageError, match="pass --budget"):
        make_plan(budget="tiny", strategies="nasib,hmnas", out=str(tmp_path / "c"))
    plan = make_plan(budget="tiny", strategies="nasib,hmnas", time_budget="2m", epochs=4, out=str(tmp_path / "c"))
    nasib, hmnas = (search_config(plan, s, 0, tmp_path) for s in ("nasib", "hmnas"))
    assert nasib.budget == hmnas.budget == "2m"
    assert (nasib.epochs, hmnas.epochs) == (NASIB_EPOCHS, 4)  # NASIB plans its own epochs; the others' are given
