"""The NNI trial entry point: parameters, metrics, bad input, a plain search outside NNI, the experiment configs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hmnas_nni.cli.errors import EXIT_BAD_INPUT
from hmnas_nni.cli.main import build_parser
from hmnas_nni.cli.main import main as hmnas_main
from hmnas_nni.cli.options import given_values
from hmnas_nni.experiments import trial
from hmnas_nni.search.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
EPOCH = {"epoch": 3, "phase": "search", "supernet_val_acc": 0.8, "derived_val_acc": 0.75, "derivation_gap": 0.05,
         "ops_kept": 9, "edges_kept": 5, "sparsity": 0.4}


def test_metric_is_numeric_with_derived_accuracy_as_default() -> None:
    metric = trial.nni_metric(EPOCH)
    assert metric["default"] == 0.75
    assert metric["phase"] == trial.PHASES.index("search")
    assert {"supernet_val_acc", "derivation_gap", "ops_kept", "edges_kept", "sparsity", "epoch"} <= set(metric)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metric.values())
    assert "params" not in metric


def test_final_metric_adds_cost_and_size() -> None:
    final = trial.nni_metric({**EPOCH, "params": 12345, "epoch_seconds": 1.5, "peak_memory_mb": 300.0}, final=True)
    assert final["params"] == 12345 and final["epoch_seconds"] == 1.5 and final["default"] == 0.75


def test_nni_parameters_override_command_line_values(tmp_path: Path) -> None:
    config = trial.build_config({"epochs": 5, "tau": 0.004, "out": str(tmp_path / "cli")},
                                {"tau": 0.002, "warmup_epochs": 2.0, "space_args.channels": 4},
                                output_dir=str(tmp_path / "nni"))
    assert config.tau == 0.002 and config.epochs == 5
    assert config.warmup_epochs == 2 and isinstance(config.warmup_epochs, int)
    assert config.space_args["channels"] == 4
    assert config.out == str(tmp_path / "nni")


@pytest.mark.parametrize(("params", "needle"), [
    ({"no_such_knob": 1}, "no_such_knob"),
    ({"warmup_epochs": 1.5}, "warmup_epochs"),
    ({"tau": 0.0}, "tau"),
    ({"sparsity": -0.1}, "sparsit"),
])
def test_bad_parameters_raise_one_clear_error(params: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        trial.build_config({}, params)


BAD_ARGS = [
    (["--space", "no-such-space"], "no-such-space"),
    (["--dataset", "no-such-data"], "no-such-data"),
    (["--strategy", "no-such-strategy"], "no-such-strategy"),
    (["--tau", "0"], "tau"),
    (["--params", '{"sparsity": -1}'], "sparsit"),
    (["--epochs", "two"], "epochs"),
]


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's environment without NNI's trial variables (so the entry point runs as outside NNI)."""
    for key in [k for k in os.environ if k.startswith("NNI_")]:
        monkeypatch.delenv(key)
    return dict(os.environ)


@pytest.mark.parametrize(("args", "needle"), BAD_ARGS)
def test_bad_input_fails_before_writing_anything(args: list[str], needle: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    _clean_env(monkeypatch)
    out = tmp_path / "out"
    assert hmnas_main(["trial", "--out", str(out), *args]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], captured.err
    assert not out.exists()


@pytest.mark.parametrize(("args", "needle"), [BAD_ARGS[2], BAD_ARGS[3]])
def test_python_m_trial_exits_at_once_with_one_line(args: list[str], needle: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "hmnas_nni.cli", "trial", "--out", str(out), *args], cwd=tmp_path,
                         env=_clean_env(monkeypatch), capture_output=True, text=True, timeout=120)
    assert run.returncode == EXIT_BAD_INPUT, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists() and not list(tmp_path.rglob("arch*.json"))


