"""Sample efficiency on a real table: AG-Net against NNI's multi-trial strategies on NAS-Bench-Graph, many seeds.

Every (dataset, strategy, seed) is one :func:`~hmnas_nni.experiments.table_search.run_table_search` of ``queries``
queries, searched by validation performance. Per query it keeps the test performance of the best architecture by
validation so far (the sample-efficiency curve) and, at each budget, the hypervolume of the (performance, latency)
front the search found: the queried architectures that no other dominates in validation performance and latency,
measured with their test performance, as a fraction of the hypervolume of the whole table's test front (same
reference point: the table's worst test performance and slowest latency).

Runs go to a pool of worker processes; each finished run is written at once to ``OUT/runs/`` (a stopped
benchmark continues with ``resume=True``), and the summary, table and figures are committed together at the end.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from hmnas_nni.common.pareto import hypervolume, pareto_mask
from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.outputs import OutputFolder
from hmnas_nni.spaces.nas_bench_graph import DATASETS, best_entry, check_dataset, load_table

from .table_search import StrategyFactory, best_so_far, nni_strategies, run_table_search

BUDGETS = (10, 30, 100, 300)
#: The five datasets of the default benchmark: the citation graphs, a co-purchase graph and a co-authorship graph.
DEFAULT_DATASETS = ("cora", "citeseer", "pubmed", "photo", "cs")
NNI_BASELINES = ("random", "evolution", "tpe", "rl")


def strategies() -> dict[str, StrategyFactory]:
    """Every strategy the benchmark can run, by name: AG-Net (by accuracy, and Pareto), NASES and NNI's baselines."""
    from hmnas_nni.strategy.agnet import AGNet
    from hmnas_nni.strategy.nases import NASES

    return {"agnet": lambda seed: AGNet(seed=seed), "agnet-pareto": lambda seed: AGNet(seed=seed, objective="pareto"),
            "nases": lambda seed: NASES(seed=seed), **nni_strategies()}


@cache
def table_front(dataset: str) -> tuple[tuple[float, float], float]:
    """The hypervolume reference point of ``dataset`` (worst test performance, slowest latency) and the hypervolume of
    the whole table's test front against it."""
    entries = list(load_table(dataset).values())
    test = np.array([e.test for e in entries])
    latency = np.array([e.latency for e in entries])
    reference = (float(test.min()), float(latency.max()))
    return reference, hypervolume(test, latency, reference)


def found_hypervolume(records: list[dict[str, Any]], dataset: str) -> float:
    """Hypervolume (fraction of the table's) of the front ``records`` found by validation, measured on test."""
    done = [r for r in records if r["valid"] is not None]
    if not done:
        return 0.0
    valid, test, latency = (np.array([r[k] for r in done]) for k in ("valid", "test", "latency"))
    front = pareto_mask(valid, latency)
    reference, whole = table_front(dataset)
    return hypervolume(test[front], latency[front], reference) / whole


def one_run(job: tuple[str, str, int, int]) -> dict[str, Any]:
    """One seeded search (in a worker process): its best-so-far curve, hypervolume at each budget and seconds."""
    name, dataset, seed, queries = job
    # the all-skip architecture has no table entry: NNI logs each such failed query with a traceback, and the run
    # counts them itself (failed_queries)
    logging.getLogger("nni.nas.execution.sequential").setLevel(logging.CRITICAL)
    # NNI's strategies log every sample; the benchmark's log keeps one line per run
    logging.getLogger("nni.nas.strategy").setLevel(logging.WARNING)
    started = time.perf_counter()
    records = run_table_search(strategies()[name](seed), dataset, queries, seed)
    seconds = time.perf_counter() - started
    budgets = [b for b in BUDGETS if b <= queries]
    return {"strategy": name, "dataset": dataset, "seed": seed, "queries": len(records), "seconds": seconds,
            "curve": [None if math.isnan(v) else round(v, 6) for v in best_so_far(records)],
            "hypervolume": {str(b): found_hypervolume(records[:b], dataset) for b in budgets},
            "failed_queries": sum(r["valid"] is None for r in records)}


