"""NASIB: the budget rule, a search through NNI's NasExperiment and through ``run_search`` on a superkernel space,
each stopping in its budget, exploring then exploiting, and leaving its architecture and what it spent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from hmnas_nni import NASIB, Architecture
from hmnas_nni.nas.budget_plan import PlanInputs, exploit_phase, explore_next
from hmnas_nni.search.config import TINY_SPACE_ARGS, SearchConfig
from hmnas_nni.search.data import load_dataset, search_splits
from hmnas_nni.search.run import run_search
from hmnas_nni.spaces import build_space

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE, FLOOR_SECONDS = 0.05, 1.5


def inputs(**changes) -> PlanInputs:
    base = dict(left=100.0, budget=120.0, explored_seconds=0.0, explored_epochs=1, explore_epoch=2.0,
                exploit_epoch=10.0, max_candidates=8, epochs_left=1000)
    return PlanInputs(**{**base, **changes})


def test_rule_explores_up_to_one_epoch_per_candidate_within_its_share() -> None:
    assert explore_next(inputs())
    assert not explore_next(inputs(explored_epochs=8))  # every candidate had an epoch's worth
    assert not explore_next(inputs(explored_seconds=59.0))  # half the budget is the most it takes
    assert not explore_next(inputs(left=31.0))  # 3 exploitation epochs must still fit after it
    assert explore_next(inputs(left=32.0))


def test_rule_exploits_architecture_then_masks_then_settles() -> None:
    assert exploit_phase(inputs(left=100.0), 0) == "architecture"
    assert exploit_phase(inputs(left=25.0), 0) == "masking"  # two fit: no architecture-only epoch
    assert exploit_phase(inputs(left=50.0), 3) == "masking"
    assert exploit_phase(inputs(left=15.0), 3) == "settle"  # the last epoch that fits
    assert exploit_phase(inputs(left=15.0), 1, masked_epochs=0) == "masking"  # never settle masks that never learned
    assert exploit_phase(inputs(left=100.0, epochs_left=1), 3) == "settle"  # --epochs caps it too


def test_bad_knobs_are_refused() -> None:
    with pytest.raises(ValueError, match="explore_share"):
        NASIB(budget=60, explore_share=2)
    with pytest.raises(ValueError, match="duration"):
        NASIB(budget="soon")


def test_nasib_through_nas_experiment_stops_in_time(tmp_path, one_thread) -> None:
    warnings.filterwarnings("ignore")
    train, _, _ = load_dataset("digits")
    trn, val = search_splits(train, 256, 0)
    space = build_space("nb201-sk", channels=4, input_size=8)
    evaluator = Classification(train_dataloaders=DataLoader(trn, batch_size=32),
                               val_dataloaders=DataLoader(val, batch_size=32), max_epochs=10_000, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
    strategy = NASIB(budget="8s")
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path)
    started = time.perf_counter()
    experiment.run()
    trained = time.perf_counter() - started
    net = experiment.export_top_models(formatter="instance")[0]
    arch = experiment.export_top_models(formatter="dict")[0]
    experiment.stop()
    spent = strategy.budget_record()
    assert spent["stopped_by_budget"] and spent["budget_seconds"] == 8.0
    assert trained <= 8.0 * (1 + TOLERANCE) + FLOOR_SECONDS  # NASIB's clock starts with training here
    assert spent["nasib_phases"][0] == "explore" and spent["nasib_phases"][-1] != "explore"
    assert all(e["op"] in space.catalogue()[label].candidates for label, kept in arch.items() for e in kept)
    assert torch.isfinite(net(torch.randn(2, 1, 8, 8))).all()


def test_nasib_search_on_superkernel_space(tmp_path, one_thread) -> None:
    budget = 12.0
    config = SearchConfig(space="mobile-sk", dataset="digits", strategy="nasib", epochs=10_000, subset=256,
                          batch_size=32, space_args=TINY_SPACE_ARGS["mobile-sk"], out=str(tmp_path),
                          progress=False, budget="12s")
    started = time.perf_counter()
    final = run_search(config).final
    wall = time.perf_counter() - started
    assert wall <= budget * (1 + TOLERANCE) + FLOOR_SECONDS, wall
    assert final["stopped_by_budget"] and final["spent_seconds"] <= wall
    phases = final["nasib_phases"]
    assert phases[0] == "explore" and {"masking", "settle"} & set(phases)
    assert max(i for i, p in enumerate(phases) if p == "explore") < len(phases) - 1  # exploitation follows
    assert final["nasib_step_seconds"]["explore"] < final["nasib_step_seconds"]["exploit"]  # one path is cheaper
    assert abs(final["derivation_gap"]) < 1e-9  # HM-NAS's masked supernet is what is derived
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final"]["nasib_phases"] == phases and len(saved["history"]) == len(phases)
    assert Architecture.load(tmp_path / "arch.json").strategy == "nasib"


def test_nasib_without_budget_is_one_line(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "hmnas_nni.cli", "search", "--strategy", "nasib", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "pass --budget" in done.stderr, done.stderr


def test_budget_report_groups_flags_overruns_and_marks_the_best(tmp_path) -> None:
    from hmnas_nni.experiments.nasib_report import write_report

    def row(strategy, seed, spent, test):
        return {"strategy": strategy, "seed": seed, "status": "ok", "budget_seconds": 120.0, "spent_seconds": spent,
                "budget_epochs": 4, "derived_val_acc": 0.5, "derived_val_acc_bn": 0.6, "test_acc": test, "params": 10}

    for name, rows in (("a", [row("nasib", 0, 110.0, 0.8), row("nasib", 1, 114.0, 0.7)]),
                       ("b", [row("darts", 0, 130.0, 0.6)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"rows": rows}))
    table = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "plot.png")
    lines = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert "| 0,1 |" in lines["nasib"] and "**0.7500**" in lines["nasib"] and "-5.0%" in lines["nasib"]
    assert "+8.3% (over 5%)" in lines["darts"]
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"

    (tmp_path / "rerun").mkdir()  # a later folder's row of the same search replaces the earlier one
    (tmp_path / "rerun" / "results.json").write_text(json.dumps({"rows": [row("darts", 0, 100.0, 0.9)]}))
    table = write_report([tmp_path / "a", tmp_path / "b", tmp_path / "rerun"], tmp_path / "plot.png")
    lines = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert "| 0 |" in lines["darts"] and "**0.9000**" in lines["darts"] and "-16.7%" in lines["darts"]


def test_nasib_epoch_budget_plans_the_same_schedule_on_any_machine(tmp_path, one_thread) -> None:
    """Under ``6ep`` every epoch costs one: explore while three exploitation epochs still fit and exploration holds
    at most half the budget, then architecture, masking and settle, and stop after the sixth epoch."""
    config = SearchConfig(space="nb201-sk", dataset="digits", strategy="nasib", epochs=10_000, subset=128,
                          batch_size=32, space_args=TINY_SPACE_ARGS["nb201-sk"], out=str(tmp_path), progress=False,
                          budget="6ep")
    final = run_search(config).final
    assert final["nasib_phases"] == ["explore"] * 3 + ["architecture", "masking", "settle"]
    assert final["budget_kind"] == "epochs" and final["budget_epochs"] == 6 and final["stopped_by_budget"]
    assert abs(final["derivation_gap"]) < 1e-9
