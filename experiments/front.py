"""Accuracy against measured latency: HM-NAS's family from one search beside NNI's Proxyless (its latency penalty
read from the same table) and DARTS, on the same space, data split, evaluator and seeds.

    python -m hmnas_nni.experiments.front --out runs/front [--dataset fashion-mnist --subset 4000 --epochs 6]

Each search trains through NNI's ``NasExperiment`` with one ``Classification`` evaluator; every derived network
(HM-NAS: the K members of its family; NNI's strategies: their exported architecture) keeps the supernet's
weights and is scored on the search's validation half (the test set is never seen) and timed in ONNX Runtime
on the table's runtime (HM-NAS's members in one set of rounds, the NNI networks of a seed in another).
Writes ``front.json`` and ``front.png``. Then ``python -m hmnas_nni.experiments.front --out runs/front --retrain 3``
retrains every network of that front from scratch with one recipe and adds ``test_acc`` and
``front_retrained.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from nni.mutable import Categorical
from nni.mutable.symbol import SymbolicExpression
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty
from nni.nas.profiler import ExpressionProfiler

from hmnas_nni.export.family import family
from hmnas_nni.export.latency import Runtime, Timer, runtime_of, table_for_space
from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.latency_table import LatencyTable
from hmnas_nni.nas.cost import LatencyModel
from hmnas_nni.nas.defaults import DEFAULTS
from hmnas_nni.nas.rebuild import architecture_of, derived_of
from hmnas_nni.nas.strategy import HMNAS
from hmnas_nni.search.data import load_dataset, search_splits
from hmnas_nni.search.evaluation import accuracy, count_parameters, recalibrate_batchnorm
from hmnas_nni.spaces import build_space

_logger = logging.getLogger(__name__)
STRATEGIES = ("hmnas", "proxyless", "darts")


class TableProfiler(ExpressionProfiler):
    """NNI's expression profiler with a latency table's costs: ``base + scale * sum over LayerChoices of the chosen
    op's cost`` (each op's cost summed over every place its label is used), so NNI's latency penalties can read
    the same measurements HM-NAS does."""

    def __init__(self, model_space: nn.Module, table: LatencyTable) -> None:
        super().__init__(model_space)
        supernet = copy.deepcopy(model_space)
        strategy = HMNAS(edge_level="none")
        strategy.mutate_model(supernet)
        model = LatencyModel.of(supernet, strategy.hierarchy, table)
        names = {id(m): name for name, m in strategy.hierarchy.masks.items()}
        per_op: dict[str, dict[str, float]] = {}
        for item, cost in zip(model.items, model.costs.tolist()):
            gate = item.gates[-1]
            name = names.get(id(gate.owner), "")
            if item.kind != "op" or not name.startswith("ops:"):
                raise TypeError(f"TableProfiler expresses LayerChoice costs only; {item.key} is a {item.kind} under "
                                f"{name or 'a cell'}")
            ops = per_op.setdefault(name[len("ops:"):], {})
            ops[item.entry] = ops.get(item.entry, 0.0) + cost
        choices = {label: m for label, m in model_space.simplify().items() if isinstance(m, Categorical)}
        self.expression = model.base_ms + sum(
            SymbolicExpression.switch_case(choices[label], costs) for label, costs in per_op.items())


def latency_penalty(space: nn.Module, table: LatencyTable, baseline_ms: float,
                    scale: float = 1.0) -> ExpectationProfilerPenalty:
    """NNI's expectation penalty ``scale * max(0, E[latency] / baseline - 1)`` on the table's costs (what NNI's
    differentiable strategies take as ``penalty=``)."""
    return ExpectationProfilerPenalty(TableProfiler(space, table), baseline_ms, scale, nonlinear="positive")


def _strategy(name: str, space: nn.Module, table: LatencyTable, target_ms: float, epochs: int,
              latency_weight: float = DEFAULTS.latency_weight) -> Any:
    from nni.nas.oneshot.pytorch.strategy import DARTS, Proxyless

    warmup = max(1, epochs // 4)
    if name == "hmnas":
        return HMNAS(warmup_epochs=warmup, arch_epochs=max(1, epochs // 4), latency_table=table,
                     latency_target_ms=target_ms, latency_weight=latency_weight)
    if name == "proxyless":
        return Proxyless(warmup_epochs=warmup, penalty=latency_penalty(space, table, target_ms))
    return DARTS(warmup_epochs=warmup)


def _search(name: str, data: list[Any], space_args: dict[str, Any], table: LatencyTable, target_ms: float,
            epochs: int, batch_size: int, seed: int, workdir: Path,
            latency_weight: float = DEFAULTS.latency_weight,
            ) -> tuple[NasExperiment, Any, float]:
    torch.manual_seed(seed)
    space = build_space("nb201", **space_args)
    evaluator = Classification(train_dataloaders=DataLoader(data[0], batch_size=batch_size, shuffle=True),
                               val_dataloaders=DataLoader(data[1], batch_size=batch_size), max_epochs=epochs,
                               num_classes=10, learning_rate=3e-3, weight_decay=3e-4, enable_progress_bar=False,
                               logger=False, enable_checkpointing=False)
    experiment = NasExperiment(space, evaluator, _strategy(name, space, table, target_ms, epochs, latency_weight))
    experiment.config.experiment_working_directory = str(workdir)
    t0 = time.perf_counter()
    experiment.run()
    return experiment, experiment.strategy, time.perf_counter() - t0


def _nni_point(experiment: NasExperiment, name: str, table: LatencyTable, train: Any, val: Any,
              timer: Timer) -> dict[str, Any]:
    """The derived network of an NNI strategy: its sample as an architecture, with the supernet's weights."""
    supernet = experiment.strategy.supernet
    sample = experiment.export_top_models(formatter="dict")[0]
    arch = architecture_of(sample, supernet, name, list(table.input_shape))
    net = derived_of(supernet, arch).eval()
    return {"architecture": arch.to_dict(), "val_acc": accuracy(net, val), "params": count_parameters(net),
            "val_acc_bn": accuracy(recalibrate_batchnorm(copy.deepcopy(net), train), val),
            "ops_kept": arch.ops_kept(), "graph": timer.graph(net, (table.batch, *table.input_shape), name,
                                                              fresh=True)}