def check_plan(datasets: list[str], names: list[str], seeds: int, queries: int, workers: int) -> None:
    """One-line errors for a plan that cannot run, before any search starts."""
    for d in datasets:
        check_dataset(d)
    known = strategies()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown strategy {unknown}; choose from {sorted(known)}")
    for label, value in (("seeds", seeds), ("queries", queries), ("workers", workers)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{label} must be a positive integer, got {value!r}")


def run_benchmark(out: str | Path, datasets: list[str] | None = None, names: list[str] | None = None,
                  seeds: int = 30, queries: int = 300, workers: int = 2, force: bool = False, resume: bool = False,
                  command: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (dataset, strategy, seed), then write ``results.json``, ``table.md``, ``curves.png`` and
    ``hypervolume.png`` into ``out`` together; returns the summary."""
    datasets = list(datasets or DEFAULT_DATASETS)
    names = list(names or strategies())
    check_plan(datasets, names, seeds, queries, workers)
    plan = {"datasets": datasets, "strategies": names, "seeds": seeds, "queries": queries, "command": command}
    with OutputFolder(out, "table benchmark", force=force, resume=resume) as folder:
        folder.clear_previous(writes=("runs",))
        runs = _run_all(folder.path / "runs", plan, workers, log)
        summary = summarise(runs, plan)
        write_json(folder.staged("results.json"), {"plan": plan, "summary": summary, "runs": runs})
        write_atomic(folder.staged("table.md"), markdown(summary, plan))
        write_atomic(folder.staged("curves.png"), plot_curves(runs, plan))
        write_atomic(folder.staged("hypervolume.png"), plot_hypervolume(summary, plan))
        folder.commit("results.json")
    return summary


def _run_all(folder: Path, plan: dict[str, Any], workers: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every run of the plan: read back where ``folder`` already holds it, else searched in a worker pool, seed by
    seed (a stopped benchmark has whole seeds of every dataset and strategy)."""
    jobs = [(n, d, s, plan["queries"])
            for s in range(plan["seeds"]) for d in plan["datasets"] for n in plan["strategies"]]
    done = {job: run for job in jobs if (run := _saved(folder, job)) is not None}
    todo = [job for job in jobs if job not in done]
    log(f"table benchmark: {len(jobs)} runs ({len(done)} already done), {workers} worker(s) -> {folder.parent}")
    for k, run in enumerate(_pool_map(todo, workers), len(done) + 1):
        write_json(folder / _run_name((run["strategy"], run["dataset"], run["seed"], plan["queries"])), run)
        log(f"[{k}/{len(jobs)}] {run['strategy']} {run['dataset']} seed {run['seed']}: final test "
            f"{run['curve'][-1]:.4f}, hypervolume {max(run['hypervolume'].values(), default=0):.3f} "
            f"({run['seconds']:.1f} s)")
        done[(run["strategy"], run["dataset"], run["seed"], plan["queries"])] = run
    return [done[job] for job in jobs]


def _pool_map(jobs: list[tuple[str, str, int, int]], workers: int) -> Iterator[dict[str, Any]]:
    """Runs as they finish: in this process for one worker, else in spawned processes (NNI keeps global state)."""
    if workers == 1:
        yield from map(one_run, jobs)
        return
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=20) as pool:
        yield from pool.imap_unordered(one_run, jobs)


def _run_name(job: tuple[str, str, int, int]) -> str:
    name, dataset, seed, queries = job
    return f"{dataset}-{name}-seed{seed}-q{queries}.json"


def _saved(folder: Path, job: tuple[str, str, int, int]) -> dict[str, Any] | None:
    """A run an earlier, stopped benchmark finished (None if absent or unreadable)."""
    try:
        return json.loads((folder / _run_name(job)).read_text())
    except (OSError, ValueError):
        return None


def summarise(runs: list[dict[str, Any]], plan: dict[str, Any]) -> dict[str, Any]:
    """Per dataset and strategy: best-so-far test performance and regret, and hypervolume, at each budget (mean and
    standard deviation over seeds); and the queries each of the project's strategies needs to reach the best NNI
    baseline's final mean."""
    out: dict[str, Any] = {}
    budgets = [b for b in BUDGETS if b <= plan["queries"]]
    for dataset in plan["datasets"]:
        best_test = best_entry(dataset, "test")[1].test
        rows = {}
        for name in plan["strategies"]:
            mine = [r for r in runs if r["dataset"] == dataset and r["strategy"] == name]
            curves = np.array([[np.nan if v is None else v for v in r["curve"]] for r in mine], dtype=float)
            mean = np.nanmean(curves, axis=0)
            rows[name] = {
                "test": {str(b): [float(mean[b - 1]), float(np.nanstd(curves[:, b - 1]))] for b in budgets},
                "regret": {str(b): float(best_test - mean[b - 1]) for b in budgets},
                "hypervolume": {str(b): [float(np.mean([r["hypervolume"][str(b)] for r in mine])),
                                         float(np.std([r["hypervolume"][str(b)] for r in mine]))] for b in budgets},
                "seconds": float(np.mean([r["seconds"] for r in mine])), "mean_curve": mean.round(6).tolist()}
        out[dataset] = {"table_best_test": best_test, "strategies": rows, "reach": _reach(rows, plan)}
    return out


def _reach(rows: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """For each of the project's strategies (AG-Net, NASES): the first query from which its mean curve stays at or
    above the best NNI baseline's final mean (the test performance of the best by validation can drop as validation
    improves, so a first touch is not enough)."""
    baselines = [n for n in rows if n in NNI_BASELINES]
    if not baselines:
        return {}
    best = max(baselines, key=lambda n: rows[n]["mean_curve"][-1])
    target = rows[best]["mean_curve"][-1]
    reach = {"baseline": best, "baseline_final": target}
    for name in (n for n in rows if n not in NNI_BASELINES):
        curve = rows[name]["mean_curve"]
        below = [i for i, v in enumerate(curve) if v is None or not v >= target]
        reach[name] = None if below and below[-1] == len(curve) - 1 else (below[-1] + 2 if below else 1)
    return reach


def markdown(summary: dict[str, Any], plan: dict[str, Any]) -> str:
    """The tables the docs show: test performance (mean ± sd) and hypervolume at each budget, per dataset."""
    budgets = [str(b) for b in BUDGETS if b <= plan["queries"]]
    lines = [f"{plan['seeds']} seeds, {plan['queries']} queries; `{plan['command']}`", "", *overview(summary, plan)]
    for dataset, d in summary.items():
        lines += [f"### {dataset} (table's best test: {100 * d['table_best_test']:.2f}%)", "",
                  "| strategy | " + " | ".join(f"test @{b}" for b in budgets) + " | "
                  + " | ".join(f"HV @{b}" for b in budgets) + " | s/run |",
                  "|---|" + "---|" * (2 * len(budgets) + 1)]
        for name, row in d["strategies"].items():
            tests = " | ".join(f"{100 * row['test'][b][0]:.2f} ± {100 * row['test'][b][1]:.2f}" for b in budgets)
            hvs = " | ".join(f"{row['hypervolume'][b][0]:.3f}" for b in budgets)
            lines.append(f"| {name} | {tests} | {hvs} | {row['seconds']:.1f} |")
        reach = d["reach"]
        if reach:
            said = ", ".join(f"{n} at query {q}" if q else f"{n} not within {plan['queries']}"
                             for n, q in reach.items() if n not in ("baseline", "baseline_final"))
            lines += ["", f"Best NNI baseline: {reach['baseline']} ({100 * reach['baseline_final']:.2f}% after "
                          f"{plan['queries']} queries); reached by {said}.", ""]
    return "\n".join(lines) + "\n"


def overview(summary: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """Across datasets: each project strategy's final test performance and the query from which it stays above the
    best NNI baseline's final; and each strategy's hypervolume at each budget against the best NNI baseline's."""
    names = list(next(iter(summary.values()))["strategies"]) if summary else []
    ours = [n for n in names if n not in NNI_BASELINES]
    budgets = [str(b) for b in BUDGETS if b <= plan["queries"]]
    if not ours or not budgets or not any(n in NNI_BASELINES for n in names):
        return []
    final = budgets[-1]
    lines = ["| dataset | best NNI baseline (final test) | " + " | ".join(f"{n}: final, stays above from" for n in ours)
             + " |", "|---|---|" + "---|" * len(ours)]
    for dataset, d in summary.items():
        reach, rows = d["reach"], d["strategies"]
        cells = [f"{100 * rows[n]['test'][final][0]:.2f}%, " + (f"query {reach[n]}" if reach.get(n) else "never")
                 for n in ours]
        lines.append(f"| {dataset} | {reach['baseline']} {100 * reach['baseline_final']:.2f}% | "
                     + " | ".join(cells) + " |")
    lines += ["", "| dataset | strategy | " + " | ".join(f"HV @{b} (best NNI)" for b in budgets) + " |",
              "|---|---|" + "---|" * len(budgets)]
    for dataset, d in summary.items():
        rows = d["strategies"]
        nni = {b: max(rows[n]["hypervolume"][b][0] for n in rows if n in NNI_BASELINES) for b in budgets}
        for name in ours:
            lines.append(f"| {dataset} | {name} | " + " | ".join(
                f"{rows[name]['hypervolume'][b][0]:.3f} ({nni[b]:.3f})" for b in budgets) + " |")
    return lines + [""]


def plot_curves(runs: list[dict[str, Any]], plan: dict[str, Any]) -> bytes:
    """Best-so-far test performance against queries, mean and one standard deviation, one panel per dataset."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(plan["datasets"]), figsize=(4.2 * len(plan["datasets"]), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], plan["datasets"]):
        for name in plan["strategies"]:
            curves = np.array([[np.nan if v is None else v for v in r["curve"]] for r in runs
                               if r["dataset"] == dataset and r["strategy"] == name], dtype=float)
            mean, sd = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
            x = np.arange(1, len(mean) + 1)
            ax.plot(x, 100 * mean, label=name, lw=1.4)
            ax.fill_between(x, 100 * (mean - sd), 100 * (mean + sd), alpha=0.12)
        ax.set_xscale("log")
        ax.set_xlim(10, plan["queries"])
        ax.set_title(dataset)
        ax.set_xlabel("queries")
        ax.set_ylabel("test performance of best by validation (%)")
        ax.set_ylim(*_ylim(runs, dataset))
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"NAS-Bench-Graph, {plan['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def _ylim(runs: list[dict[str, Any]], dataset: str) -> tuple[float, float]:
    """A y range that shows the curves from query 10 on (the first queries are far below)."""
    values = [v for r in runs if r["dataset"] == dataset for v in r["curve"][9:] if v is not None]
    low, high = 100 * min(values), 100 * best_entry(dataset, "test")[1].test
    return low - 0.1 * (high - low), high + 0.1 * (high - low)


def plot_hypervolume(summary: dict[str, Any], plan: dict[str, Any]) -> bytes:
    """Hypervolume of the found front (fraction of the table's) against the query budget, one panel per dataset."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(summary), figsize=(4.2 * len(summary), 3.6), squeeze=False)
    for ax, (dataset, d) in zip(axes[0], summary.items()):
        for name, row in d["strategies"].items():
            budgets = [int(b) for b in row["hypervolume"]]
            mean = np.array([row["hypervolume"][str(b)][0] for b in budgets])
            sd = np.array([row["hypervolume"][str(b)][1] for b in budgets])
            ax.errorbar(budgets, mean, yerr=sd, label=name, marker="o", ms=3, capsize=2, lw=1.2)
        ax.set_xscale("log")
        ax.set_title(dataset)
        ax.set_xlabel("queries")
        ax.set_ylabel("hypervolume (fraction of the table's)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"(test performance, latency) front found by validation, {plan['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


__all__ = ["BUDGETS", "DATASETS", "DEFAULT_DATASETS", "run_benchmark", "strategies", "summarise", "found_hypervolume"]
