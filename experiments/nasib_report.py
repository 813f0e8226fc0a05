"""The budget/accuracy table and plot of ``docs/nasib.md``, from ``hmnas compare --time-budget`` folders.

Rows are grouped by budget and strategy (several folders may hold one budget's strategies or seeds): time spent
against the budget, epochs run, derived accuracy with inherited weights (as extracted and after BatchNorm
re-estimation) and test accuracy after retraining.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic

#: Allowed overrun of a budget (the goal of issue 21).
OVERRUN = 0.05


def budget_rows(folders: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every finished row of the comparisons in ``folders`` that ran under a time budget; a later folder's row of
    the same search (budget, strategy, seed) replaces an earlier one, so a rerun can be listed after the original."""
    rows: dict[tuple[float, str, int], dict[str, Any]] = {}
    for folder in folders:
        doc = json.loads((Path(folder) / "results.json").read_text())
        for r in doc["rows"]:
            if r.get("status") == "ok" and r.get("budget_seconds"):
                rows[(float(r["budget_seconds"]), r["strategy"], r["seed"])] = r
    return list(rows.values())


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (budget, strategy): means over seeds, the largest overrun, and the seeds."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((float(r["budget_seconds"]), r["strategy"]), []).append(r)
    out = []
    for (budget, strategy), mine in sorted(groups.items()):
        spent = [float(r["spent_seconds"]) for r in mine]
        out.append({"budget_seconds": budget, "strategy": strategy, "seeds": sorted(r["seed"] for r in mine),
                    "spent_mean": _mean(spent), "overrun_max": max(spent) / budget - 1,
                    "epochs": _mean([r["budget_epochs"] for r in mine]),
                    "derived": _mean([r["derived_val_acc"] for r in mine]),
                    "derived_bn": _mean([r["derived_val_acc_bn"] for r in mine]),
                    "test": _mean([r["test_acc"] for r in mine if "test_acc" in r]),
                    "params": _mean([r["params"] for r in mine])})
    return out


def budget_table(entries: list[dict[str, Any]]) -> str:
    """Markdown table; the best retrained accuracy of each budget in bold, overruns past 5% flagged."""
    best = {}
    for e in entries:
        if not math.isnan(e["test"]):
            best[e["budget_seconds"]] = max(best.get(e["budget_seconds"], -1.0), e["test"])
    lines = ["| budget | strategy | seeds | spent (mean) | worst overrun | epochs | derived acc, inherited | "
             "after BN re-est. | retrained test acc | params |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        test = f"{e['test']:.4f}" if not math.isnan(e["test"]) else "-"
        if e["test"] == best.get(e["budget_seconds"]):
            test = f"**{test}**"
        over = f"{100 * e['overrun_max']:+.1f}%" + (" (over 5%)" if e["overrun_max"] > OVERRUN else "")
        lines.append(f"| {e['budget_seconds'] / 60:g} min | {e['strategy']} | {','.join(map(str, e['seeds']))} | "
                     f"{e['spent_mean']:.1f} s | {over} | {e['epochs']:.1f} | {e['derived']:.4f} | "
                     f"{e['derived_bn']:.4f} | {test} | {e['params']:.0f} |")
    return "\n".join(lines) + "\n"


def budget_plot(entries: list[dict[str, Any]]) -> bytes:
    """Retrained test accuracy and derived accuracy with inherited weights (as extracted) against the budget."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for strategy in sorted({e["strategy"] for e in entries}):
        mine = [e for e in entries if e["strategy"] == strategy]
        minutes = [e["budget_seconds"] / 60 for e in mine]
        axes[0].plot(minutes, [e["test"] for e in mine], "o-", label=strategy)
        axes[1].plot(minutes, [e["derived"] for e in mine], "o-", label=strategy)
    for ax, title in zip(axes, ("retrained test accuracy", "derived val. accuracy, inherited weights")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (minutes, CPU)")
        ax.set_title(title)
        ax.legend()
    return png_bytes(fig)


def write_report(folders: Iterable[str | Path], png: str | Path) -> str:
    """Write the plot to ``png``; return (and print) the markdown table."""
    entries = summary(budget_rows(folders))
    write_atomic(Path(png), budget_plot(entries))
    table = budget_table(entries)
    print(table)
    return table
