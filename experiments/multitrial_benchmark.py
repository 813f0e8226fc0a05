"""Trained trials, side by side: several multi-trial strategies on one space, one data split and one trial budget,
over a few seeds.

Each (strategy, seed) is one :func:`~hmnas_nni.experiments.multitrial.run_multitrial` in ``OUT/runs/<strategy>-seed<k>``
(its own guarded folder: a stopped benchmark continues with ``resume=True``, each run where it stopped, trained trials
reused). Every run trains its trials with the same recipe and the same seed, so the strategies differ only in which
architectures they ask for. At the end ``results.json`` (per run: the best validation accuracy after each trial and
the hypervolume of its accuracy-latency front), ``table.md``, ``curves.png`` (best accuracy against trials, mean over
seeds) and ``fronts.png`` (every run's Pareto set) are committed together.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hmnas_nni.common.pareto import hypervolume, pareto_mask
from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.outputs import OutputFolder

from .multitrial import STRATEGY_NAMES, MultiTrialPlan, run_multitrial


def check_plan(plan: MultiTrialPlan, strategies: list[str], seeds: int) -> None:
    """One-line errors for a benchmark that cannot run, before any trial trains."""
    unknown = [s for s in strategies if s not in STRATEGY_NAMES]
    if unknown or not strategies:
        raise UsageError(f"unknown strategies {unknown or strategies}; choose from {list(STRATEGY_NAMES)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"seeds must be a positive integer, got {seeds!r}")
    plan.check()


def run_multitrial_benchmark(plan: MultiTrialPlan, out: str | Path, strategies: list[str], seeds: int = 3,
                             force: bool = False, resume: bool = False, command: str = "",
                             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (strategy, seed) of ``plan`` (its strategy and seed are replaced); returns the summary."""
    check_plan(plan, strategies, seeds)
    with OutputFolder(out, "hmnas multitrial-bench", force=force, resume=resume) as folder:
        folder.clear_previous(writes=("runs",))
        runs = []
        for seed in range(seeds):
            for name in strategies:
                run_plan = dataclasses.replace(plan, strategy=name, seed=seed)
                path = folder.path / "runs" / f"{name}-seed{seed}"
                log(f"multitrial-bench: {name} seed {seed} -> {path}")
                if _finished(path, run_plan) is None:
                    run_multitrial(run_plan, path, resume=path.exists(), command=command, log=log)
                runs.append({"strategy": name, "seed": seed, "trials": _trials(path)})
        summary = summarise(runs, strategies)
        write_json(folder.staged("results.json"), {"plan": dataclasses.asdict(plan), "command": command,
                                                    "strategies": strategies, "seeds": seeds, "summary": summary,
                                                    "runs": runs})
        write_atomic(folder.staged("table.md"), markdown(summary, plan, command))
        write_atomic(folder.staged("curves.png"), plot_curves(runs, strategies, plan))
        write_atomic(folder.staged("fronts.png"), plot_fronts(runs, strategies, plan))
        folder.commit("results.json")
    return summary


def _finished(path: Path, plan: MultiTrialPlan) -> dict[str, Any] | None:
    """The result of a run an earlier benchmark finished with the same plan (None: run or resume it)."""
    try:
        result = json.loads((path / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("plan") == dataclasses.asdict(plan) else None


def _trials(path: Path) -> list[dict[str, Any]]:
    """The trials of one finished run, as it recorded them."""
    return json.loads((path / "trials.json").read_text())


def _objectives(trials: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([t["metrics"]["accuracy"] for t in trials]), np.array([t["metrics"]["latency"] for t in trials]))


def summarise(runs: list[dict[str, Any]], strategies: list[str]) -> dict[str, Any]:
    """Per strategy: best accuracy after each trial (mean, std over seeds), final best, front hypervolume (fraction of
    the hypervolume of every trial of every run, one reference point: the lowest accuracy and slowest latency)."""
    acc_all, lat_all = _objectives([t for r in runs for t in r["trials"]])
    reference = (float(acc_all.min()), float(lat_all.max()))
    whole = hypervolume(acc_all, lat_all, reference) or 1.0
    rows = {}
    for name in strategies:
        mine = [r for r in runs if r["strategy"] == name]
        curves = np.array([np.maximum.accumulate(_objectives(r["trials"])[0]) for r in mine])
        volumes = [hypervolume(*_objectives(r["trials"]), reference) / whole for r in mine]
        rows[name] = {"best_mean": curves.mean(axis=0).tolist(), "best_std": curves.std(axis=0).tolist(),
                      "final": [float(c[-1]) for c in curves], "hypervolume": volumes,
                      "front_sizes": [int(pareto_mask(*_objectives(r["trials"])).sum()) for r in mine]}
    return rows


def markdown(summary: dict[str, Any], plan: MultiTrialPlan, command: str) -> str:
    """The table of final best accuracy and front hypervolume, mean ± std over seeds, with the command."""
    lines = [f"{plan.space} {json.dumps(plan.space_args or {})} on {plan.dataset}: {plan.trials} trials of "
             f"{plan.subset} images x {plan.epochs} epochs; `{command}`", "",
             "| strategy | best validation accuracy (%) | front hypervolume | Pareto set |", "|---|---|---|---|"]
    for name, row in summary.items():
        final, volume = 100 * np.array(row["final"]), np.array(row["hypervolume"])
        lines.append(f"| {name} | {final.mean():.2f} ± {final.std():.2f} | {volume.mean():.3f} ± {volume.std():.3f} "
                     f"| {np.mean(row['front_sizes']):.1f} |")
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict[str, Any]], strategies: list[str], plan: MultiTrialPlan) -> bytes:
    """Best validation accuracy against trials, mean over seeds with their spread."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in strategies:
        curves = 100 * np.array([np.maximum.accumulate(_objectives(r["trials"])[0])
                                 for r in runs if r["strategy"] == name])
        x = np.arange(1, curves.shape[1] + 1)
        ax.plot(x, curves.mean(axis=0), label=name)
        ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), alpha=0.15)
    ax.set_xlabel("trained trials")
    ax.set_ylabel("best validation accuracy (%)")
    ax.set_title(f"{plan.space} on {plan.dataset} ({len(runs) // len(strategies)} seeds)", fontsize=9)
    ax.legend(fontsize=7)
    return png_bytes(fig)


def plot_fronts(runs: list[dict[str, Any]], strategies: list[str], plan: MultiTrialPlan) -> bytes:
    """Every run's Pareto set of (accuracy, latency), one colour per strategy."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(strategies):
        for j, run in enumerate(r for r in runs if r["strategy"] == name):
            acc, lat = _objectives(run["trials"])
            front = np.flatnonzero(pareto_mask(acc, lat))
            front = front[np.argsort(lat[front])]
            ax.step(lat[front], 100 * acc[front], where="post", color=colours[k % len(colours)], alpha=0.7,
                    marker="o", ms=3, lw=1, label=name if j == 0 else None)
    every = 100 * np.concatenate([_objectives(r["trials"])[0] for r in runs])
    ax.set_ylim(np.percentile(every, 10) - 2, every.max() + 1)  # trivial networks (chance level) would flatten it
    ax.set_xlabel("latency (ms, ONNX Runtime, batch 1)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Pareto sets found on {plan.space}, {plan.dataset} (y from the 10th percentile)", fontsize=9)
    ax.legend(fontsize=7)
    return png_bytes(fig)
