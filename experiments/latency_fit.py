"""How well a latency table predicts whole networks: random mask settings of a supernet, each derived network
timed whole and compared with ``base + sum of its candidates' costs``.

    python -m hmnas_nni.experiments.latency_fit --out runs/latency-fit [--networks 12] [--exporter torchscript]

prints and writes ``latency_fit.json`` (every network's predicted and measured milliseconds, Pearson and Spearman
correlations, absolute and relative errors, per space and over all) and ``latency_fit.png`` (the scatter).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from hmnas_nni.export.latency import Runtime, Timer, measure_table, random_scores, reads_input, traced_supernet
from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.latency_table import LatencyTable
from hmnas_nni.format.outputs import OutputFolder
from hmnas_nni.nas.cost import LatencyModel
from hmnas_nni.nas.hierarchy import Hierarchy
from hmnas_nni.nas.levels import masks_at
from hmnas_nni.nas.rebuild import architecture_from_export, derived_of, export_sample

_logger = logging.getLogger(__name__)


@dataclass
class SpaceSpec:
    """A space to check: how to build it, and the input (C, H, W) its networks are timed at."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    notes: dict[str, Any] = field(default_factory=dict)


def default_spaces() -> list[SpaceSpec]:
    """The project's nb201 and mobile spaces and NNI's hub ProxylessNAS, at sizes a 2-core CPU times in minutes."""
    from nni.nas.hub.pytorch import ProxylessNAS

    from hmnas_nni.spaces import build_space

    return [
        SpaceSpec("nb201", lambda: build_space("nb201", channels=16, input_size=32, in_channels=3), (3, 32, 32),
                  {"space_args": {"channels": 16, "input_size": 32, "in_channels": 3}}),
        SpaceSpec("mobile", lambda: build_space("mobile", channels=16, input_size=32, in_channels=3), (3, 32, 32),
                  {"space_args": {"channels": 16, "input_size": 32, "in_channels": 3}}),
        SpaceSpec("nni.nas.hub.pytorch.ProxylessNAS",
                  lambda: ProxylessNAS(num_labels=10, base_widths=(16, 16, 16, 24, 32, 48, 64, 96, 160)),
                  (3, 64, 64), {"space_args": {"num_labels": 10, "base_widths": [16, 16, 16, 24, 32, 48, 64, 96, 160]},
                                "edge_level": "none"}),
    ]


def sample_networks(supernet: nn.Module, hierarchy: Hierarchy, table: LatencyTable, n: int, seed: int,
                    timer: Timer) -> tuple[list[dict[str, Any]], int]:
    """``n`` derived networks of random mask settings, each with its predicted and measured milliseconds, and how
    many settings were skipped because their network computes a constant."""
    model = LatencyModel.of(supernet, hierarchy, table)
    gen = torch.Generator().manual_seed(seed)
    points: list[dict[str, Any]] = []
    tries = 0
    while len(points) < n:
        if tries >= 4 * n:
            raise RuntimeError(f"only {len(points)} of {tries} random networks read their input; the space keeps "
                               "constant networks under random masks")
        keep = 0.25 + 0.7 * len(points) / max(1, n - 1)  # from small networks to nearly the whole supernet
        tries += 1
        with masks_at(hierarchy, scores=random_scores(hierarchy, gen, keep)):
            arch = architecture_from_export(export_sample(supernet), supernet, input_shape=list(table.input_shape))
            net, predicted = derived_of(supernet, arch).eval(), model.predicted_ms()
        if not reads_input(net, (table.batch, *table.input_shape)):
            continue
        graph = timer.graph(net, (table.batch, *table.input_shape), f"network {len(points)}", fresh=True)
        whole = table.anchors["networks"][0]
        points.append({"keep": keep, "predicted_ms": predicted, "graph": graph,
                       "additive_ms": whole["measured_ms"] + (predicted - table.base_ms) / table.scale
                       - whole["candidates_ms"],
                       "ops_kept": arch.ops_kept(), "params": sum(p.numel() for p in net.parameters())})
    timer.time_all()  # round-robin over the networks, as the table's candidates were
    for p in points:
        p["measured_ms"] = timer.ms(p.pop("graph"))
    return points, tries - len(points)


def fit_figures(points: list[dict[str, Any]], key: str = "predicted_ms") -> dict[str, Any]:
    """Correlations and errors of a prediction (``predicted_ms``: the table's fitted line; ``additive_ms``: the
    candidates' plain sum plus what the whole supernet costs beyond them) against measured milliseconds."""
    from scipy.stats import pearsonr, spearmanr

    p = np.array([x[key] for x in points])
    m = np.array([x["measured_ms"] for x in points])
    rel = np.abs(p - m) / m
    return {"networks": len(points), "pearson_r": float(pearsonr(p, m)[0]), "spearman_rho": float(spearmanr(p, m)[0]),
            "mean_abs_error_ms": float(np.abs(p - m).mean()), "mean_abs_percent_error": float(100 * rel.mean()),
            "median_abs_percent_error": float(100 * np.median(rel)), "max_abs_percent_error": float(100 * rel.max()),
            "measured_range_ms": [float(m.min()), float(m.max())]}


