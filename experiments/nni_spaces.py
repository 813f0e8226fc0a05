"""HM-NAS beside NNI's DARTS on NNI users' spaces: the spaces NNI's own strategy tests and hub use, each searched
by both through ``NasExperiment`` on the same data, the network from ``export_top_models(formatter="instance")``
run and compared with the supernet it came from (the derivation gap), side by side in one run.

    python -m hmnas_nni.experiments.nni_spaces --out runs/nni-spaces [--epochs 2] [--strategies darts,hmnas]

Writes ``spaces.json``, ``table.md`` and ``spaces.png``. The small spaces below are written the way an NNI user
writes one (``LayerChoice``, ``InputChoice``, ``Cell``, ``Repeat``, value choices in NNI's mutable layers, and a
primitive of the user's own that no one-shot strategy relaxes); the others are NNI's hub spaces at tiny widths.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nni
import pytorch_lightning as pl
import torch
import torch.nn as nn
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.hub.pytorch import DARTS, ENAS, MobileNetV3Space, NasBench201, ProxylessNAS, ShuffleNetSpace
from nni.nas.nn.pytorch import (
    Cell,
    InputChoice,
    LayerChoice,
    ModelSpace,
    MutableBatchNorm2d,
    MutableConv2d,
    MutableLinear,
    MutableModule,
    Repeat,
)
from torch.utils.data import TensorDataset

from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.outputs import OutputFolder
from hmnas_nni.search.data import load_dataset, search_splits
from hmnas_nni.search.evaluation import accuracy, count_parameters


class LayerChoiceNet(ModelSpace):
    """A chain of convolutions, two of them LayerChoices."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.choice1 = LayerChoice({"conv3": nn.Conv2d(8, 8, 3, padding=1), "conv5": nn.Conv2d(8, 8, 5, padding=2),
                                    "pool": nn.MaxPool2d(3, 1, 1)}, label="choice1")
        self.choice2 = LayerChoice([nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 1)), nn.Identity()], label="choice2")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.choice2(torch.relu(self.choice1(self.stem(x)))))


class MixedChoiceNet(ModelSpace):
    """LayerChoices and an InputChoice outside any cell: a node that sums any two of three branches."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branches = nn.ModuleList([LayerChoice([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)],
                                                   label=f"branch{i}") for i in range(3)])
        self.node = InputChoice(3, 2, reduction="sum", label="node")
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.node([b(s) for b in self.branches]))


class CellNet(ModelSpace):
    """Two NNI Cells (two predecessors, 3 nodes, merge all) between a stem and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        ops = {"conv": nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)),
               "pool": nn.AvgPool2d(3, 1, 1), "skip": nn.Identity()}
        self.cell1 = Cell(ops, num_nodes=3, num_ops_per_node=2, num_predecessors=2, label="cell1")
        self.reduce = nn.Conv2d(24, 8, 1)
        self.cell2 = Cell(ops, num_nodes=3, num_ops_per_node=1, num_predecessors=1, label="cell2")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.cell2(self.reduce(self.cell1([s, s]))))