def test_outside_nni_it_is_a_plain_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "search"
    run = subprocess.run([sys.executable, "-m", "hmnas_nni.cli", "trial", "--epochs", "2", "--subset", "128",
                          "--no-progress", "--out", str(out), "--params", '{"sparsity": 0.001}'], cwd=tmp_path,
                         env=_clean_env(monkeypatch), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    arch = json.loads((out / "arch.json").read_text())
    assert arch["strategy"] == "hmnas" and arch["space"] == "nb201"
    metrics = json.loads((out / "metrics.json").read_text())
    if "config" in metrics:  # run_search records the config it ran with
        assert metrics["config"]["sparsity"] == 0.001 and metrics["config"]["progress"] is False
    assert (out / "cells.png").is_file()
    assert run.stdout.count("| phase ") == 2 and f"architecture: {out / 'arch.json'}" in run.stdout


def _trial_config(yml: Path, params: dict) -> SearchConfig:
    """The SearchConfig a trial of ``yml`` would run with ``params`` (without running it)."""
    command = shlex.split(yaml.safe_load(yml.read_text())["trialCommand"])
    assert command[:4] == ["python3", "-m", "hmnas_nni.cli", "trial"], command
    args = build_parser().parse_args(command[3:])
    return trial.build_config(given_values(args), params)


def _corners(space: dict) -> list[dict]:
    """Every choice value and both ends of every range, one knob at a time."""
    out = []
    for key, spec in space.items():
        values = spec["_value"] if spec["_type"] == "choice" else spec["_value"][:2]
        out.extend({key: _first_of_nested(v)} for v in values)
    return out


def _first_of_nested(value):
    """A nested choice (``{"_name": ..., key: spec}``) as NNI's tuners give it, each inner spec at its first value."""
    if not isinstance(value, dict) or "_name" not in value:
        return value
    return {k: v["_value"][0] if isinstance(v, dict) and "_type" in v else v for k, v in value.items()}


@pytest.mark.parametrize("name", ["hmnas", "compare", "smoke", "nasib"])
def test_experiment_configs_are_valid_and_their_parameters_accepted(name: str) -> None:
    from nni.experiment.config import ExperimentConfig

    yml = EXPERIMENTS / f"{name}.yml"
    ExperimentConfig.load(str(yml)).validate()
    raw = yaml.safe_load(yml.read_text())
    space = raw.get("searchSpace") or json.loads((yml.parent / raw["searchSpaceFile"]).read_text())
    for params in _corners(space):
        _trial_config(yml, params)
    assert raw["experimentWorkingDirectory"].startswith("../"), "keep experiments inside the project"


def test_compare_covers_every_strategy() -> None:
    space = json.loads((EXPERIMENTS / "compare_search_space.json").read_text())
    assert set(space["strategy"]["_value"]) == {"hmnas", "darts", "gumbel-darts", "enas", "random-oneshot"}


def test_nasib_experiment_budgets_every_strategy_alike() -> None:
    """One budget for all; NNI's nested choices give NASIB an epoch cap out of its way and the others 4 epochs."""
    from nni.algorithms.hpo.gridsearch_tuner import GridSearchTuner

    yml = EXPERIMENTS / "nasib.yml"
    tuner = GridSearchTuner()
    tuner.update_search_space(json.loads((EXPERIMENTS / "nasib_search_space.json").read_text()))
    grid = [tuner.generate_parameters(i) for i in range(4)]  # what nnictl's GridSearch hands the four trials
    configs = {p["strategy"]["_name"]: _trial_config(yml, p) for p in grid}
    assert set(configs) == {"nasib", "hmnas", "darts", "random-oneshot"}
    for strategy, config in configs.items():
        assert (config.strategy, config.space, config.budget, config.dataset) == (strategy, "nb201-sk", "2m",
                                                                                   "fashion-mnist")
        assert config.epochs == (100_000 if strategy == "nasib" else 4)


def test_nested_nni_choices_become_plain_parameters() -> None:
    nested = {"strategy": {"_name": "nasib", "epochs": 9, "space_args.channels": 4}, "seed": 3}
    assert trial.flatten_nested(nested) == {"strategy": "nasib", "epochs": 9, "space_args.channels": 4, "seed": 3}


def test_python_api_example_exports_hmnas_and_darts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import dataclasses

    from hmnas_nni.experiments.api_example import EXAMPLE, run_example

    out = tmp_path / "api"
    run_example(dataclasses.replace(EXAMPLE, epochs=1, subset=128, out=str(out)))
    results = json.loads((out / "architectures.json").read_text())
    assert set(results) == {"hmnas", "darts"}
    for name, result in results.items():
        assert result["architecture"]["strategy"] == name and result["architecture"]["space"] == "nb201"
        assert result["nni_export"]
    stdout = capsys.readouterr().out
    assert "== hmnas: NNI export" in stdout and "== darts: NNI export" in stdout
