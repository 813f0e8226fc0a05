"""Auto-Meta's measurement: architectures searched for MAML against MAML's Conv-4 and against what an ordinary
(non-meta) search of the same space finds, all meta-trained and meta-tested the same way.

1. Searches (each a :func:`~hmnas_nni.experiments.multitrial.run_multitrial` in ``OUT/searches/``, resumable): every
   strategy of ``strategies`` with the MAML evaluator (trials rank by meta-validation accuracy), and ``ordinary``
   with the ``classify`` evaluator (ordinary training on the meta-train classes), same space, data, seed and
   trial budget.
2. Final evaluation (``OUT/final/<arch>-<k>shot.json``, one file each, reused on resume): Conv-4 and each search's
   best architecture, built afresh with the same seed, meta-trained with the same MAML settings (``final``) for
   each shot count, and meta-tested on ``test_episodes`` fixed episodes of every test pool (Fashion-MNIST's
   meta-test classes, digits) with 95% confidence intervals.
3. ``results.json``, ``table.md`` and ``accuracy.png`` are committed together.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmnas_nni.common.maml import MAMLSettings
from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.outputs import OutputFolder
from hmnas_nni.search.maml_evaluator import MAMLEvaluator
from hmnas_nni.search.meta_data import MetaPools
from hmnas_nni.spaces.meta_cells import MetaCellSpace, conv4_sample

from .multitrial import STRATEGY_NAMES, MultiTrialPlan, plan_inputs, run_multitrial


@dataclasses.dataclass
class FinalEvaluation:
    """How every compared architecture is meta-trained and meta-tested at the end."""

    shots: list[int] = dataclasses.field(default_factory=lambda: [1, 5])
    test_episodes: int = 600
    maml: MAMLSettings = dataclasses.field(default_factory=lambda: MAMLSettings(iterations=300))


def check_benchmark(plan: MultiTrialPlan, strategies: list[str], ordinary: str, final: FinalEvaluation) -> None:
    """One-line errors before any trial trains."""
    unknown = [s for s in [*strategies, ordinary] if s not in STRATEGY_NAMES]
    if unknown or not strategies:
        raise UsageError(f"unknown strategies {unknown or strategies}; choose from {list(STRATEGY_NAMES)}")
    if plan.space != "meta-cells" and not plan.space.endswith("MetaCellSpace"):
        raise UsageError(f"the comparison includes MAML's Conv-4, a point of the meta-cells space; --space "
                         f"{plan.space!r} does not hold it: use --space meta-cells")
    if not final.shots or any(not isinstance(k, int) or k < 1 for k in final.shots):
        raise UsageError(f"shots must be positive integers, got {final.shots!r}")
    if not isinstance(final.test_episodes, int) or final.test_episodes < 2:
        raise UsageError(f"the final meta-test needs at least 2 episodes per setting (600 is the field's standard), "
                         f"got {final.test_episodes!r}")
    final.maml.check()
    plan.check()


def run_autometa_benchmark(plan: MultiTrialPlan, out: str | Path, strategies: list[str], ordinary: str = "pnas",
                           final: FinalEvaluation | None = None, force: bool = False, resume: bool = False,
                           command: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Searches, then the final evaluation (module docstring); returns the summary written to ``results.json``."""
    final = final or FinalEvaluation()
    check_benchmark(plan, strategies, ordinary, final)
    with OutputFolder(out, "hmnas autometa-bench", force=force, resume=resume) as folder:
        folder.clear_previous(writes=("searches", "final"))
        searches = {f"{name}-maml": dataclasses.replace(plan, strategy=name, evaluator="maml") for name in strategies}
        searches[f"{ordinary}-ordinary"] = dataclasses.replace(plan, strategy=ordinary, evaluator="classify")
        found = {name: _search(p, folder.path / "searches" / name, command, log) for name, p in searches.items()}
        space, evaluator = plan_inputs(dataclasses.replace(plan, evaluator="maml"))
        archs = {"conv4": {"sample": conv4_sample(space), "search_seconds": 0.0}, **found}
        rows = []
        for name, arch in archs.items():
            for shots in final.shots:
                rows.append(_final(name, arch, shots, space, evaluator.pools, plan, final, folder.path / "final", log))
        shared = {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("strategy", "evaluator")}
        summary = {"plan": shared, "searches": {n: {"strategy": p.strategy, "evaluator": p.evaluator}
                                                for n, p in searches.items()},
                   "final": dataclasses.asdict(final), "command": command,
                   "strategies": strategies, "ordinary": ordinary, "architectures": archs, "rows": rows}
        write_json(folder.staged("results.json"), summary)
        write_atomic(folder.staged("table.md"), markdown(summary))
        write_atomic(folder.staged("accuracy.png"), plot_accuracy(rows))
        folder.commit("results.json")
    return summary