class ResidualBlock(nn.Module):
    """``x + conv(x)``: the add ties the block's output width to its input width (one label, one mask)."""

    def __init__(self, channels: Any) -> None:
        super().__init__()
        self.conv = nn.Sequential(MutableConv2d(channels, channels, 3, padding=1), MutableBatchNorm2d(channels),
                                  nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class WidthNet(ModelSpace):
    """Width choices on a conv and the linear layer after it, a kernel choice, a depth range (``Repeat``), and one
    width shared by both sides of a residual add."""

    def __init__(self) -> None:
        super().__init__()
        width = nni.choice("width", [4, 8, 12])
        shared = nni.choice("shared", [8, 16])
        self.stem = nn.Sequential(MutableConv2d(3, width, nni.choice("stem_kernel", [3, 5, 7]), padding=3),
                                  MutableBatchNorm2d(width), nn.ReLU())
        self.widen = MutableConv2d(width, shared, 1)
        self.body = Repeat(lambda i: ResidualBlock(shared), (1, 3), label="depth")
        self.head = MutableLinear(shared, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.widen(self.stem(x)))
        return self.head(x.mean((2, 3)))


class Unrelaxable(MutableModule):
    """A user's own choice primitive that no one-shot strategy knows."""

    def __init__(self) -> None:
        super().__init__()
        self.width = self.add_mutable(nni.choice("my_width", [4, 8]))
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


class CustomOpNet(ModelSpace):
    """A space whose only choice is :class:`Unrelaxable`."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Unrelaxable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


_MOBILE_WIDTHS = (8, 8, 8, 8, 16, 16, 24, 32, 64)

#: name -> (factory, input size): the users' spaces and NNI's hub spaces, at sizes a 2-core CPU searches in seconds.
SPACES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "layerchoice-net": (LayerChoiceNet, 8),
    "mixed-choice-net": (MixedChoiceNet, 8),
    "cell-net": (CellNet, 8),
    "width-kernel-depth-net": (WidthNet, 8),
    "custom-op-net": (CustomOpNet, 8),
    "hub-nasbench201": (lambda: NasBench201(stem_out_channels=4, num_modules_per_stack=1, num_labels=10), 8),
    "hub-darts": (lambda: DARTS(width=4, num_cells=3, dataset="cifar"), 8),
    "hub-enas": (lambda: ENAS(width=4, num_cells=3, dataset="cifar"), 8),
    "hub-proxylessnas": (lambda: ProxylessNAS(num_labels=10, base_widths=_MOBILE_WIDTHS), 16),
    "hub-mobilenetv3": (lambda: MobileNetV3Space(num_labels=10, base_widths=_MOBILE_WIDTHS,
                                                 width_multipliers=(0.5, 1.0), expand_ratios=(1.0, 3.0, 6.0),
                                                 dropout_rate=0.0), 16),
    "hub-shufflenet": (lambda: ShuffleNetSpace(num_labels=10, channel_search=True), 16),
}


class FitClock(pl.Callback):
    """Seconds of the strategy's training alone (first to last epoch): ``experiment.run()`` also holds NNI's
    experiment start and the export, the same for every strategy."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = -time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds += time.perf_counter()


def rgb_digits(size: int, images: int = 192, seed: int = 0) -> list[TensorDataset]:
    """scikit-learn digits, grey repeated to RGB and resized to ``size``: the two search halves."""
    train, _, _ = load_dataset("digits")
    out = []
    for half in search_splits(train, images, seed):
        x = nn.functional.interpolate(half.tensors[0], size=(size, size), mode="bilinear").repeat(1, 3, 1, 1)
        out.append(TensorDataset(x, half.tensors[1]))
    return out


def make_strategy(name: str, epochs: int) -> Any:
    """NNI's DARTS, or HM-NAS on the same schedule (a warm-up epoch, then the architecture)."""
    from nni.nas.oneshot.pytorch.strategy import DARTS as DartsStrategy

    from hmnas_nni.nas.strategy import HMNAS

    if name == "darts":
        return DartsStrategy(warmup_epochs=0)
    return HMNAS(warmup_epochs=0, arch_epochs=max(1, epochs // 3), settle_epochs=1)


def gap(supernet: nn.Module, net: nn.Module, x: torch.Tensor) -> float:
    """Largest difference between the supernet's logits (as the strategy left it) and the derived network's."""
    supernet.eval()
    net.eval()
    with torch.no_grad():
        return float((supernet(x) - net(x)).abs().max())


def search_one(space_name: str, strategy: str, epochs: int, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """One search and its derived network: what ran, the gap, the network's size and accuracy, seconds per epoch."""
    factory, size = SPACES[space_name]
    data = rgb_digits(size, seed=seed)
    torch.manual_seed(seed)
    row: dict[str, Any] = {"space": space_name, "strategy": strategy, "runs": False, "derived": False}
    clock = FitClock()
    evaluator = Classification(train_dataloaders=DataLoader(data[0], batch_size=32),
                               val_dataloaders=DataLoader(data[1], batch_size=32), max_epochs=epochs, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False,
                               callbacks=[clock])
    try:
        space = factory()
        experiment = NasExperiment(space, evaluator, make_strategy(strategy, epochs))
        experiment.config.experiment_working_directory = str(workdir)
        started = time.perf_counter()
        experiment.run()
    except Exception as e:  # noqa: BLE001 - a space a strategy refuses is a result of the survey
        return row | {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    row |= {"runs": True, "run_seconds": time.perf_counter() - started,
            "epoch_seconds": clock.seconds / epochs}
    try:
        row |= _derived(experiment, factory, data[1])
    finally:
        experiment.stop()
    return row


def _derived(experiment: NasExperiment, factory: Callable[[], nn.Module], val: TensorDataset) -> dict[str, Any]:
    """The network from ``export_top_models(formatter="instance")`` measured against the supernet; where that
    fails, whether NNI's own ``space.freeze(sample)`` still gives a network (without the supernet's weights)."""
    supernet, x = experiment.strategy.supernet, val.tensors[0]
    try:
        net = experiment.export_top_models(formatter="instance")[0]
        return {"derived": True, "inherits": True, "gap": gap(supernet, net, x), "params": count_parameters(net),
                "supernet_params": count_parameters(supernet), "derived_val_acc": accuracy(net.eval(), val),
                "supernet_val_acc": accuracy(supernet.eval(), val)}
    except Exception as e:  # noqa: BLE001 - a strategy that cannot give its network is a result of the survey
        error = f"export_top_models(formatter='instance'): {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    try:
        net = factory().freeze(experiment.export_top_models(formatter="dict")[0]).eval()
        with torch.no_grad():
            net(x[:2])
    except Exception as e:  # noqa: BLE001
        return {"error": f"{error}; space.freeze(sample): {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return {"derived": True, "inherits": False, "params": count_parameters(net),
            "supernet_params": count_parameters(supernet), "error": f"{error}; space.freeze(sample) runs, with "
                                                                    "fresh weights (no gap to measure)"}


def survey(out: str | Path, strategies: tuple[str, ...] = ("darts", "hmnas"), epochs: int = 3,
           spaces: list[str] | None = None, command: str = "", log: Callable[[str], None] = print,
           force: bool = False) -> dict[str, Any]:
    """Every space with every strategy, one after another in this process; writes the table and the plot into
    ``out`` together (a guarded output folder: another run's results are refused unless ``force``)."""
    with OutputFolder(out, "nni-spaces survey", force=force) as folder:
        folder.clear_previous(writes=("experiments",))
        report = _survey(Path(out), strategies, epochs, spaces, command, log)
        write_json(folder.staged("spaces.json"), report)
        write_atomic(folder.staged("table.md"), table(report))
        write_atomic(folder.staged("spaces.png"), plot(report))
        folder.commit("spaces.json")
    return report


def _survey(out: Path, strategies: tuple[str, ...], epochs: int, spaces: list[str] | None, command: str,
            log: Callable[[str], None]) -> dict[str, Any]:
    """The rows of the survey and their totals."""
    rows = []
    for name in spaces or list(SPACES):
        for strategy in strategies:
            row = search_one(name, strategy, epochs, out / "experiments")
            rows.append(row)
            log(_line(row))
    report = {"command": command, "epochs": epochs, "strategies": list(strategies), "rows": rows,
              "data": "scikit-learn digits, 96 + 96 images, grey repeated to RGB, resized per space",
              "gap": "max |supernet(x) - derived(x)| over the 96 validation images, both in eval mode",
              "totals": {s: {"runs": sum(r["runs"] for r in rows if r["strategy"] == s),
                             "derived": sum(r["derived"] for r in rows if r["strategy"] == s),
                             "inherits": sum(bool(r.get("inherits")) for r in rows if r["strategy"] == s),
                             "spaces": sum(1 for r in rows if r["strategy"] == s)} for s in strategies}}
    return report


def _line(row: dict[str, Any]) -> str:
    if not row.get("inherits"):
        return f"{row['space']:24s} {row['strategy']:6s} {row.get('error', '')}"
    return (f"{row['space']:24s} {row['strategy']:6s} gap {row['gap']:.2e}  params {row['params']:>7,d} of "
            f"{row['supernet_params']:>7,d}  derived acc {row['derived_val_acc']:.3f}  "
            f"{row['epoch_seconds']:.2f} s/epoch")


def table(report: dict[str, Any]) -> str:
    """The survey as a markdown table, one line per space, the strategies side by side."""
    strategies = report["strategies"]
    cell = "runs / network / gap / params / s per training epoch"
    head = "| space | " + " | ".join(f"{s}: {cell}" for s in strategies) + " |"
    lines = [head, "|---|" + "---|" * len(strategies)]
    for name in dict.fromkeys(r["space"] for r in report["rows"]):
        cells = []
        for s in strategies:
            r = next(r for r in report["rows"] if r["space"] == name and r["strategy"] == s)
            if r.get("inherits"):
                cells.append(f"yes / yes / {r['gap']:.1e} / {r['params']:,} / {r['epoch_seconds']:.2f}")
            elif r["derived"]:
                cells.append(f"yes / only `space.freeze(sample)`, fresh weights / - / {r['params']:,} / "
                             f"{r['epoch_seconds']:.2f}")
            else:
                cells.append(("yes / no: " if r["runs"] else "no: ") + r.get("error", "").replace("|", "/")[:120])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = "; ".join(f"{s}: runs on {t['runs']} of {t['spaces']}, a network on {t['derived']}, with the "
                       f"supernet's weights on {t['inherits']}" for s, t in report["totals"].items())
    return "\n".join(lines) + f"\n\n{totals}\n"


def plot(report: dict[str, Any]) -> bytes:
    """The derivation gap per space, strategies side by side (log scale; a missing bar: no network)."""
    plt = pyplot()

    names = list(dict.fromkeys(r["space"] for r in report["rows"]))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(report["strategies"])
    for i, s in enumerate(report["strategies"]):
        values = [next((r.get("gap") for r in report["rows"] if r["space"] == n and r["strategy"] == s), None)
                  for n in names]
        xs = [j + i * width for j, v in enumerate(values) if v is not None]
        ax.bar(xs, [max(v, 1e-9) for v in values if v is not None], width, label=s)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("max |supernet - derived| (logits)")
    ax.set_title("derivation gap on NNI spaces (1e-9 floor: exact)", fontsize=9)
    ax.legend()
    return png_bytes(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the survey; 0 when every space HM-NAS relaxes gave a network."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--strategies", default="darts,hmnas")
    p.add_argument("--spaces", default=None, help=f"comma-separated subset of {','.join(SPACES)}")
    p.add_argument("--force", action="store_true", help="replace the results another survey left in --out")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    report = survey(args.out, tuple(args.strategies.split(",")), args.epochs,
                    args.spaces.split(",") if args.spaces else None,
                    " ".join(["python -m hmnas_nni.experiments.nni_spaces", *(argv or sys.argv[1:])]),
                    force=args.force)
    print(table(report))
    missing = [r for r in report["rows"] if r["strategy"] == "hmnas" and not r.get("inherits")
               and r["space"] != "custom-op-net"]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