def _line(f: dict[str, Any]) -> str:
    return (f"{f['networks']} networks, r={f['pearson_r']:.3f}, rho={f['spearman_rho']:.3f}, MAPE "
            f"{f['mean_abs_percent_error']:.1f}% (median {f['median_abs_percent_error']:.1f}%, max "
            f"{f['max_abs_percent_error']:.1f}%), measured {f['measured_range_ms'][0]:.3f}-"
            f"{f['measured_range_ms'][1]:.3f} ms")


def plot_fit(spaces: dict[str, list[dict[str, Any]]], title: str) -> bytes:
    """Scatter of measured against predicted milliseconds, one colour per space, the diagonal drawn."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(spaces), figsize=(4.2 * len(spaces), 4), squeeze=False)
    for ax, (name, points) in zip(axes[0], spaces.items()):
        p = [x["predicted_ms"] for x in points]
        m = [x["measured_ms"] for x in points]
        lo, hi = min(p + m), max(p + m)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.scatter(p, m, s=16)
        f = fit_figures(points)
        ax.set_title(f"{name.rsplit('.', 1)[-1]}: r={f['pearson_r']:.3f}, MAPE {f['mean_abs_percent_error']:.1f}%",
                     fontsize=9)
        ax.set_xlabel("predicted (table) ms")
        ax.set_ylabel("measured ms")
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def check_predictor(out: str | Path, spaces: list[SpaceSpec] | None = None, networks: int = 12, seed: int = 0,
                    runtime: Runtime | None = None, batch: int = 1, repeats: int = 5,
                    log: Callable[[str], None] = print, force: bool = False) -> dict[str, Any]:
    """Measure a table per space, time ``networks`` random derived networks of each, print and write the fit
    (``out`` is a guarded output folder, claimed before any timing: another run's results need ``force``)."""
    with OutputFolder(out, "latency fit", force=force) as folder:
        report, per_space, title = _fit_spaces(spaces, networks, seed, runtime or Runtime(), batch, repeats, log)
        write_json(folder.staged("latency_fit.json"), report)
        write_atomic(folder.staged("latency_fit.png"), plot_fit(per_space, title))
        folder.commit("latency_fit.json")
    return report


def _fit_spaces(spaces: list[SpaceSpec] | None, networks: int, seed: int, runtime: Runtime, batch: int,
                repeats: int, log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The tables, the timed networks and the fit figures of every space (the report, its points, its title)."""
    per_space: dict[str, list[dict[str, Any]]] = {}
    tables = {}
    for spec in spaces or default_spaces():
        torch.manual_seed(seed)
        supernet, strategy = traced_supernet(spec.build(), spec.input_shape, spec.notes.get("edge_level", "auto"))
        timer = Timer(runtime, repeats=repeats)
        table = measure_table(supernet, strategy.hierarchy, spec.input_shape, batch, timer=timer)
        tables[spec.name] = {"candidates": len(table.costs), "graphs_timed": len(timer.records),
                             "base_ms": table.base_ms, "scale": table.scale, "anchors": table.anchors["networks"],
                             **spec.notes}
        per_space[spec.name], skipped = sample_networks(supernet, strategy.hierarchy, table, networks, seed, timer)
        tables[spec.name]["constant_networks_skipped"] = skipped
        for key in ("predicted_ms", "additive_ms"):
            log(f"{spec.name} [{key}]: {_line(fit_figures(per_space[spec.name], key))}")
    everything = [p for points in per_space.values() for p in points]
    overall = fit_figures(everything)
    for key in ("predicted_ms", "additive_ms"):
        log(f"all [{key}]: {_line(fit_figures(everything, key))}")
    rt = runtime.describe()
    title = (f"latency table vs whole network, ORT {rt['provider']} x{rt['threads']} thread(s), {rt['exporter']} "
             f"export, batch {batch}, median of {repeats} repeats")
    report = {"runtime": rt, "device": runtime.device(), "batch": batch, "repeats": repeats, "seed": seed,
              "overall": overall, "overall_additive": fit_figures(everything, "additive_ms"),
              "spaces": {k: {"fit": fit_figures(v), "fit_additive": fit_figures(v, "additive_ms"), "table": tables[k],
                             "networks": v} for k, v in per_space.items()}}
    return report, per_space, title


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--networks", type=int, default=12, help="random derived networks per space")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--force", action="store_true", help="replace the results another check left in --out")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    report = check_predictor(args.out, networks=args.networks, seed=args.seed, batch=args.batch,
                             runtime=Runtime(args.provider, args.threads, args.exporter), repeats=args.repeats,
                             force=args.force)
    return 0 if math.isfinite(report["overall"]["pearson_r"]) else 1


if __name__ == "__main__":
    sys.exit(main())
