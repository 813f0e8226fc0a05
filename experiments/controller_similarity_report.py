"""The record and the plot of ``hmnas controller-similarity``: per-run rows, per-strategy summary, one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hmnas_nni.format.figures import png_bytes, pyplot

FORMAT = "hmnas-controller-similarity/1"
#: (summary key prefix, row part, what it is): the trained controller on its own samples and on uniform ones, and an
#: untrained controller on its own samples.
PARTS = (("", "trained"), ("uniform_", "trained_uniform"), ("untrained_", "untrained"))
LEGEND = {"trained": "trained, own samples", "trained_uniform": "trained, uniform samples",
          "untrained": "untrained, own samples"}


def record(plan: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON document: what was measured and how, every run, and the summary per strategy."""
    return {"format": FORMAT, "command": plan["command"], "samples": plan["samples"], "seed": plan["seed"],
            "hidden_state": "the controller's state after reading all of an architecture's choices (NNI's default "
                            "ENAS actor: LSTM + fully connected layer), Euclidean distance",
            "edit_distance": "number of the space's simplified choices on which two architectures differ",
            "pairs": "every pair of distinct sampled architectures",
            "parts": {"trained": "the search's controller on architectures it samples",
                      "trained_uniform": "the search's controller on architectures drawn uniformly from the space",
                      "untrained": "an untrained controller of the same shape on architectures it samples"},
            "rows": rows, "summary": summarize(rows)}


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the defined values (std 0 for one value, None for none)."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None
    return float(np.mean(defined)), float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per strategy: the correlations (trained and untrained) and the controller's spread, over its runs."""
    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == name]
        entry: dict[str, Any] = {"runs": len(mine), "seeds": [r["seed"] for r in mine]}
        for prefix, part in PARTS:
            for key in ("pearson", "spearman", "entropy", "distinct"):
                entry[f"{prefix}{key}_mean"], entry[f"{prefix}{key}_std"] = _mean_std([r[part].get(key) for r in mine])
        summary[name] = entry
    return summary


def draw(rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> bytes:
    """Left: hidden-state distance against edit distance per strategy; right: the correlations, per run and mean."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(summary)}
    labelled: set[str] = set()  # one legend entry per strategy
    for row in rows:
        name = row["strategy"]
        _scatter(left, row, colors[name], shift=0.12 * (list(summary).index(name) - 0.5),
                 label=None if name in labelled else name)
        labelled.add(name)
    left.set_xlabel("edit distance (choices that differ)")
    left.set_ylabel("hidden-state distance")
    left.set_title("pairs of sampled architectures (dots: a sample of pairs; lines: means)")
    left.legend(fontsize=8)
    _bars(right, rows, summary, colors)
    return png_bytes(fig)


def _scatter(ax: Any, row: dict[str, Any], color: Any, shift: float, label: str | None) -> None:
    """One run's pairs as jittered dots and its mean hidden distance per edit distance as a line."""
    points = np.array(row["trained"]["points"] or [[0.0, 0.0]])
    jitter = np.random.default_rng(row["seed"]).uniform(-0.05, 0.05, len(points))
    ax.scatter(points[:, 0] + shift + jitter, points[:, 1], s=4, alpha=0.25, color=color)
    by_edit = row["trained"]["hidden_by_edit"]
    xs = sorted(int(e) for e in by_edit)
    ax.plot([x + shift for x in xs], [by_edit[str(x)]["mean"] for x in xs], color=color, lw=1.2, label=label)


def _bars(ax: Any, rows: list[dict[str, Any]], summary: dict[str, dict[str, Any]], colors: dict[str, Any]) -> None:
    """Pearson correlation per strategy and part (module's PARTS), with each run as a dot."""
    names = list(summary)
    width = 0.8 / len(PARTS)
    for i, name in enumerate(names):
        for j, (prefix, part) in enumerate(PARTS):
            x = i + width * (j - (len(PARTS) - 1) / 2)
            mean, std = summary[name][f"{prefix}pearson_mean"], summary[name][f"{prefix}pearson_std"]
            if mean is not None:
                ax.bar(x, mean, width=width * 0.9, yerr=std, color=colors[name], alpha=(1.0, 0.6, 0.25)[j],
                       capsize=3, label=f"{name}: {LEGEND[part]}")
            runs = [r[part]["pearson"] for r in rows if r["strategy"] == name and r[part]["pearson"] is not None]
            ax.scatter([x] * len(runs), runs, color="black", s=8, zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(-1, 1)
    ax.set_ylabel("Pearson correlation")
    ax.set_title("hidden-state vs edit distance (dots: runs)")
    ax.legend(fontsize=7, loc="lower right")
