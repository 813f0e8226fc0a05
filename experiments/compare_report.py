"""The comparison's results: per-strategy summaries over seeds, HM-NAS/DARTS ratios, table, CSV and plots."""

from __future__ import annotations

import csv
import io
import math
import os
import platform
from pathlib import Path
from typing import Any

from hmnas_nni.format.files import atomic_path, write_atomic, write_json
from hmnas_nni.search.strategies import STRATEGIES as ALL_STRATEGIES

# Fields every completed row carries as finite numbers.
NUMERIC_FIELDS = (
    "epoch_seconds", "peak_memory_mb", "peak_memory_over_start_mb", "search_seconds",
    "supernet_val_acc", "derived_val_acc", "derivation_gap",
    "supernet_val_acc_bn", "derived_val_acc_bn", "derivation_gap_bn",
    "derived_val_acc_from_files", "ops_kept", "edges_kept", "params", "flops", "latency_ms",
)
RETRAIN_FIELDS = ("test_acc", "retrain_seconds")


def summarise(rows: list[dict[str, Any]], strategies: list[str]) -> dict[str, dict[str, Any]]:
    """Mean and spread (sample standard deviation) over seeds of every numeric field, per strategy."""
    out: dict[str, dict[str, Any]] = {}
    for s in strategies:
        mine = [r for r in rows if r["strategy"] == s]
        ok = [r for r in mine if r["status"] == "ok"]
        entry: dict[str, Any] = {"runs": len(mine), "ok": len(ok)}
        if not ok and mine:
            entry["reason"] = mine[0].get("reason", "")
        for key in NUMERIC_FIELDS + RETRAIN_FIELDS:
            values = [float(r[key]) for r in ok if key in r and _finite(r[key])]
            if values:
                mean = sum(values) / len(values)
                sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
                entry[key] = {"mean": mean, "std": sd, "n": len(values)}
        out[s] = entry
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """HM-NAS / DARTS ratios of seconds per epoch and peak memory, per seed and their mean."""
    out: dict[str, dict[str, float]] = {}
    for key in ("epoch_seconds", "peak_memory_mb", "peak_memory_over_start_mb"):
        per_seed = []
        for r in rows:
            if r["strategy"] == "hmnas" and r["status"] == "ok":
                d = [x for x in rows if x["strategy"] == "darts" and x["seed"] == r["seed"] and x["status"] == "ok"]
                if d and d[0][key] > 0:
                    per_seed.append(r[key] / d[0][key])
        if per_seed:
            out[key] = {"mean": sum(per_seed) / len(per_seed), "min": min(per_seed), "max": max(per_seed),
                        "n": len(per_seed)}
    return out


def ratio_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable HM-NAS/DARTS ratios against the project's targets (0.8x time, 1.0x memory per epoch)."""
    r = summary.get("hmnas_over_darts", {})
    lines = []
    for key, label, target in (("epoch_seconds", "time per epoch", 0.80), ("peak_memory_mb", "peak memory", 1.00),
                               ("peak_memory_over_start_mb", "peak memory above process start", None)):
        if key in r:
            v = r[key]
            tail = f" (target <= {target:.2f}x: {'met' if v['mean'] <= target else 'missed'})" if target else ""
            lines.append(f"HM-NAS/DARTS {label}: {v['mean']:.3f}x (seeds: {v['min']:.3f}..{v['max']:.3f}){tail}")
    if not lines:
        lines.append("HM-NAS/DARTS ratios: need an ok hmnas and darts row for the same seed")
    return lines


CSV_FIELDS = ("strategy", "seed", "status") + NUMERIC_FIELDS + RETRAIN_FIELDS + ("reason",)
TABLE = (("derived_val_acc", "derived acc (inherited)", 100, 2),
         ("derived_val_acc_bn", "derived acc (BN re-est.)", 100, 2),
         ("supernet_val_acc", "supernet acc", 100, 2), ("supernet_val_acc_bn", "supernet acc (BN re-est.)", 100, 2),
         ("derivation_gap", "gap (pts)", 100, 2), ("derivation_gap_bn", "gap BN (pts)", 100, 2),
         ("epoch_seconds", "s/epoch", 1, 1), ("peak_memory_mb", "peak MiB", 1, 0),
         ("params", "params (k)", 1e-3, 1), ("flops", "MFLOPs", 1e-6, 2), ("latency_ms", "ORT ms (b=1)", 1, 3),
         ("test_acc", "retrained test acc", 100, 2))


def markdown_table(summary: dict[str, Any], strategies: list[str]) -> str:
    """Mean ± standard deviation over seeds per strategy (accuracies and gaps in percentage points)."""
    cols = [c for c in TABLE if any(c[0] in summary[s] for s in strategies)]
    lines = ["| strategy | seeds | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for s in strategies:
        e = summary[s]
        if not e["ok"]:
            lines.append(f"| {s} | 0/{e['runs']} | " + " | ".join("–" for _ in cols) + " |")
            continue
        cells = []
        for key, _, scale, nd in cols:
            v = e.get(key)
            cells.append("–" if v is None else f"{v['mean'] * scale:.{nd}f} ± {v['std'] * scale:.{nd}f}")
        lines.append(f"| {s} | {e['ok']}/{e['runs']} | " + " | ".join(cells) + " |")
    notes = [f"- **{s}** did not run: {summary[s]['reason']}" for s in strategies if not summary[s]["ok"]
             and summary[s].get("reason")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_results(out: Path, plan: dict[str, Any], rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Write results.json, results.csv, table.md and the two plots; return the summary."""
    import torch

    summary = summarise(rows, plan["strategies"])
    summary["hmnas_over_darts"] = ratios(rows)
    doc = {"plan": plan, "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                         "cpus": os.cpu_count(), "machine": platform.machine(),
                                         "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
           "wall_seconds": seconds, "rows": rows, "summary": summary}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_atomic(out / "results.csv", buf.getvalue())
    head = (f"Budget `{plan['budget']}`: space `{plan['space']}` {plan['space_args']}, {plan['dataset']}, "
            f"{plan['epochs']} epochs, subset {plan['subset']}, batch {plan['batch_size']}, seeds {plan['seeds']}.\n"
            "Accuracies on the architecture (validation) half of the subset, in %; gaps in points; "
            "mean ± sample standard deviation over seeds.\n\n")
    write_atomic(out / "table.md", head + markdown_table(summary, plan["strategies"]) + "\n"
                 + "\n".join(ratio_lines(summary)) + "\n")
    plot_results(out, rows, plan["strategies"])
    write_json(out / "results.json", doc)
    return summary


def plot_results(out: Path, rows: list[dict[str, Any]], strategies: list[str]) -> None:
    """acc_vs_params.png and acc_vs_time.png: one point per seed, derived accuracy as extracted and after BN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    colors = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(ALL_STRATEGIES)}
    for name, key, xlabel, xscale in (("acc_vs_params.png", "params", "derived network parameters (k)", 1e-3),
                                      ("acc_vs_time.png", "search_seconds", "search wall time (s)", 1.0)):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for s in strategies:
            mine = [r for r in ok if r["strategy"] == s]
            if not mine:
                continue
            x = [r[key] * xscale for r in mine]
            ax.scatter(x, [100 * r["derived_val_acc"] for r in mine], color=colors[s], marker="o",
                       label=f"{s} (inherited)")
            ax.scatter(x, [100 * r["derived_val_acc_bn"] for r in mine], color=colors[s], marker="^",
                       facecolors="none", label=f"{s} (BN re-estimated)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("derived validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