def _search(plan: MultiTrialPlan, path: Path, command: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The best architecture of one search (run, resumed or read back) and the search's training seconds."""
    log(f"autometa-bench: search {path.name} -> {path}")
    result = _read(path / "result.json")
    if result is None or result.get("plan") != dataclasses.asdict(plan):
        result = run_multitrial(plan, path, resume=path.exists(), command=command, log=log)
    trials = json.loads((path / "trials.json").read_text())
    return {"sample": result["best"]["sample"], "search_metrics": result["best"]["metrics"],
            "search_seconds": float(sum(t["train_seconds"] for t in trials)), "trials": len(trials)}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _final(name: str, arch: dict[str, Any], shots: int, space: MetaCellSpace, pools: MetaPools, plan: MultiTrialPlan,
           final: FinalEvaluation, folder: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Meta-train one architecture for one shot count and meta-test it (or read back an earlier run's result)."""
    path = folder / f"{name}-{shots}shot.json"
    spec = {"sample": arch["sample"], "shots": shots, "final": dataclasses.asdict(final), "seed": plan.seed,
            "few_shot": dataclasses.asdict(plan.few_shot)}
    done = _read(path)
    if done is not None and done.get("spec") == spec:
        return done["row"]
    few_shot = dataclasses.replace(plan.few_shot, shots=shots, test_episodes=final.test_episodes, maml=final.maml)
    torch.manual_seed(plan.seed)
    net = space.freeze(arch["sample"])
    started = time.perf_counter()
    metrics = MAMLEvaluator(plan.dataset, few_shot, plan.seed, pools=pools).measure(net)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"architecture": name, "shots": shots, "setting": few_shot.setting, **metrics,
           "final_seconds": time.perf_counter() - started, "search_seconds": arch["search_seconds"]}
    log(f"autometa-bench: {name} {few_shot.setting}: meta-test {100 * row['test_accuracy']:.2f} ± "
        f"{100 * row['test_ci95']:.2f}%, digits {100 * row.get('digits_accuracy', float('nan')):.2f}%")
    write_json(path, {"spec": spec, "row": row})
    return row


def markdown(summary: dict[str, Any]) -> str:
    """The comparison as a Markdown table, with the command that produced it."""
    pools = [k[:-len("_accuracy")] for k in summary["rows"][0] if k.endswith("_accuracy") and k != "test_accuracy"]
    episodes = summary["final"]["test_episodes"]
    head = ["architecture", "setting", f"Fashion-MNIST meta-test (%, {episodes} episodes)",
            *[f"{p} (%)" for p in pools], "meta-val (%)", "params", "search (s)"]
    lines = [f"`{summary['command']}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = [r["architecture"], r["setting"], _pm(r, "test"), *[_pm(r, p) for p in pools], _pm(r, "val"),
                 f"{r['params']:,}", f"{r['search_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Architectures:", ""]
    lines += [f"- {name}: `{json.dumps(a['sample'])}`" for name, a in summary["architectures"].items()]
    return "\n".join(lines) + "\n"


def _pm(row: dict[str, Any], pool: str) -> str:
    acc = row.get("accuracy" if pool == "val" else f"{pool}_accuracy")
    ci = row.get(f"{pool}_ci95")
    return "-" if acc is None else f"{100 * acc:.2f} ± {100 * ci:.2f}"


def plot_accuracy(rows: list[dict[str, Any]]) -> bytes:
    """Meta-test accuracy with its 95% interval, per architecture, setting and test pool."""
    plt = pyplot()
    settings = sorted({r["setting"] for r in rows})
    names = list(dict.fromkeys(r["architecture"] for r in rows))
    pools = ["test"] + [k[:-len("_accuracy")] for k in rows[0] if k.endswith("_accuracy") and k != "test_accuracy"]
    fig, axes = plt.subplots(1, len(pools), figsize=(5 * len(pools), 3.8), squeeze=False)
    width = 0.8 / len(names)
    for ax, pool in zip(axes[0], pools):
        for i, name in enumerate(names):
            mine = {r["setting"]: r for r in rows if r["architecture"] == name}
            acc = [100 * mine[s][f"{pool}_accuracy"] for s in settings]
            ci = [100 * mine[s][f"{pool}_ci95"] for s in settings]
            ax.bar(np.arange(len(settings)) + i * width, acc, width, yerr=ci, capsize=3, label=name)
        ax.set_xticks(np.arange(len(settings)) + 0.4 - width / 2, settings)
        ax.set_ylabel("meta-test accuracy (%)")
        ax.set_title("Fashion-MNIST meta-test classes" if pool == "test" else pool, fontsize=9)
        ax.set_ylim(bottom=max(0.0, min(100 * r[f"{pool}_accuracy"] for r in rows) - 10))
    axes[0][0].legend(fontsize=7)
    return png_bytes(fig)