def run_front(out: str | Path, dataset: str = "fashion-mnist", subset: int = 4000, epochs: int = 6,
              seeds: tuple[int, ...] = (0, 1, 2), space_args: dict[str, Any] | None = None, family_k: int = 5,
              target_fraction: float = 0.5, batch_size: int = 64, runtime: Runtime | None = None,
              log: Any = print, command: str = "", latency_weight: float = DEFAULTS.latency_weight) -> dict[str, Any]:
    """Search nb201 with HM-NAS (latency target), Proxyless (penalty at the same target) and DARTS for each seed;
    measure every derived network; write ``front.json`` and ``front.png``."""
    out = Path(out)
    train, _, info = load_dataset(dataset)
    shape = list(train.tensors[0].shape[1:])
    space_args = {"channels": 8, "in_channels": shape[0], "input_size": shape[1], **(space_args or {})}
    table = table_for_space("nb201", space_args, shape, out / "latency_table.json", runtime=runtime)
    model_space = build_space("nb201", **space_args)
    bounds = _bounds(model_space, table)
    target_ms = bounds["smallest_ms"] + target_fraction * (bounds["full_ms"] - bounds["smallest_ms"])
    log(f"table: whole supernet {bounds['full_ms']:.3f} ms, smallest {bounds['smallest_ms']:.3f} ms predicted; "
        f"target {target_ms:.3f} ms")
    runs = []
    for seed in seeds:
        data = search_splits(train, subset, seed)
        timer = Timer(runtime_of(table))
        points = []
        for name in STRATEGIES:
            experiment, strategy, seconds = _search(name, data, space_args, table, target_ms, epochs, batch_size,
                                                    seed, out / "experiments", latency_weight)
            try:
                if name == "hmnas":
                    rows = family(strategy.supernet, strategy.hierarchy, family_k, table=table, val_data=data[1],
                                  timer=timer, out=out / f"seed{seed}" / "family", bn_data=data[0])
                    points += [{"strategy": name, "member": r["rank"], "val_acc": r["val_acc"],
                                "val_acc_bn": r["val_acc_bn"], "params": r["params"],
                                "measured_ms": r["measured_ms"], "predicted_ms": r["predicted_ms"],
                                "ops_kept": r["ops_kept"], "search_seconds": seconds} for r in rows]
                else:
                    points.append({"strategy": name, "search_seconds": seconds,
                                   **_nni_point(experiment, name, table, data[0], data[1], timer)})
            finally:
                experiment.stop()
            log(f"seed {seed} {name}: searched in {seconds:.0f} s")
        timer.time_all()
        for p in points:
            if "graph" in p:
                p["measured_ms"] = timer.ms(p.pop("graph"))
        for p in points:
            log(f"  seed {seed} {p['strategy']}{'' if 'member' not in p else ' member ' + str(p['member'])}: "
                f"val acc {p['val_acc']:.4f} ({p['val_acc_bn']:.4f} BN re-estimated), "
                f"{p['measured_ms']:.4f} ms measured, {p['params']} params")
        runs.append({"seed": seed, "points": points})
    report = {"command": command, "space": "nb201", "space_args": space_args, "dataset": info.name,
              "subset": subset, "epochs": epochs, "seeds": list(seeds), "target_ms": target_ms,
              "latency_weight": latency_weight, "bounds": bounds,
              "runtime": table.runtime, "device": table.device,
              "accuracy": "validation half of the search split, inherited weights (val_acc_bn: BatchNorm statistics "
                          "re-estimated on 10 training batches)",
              "runs": runs}
    write_json(out / "front.json", report)
    write_atomic(out / "front.png", plot_front(report))
    return report


def _bounds(space: nn.Module, table: LatencyTable) -> dict[str, float]:
    """Predicted latency of the whole supernet and of its cheapest network."""
    supernet = copy.deepcopy(space)
    strategy = HMNAS()
    strategy.mutate_model(supernet)
    supernet.train()
    supernet(torch.randn(2, *table.input_shape)).sum().backward()
    model = LatencyModel.of(supernet, strategy.hierarchy, table)
    return {"full_ms": model.predicted_ms(), "smallest_ms": model.smallest_ms()}


PANELS = (("val_acc", "validation accuracy", "inherited weights"),
          ("val_acc_bn", "validation accuracy", "BN re-estimated"))
RETRAINED = (("test_acc", "test accuracy", "retrained from scratch"),)


def plot_front(report: dict[str, Any], panels: tuple[tuple[str, str, str], ...] = PANELS) -> bytes:
    """Accuracy against measured latency, one panel per accuracy: HM-NAS's families (lines), NNI's strategies; one
    marker per seed."""
    plt = pyplot()

    colours = {"hmnas": "tab:blue", "proxyless": "tab:orange", "darts": "tab:green"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharey=True, squeeze=False)
    markers = "o^Dvs"
    for ax, (key, metric, what) in zip(axes[0], panels):
        for i, run in enumerate(report["runs"]):
            marker = markers[i % len(markers)]
            for name in STRATEGIES:
                pts = [p for p in run["points"] if p["strategy"] == name]
                family = name == "hmnas"
                label = f"{name}, seed {run['seed']}" if family else (name if i == 0 else None)
                ax.plot([p["measured_ms"] for p in pts], [p[key] for p in pts], marker + ("-" if family else ""),
                        color=colours[name], alpha=0.8, markersize=7, label=label)
        _decorate(ax, report, metric, what)
    return png_bytes(fig)


def _decorate(ax: Any, report: dict[str, Any], metric: str, what: str) -> None:
    """Axes, target line and title of one panel of the front."""
    ax.axvline(report["target_ms"], color="grey", ls="--", lw=1, label="latency target (predicted)")
    ax.set_xlabel(f"measured latency, ms (ORT {report['runtime']['provider']}, {report['runtime']['threads']} "
                  "thread, batch 1)")
    ax.set_ylabel(f"{metric}, {what}")
    ax.set_title(f"nb201 on {report['dataset']}: {len(report['runs'])} seeds, {report['epochs']} epochs, {what}",
                 fontsize=9)
    ax.legend(fontsize=8)


def _point_arch(out: Path, seed: int, point: dict[str, Any]) -> Path:
    """The architecture file of a point of the front (a family member's, or a peer's written beside it)."""
    if point["strategy"] == "hmnas":
        return out / f"seed{seed}" / "family" / f"member_{point['member']}" / "arch.json"
    path = out / f"seed{seed}" / point["strategy"] / "arch.json"
    write_json(path, point["architecture"])
    return path


def retrain_front(out: str | Path, epochs: int = 3, limit_train: int | None = 5000,
                  log: Any = print) -> dict[str, Any]:
    """Retrain every network of the front in ``out`` from scratch with one recipe (``hmnas retrain``'s, the
    search's seed), record its test accuracy in ``front.json`` and draw ``front_retrained.png``."""
    from hmnas_nni.export.retrain import retrain

    out = Path(out)
    report = json.loads((out / "front.json").read_text())
    for run in report["runs"]:
        for i, point in enumerate(run["points"]):
            metrics = retrain(_point_arch(out, run["seed"], point), report["dataset"], epochs,
                              out / "retrained" / f"seed{run['seed']}-{i}", limit_train=limit_train,
                              seed=run["seed"], progress=False, force=True)
            point["test_acc"] = metrics["test_accuracy"]
            member = "" if "member" not in point else f" member {point['member']}"
            log(f"  seed {run['seed']} {point['strategy']}{member}: test acc {point['test_acc']:.4f} after {epochs} "
                f"epochs on {metrics['train_images']} images")
    report["retrain"] = {"epochs": epochs, "train_images": limit_train, "recipe": "hmnas retrain defaults (SGD + "
                         "Nesterov, cosine), test set of the dataset", "seed": "the search's"}
    write_json(out / "front.json", report)
    write_atomic(out / "front_retrained.png", plot_front(report, RETRAINED))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--family", type=int, default=5)
    p.add_argument("--space-args", type=json.loads, default=None, help="nb201's arguments as JSON (default 8 channels)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target-fraction", type=float, default=0.5,
                   help="latency target between the smallest (0) and the whole supernet (1), predicted")
    p.add_argument("--latency-weight", type=float, default=DEFAULTS.latency_weight,
                   help="HM-NAS's latency-target weight")
    p.add_argument("--retrain", type=int, default=0, metavar="EPOCHS",
                   help="retrain the front already in --out from scratch for EPOCHS instead of searching")
    p.add_argument("--limit-train", type=int, default=5000, help="training images for --retrain")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.retrain:
        retrain_front(args.out, args.retrain, args.limit_train or None)
        return 0
    run_front(args.out, args.dataset, args.subset, args.epochs, tuple(args.seeds), args.space_args, args.family,
              batch_size=args.batch_size,
              target_fraction=args.target_fraction, runtime=Runtime("cpu", args.threads, args.exporter),
              latency_weight=args.latency_weight,
              command=" ".join(["python -m hmnas_nni.experiments.front",
                                *(argv if argv is not None else sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
