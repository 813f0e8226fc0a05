"""``hmnas compare``: HM-NAS beside NNI's one-shot strategies on one space, data split, seed set and budget.

Every (strategy, seed) search runs in a fresh ``spawn`` subprocess, so a peak of resident memory
never leaks into the next strategy's figure; strategies are interleaved per seed (the order rotates
with the seed) so that noise from other work on the machine hits every strategy alike.

Per strategy and seed it records:

- search cost: mean wall seconds per search epoch and peak memory (from :func:`hmnas_nni.search.run_search`);
- search performance: supernet and derived-network validation accuracy (inherited weights, no retraining)
  and the derivation gap, each as extracted and after re-estimating BatchNorm statistics on a few
  training batches (the supernet on a copy, the derived network under its own architecture);
- the derived network: parameters, FLOPs (``torch.utils.flop_counter``; one multiply-add = 2 FLOPs)
  and ONNX Runtime CPU latency at batch 1 (``export.onnx_export`` + ``export.bench.time_runs``);
- with ``--retrain EPOCHS``: test accuracy after retraining the derived network from scratch with
  ``export.retrain.retrain`` (the recipe of ``hmnas retrain``: SGD, cosine schedule, train split -> test set).

It writes ``results.json``, ``results.csv``, ``table.md``, ``acc_vs_params.png`` and ``acc_vs_time.png``
to ``--out`` and prints the HM-NAS/DARTS ratios of time per epoch and peak memory.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.files import write_json
from hmnas_nni.format.outputs import OutputFolder, check_out_path
from hmnas_nni.search.config import TINY_SPACE_ARGS, SearchConfig
from hmnas_nni.search.strategies import STRATEGIES

from .compare_report import ratio_lines, write_results

#: Strategies compared by default; ``nasib`` joins them by name, with a ``time_budget`` (it plans from one).
ALL_STRATEGIES = tuple(s for s in STRATEGIES if s != "nasib")



@dataclass(frozen=True)
class Budget:
    """One named budget: space, data, epochs and sizes shared by every strategy."""

    space: str
    dataset: str
    epochs: int
    subset: int | None
    batch_size: int
    seeds: tuple[int, ...]
    space_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # per space name
    bn_batches: int = 10
    retrain_limit: int | None = None
    threads: int | None = None  # torch intra-op threads per search process (None: torch's default)
    description: str = ""


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        space="nb201", dataset="digits", epochs=3, subset=192, batch_size=32, seeds=(0,),
        space_args=TINY_SPACE_ARGS,
        bn_batches=4, retrain_limit=512, threads=1,
        description="CI smoke: scikit-learn digits (8x8), 96 + 96 images, 3 epochs, width 4",
    ),
    "cpu": Budget(
        space="nb201", dataset="fashion-mnist", epochs=6, subset=4000, batch_size=64, seeds=(0, 1, 2),
        space_args={"nb201": {"channels": 8, "cells_per_stage": 1}, "darts": {"channels": 8, "num_cells": 3},
                    "mobile": {"channels": 8}},
        bn_batches=10, retrain_limit=10000, threads=2,
        description="Fashion-MNIST proxy for 2 CPU cores: 2,000 + 2,000 images, 6 epochs, NAS-Bench-201 width 8",
    ),
    "gpu": Budget(
        space="darts", dataset="fashion-mnist", epochs=10, subset=20000, batch_size=96, seeds=(0, 1, 2),
        space_args={"darts": {"channels": 16, "num_cells": 8}, "nb201": {"channels": 16, "cells_per_stage": 5},
                    "mobile": {"channels": 16}},
        bn_batches=20, retrain_limit=None,
        description="one GPU: DARTS cells (16 channels, 8 cells), 10,000 + 10,000 Fashion-MNIST images, 10 epochs",
    ),
}


# --------------------------------------------------------------------------- plan
def make_plan(budget: str = "tiny", space: str | None = None, strategies: str | list[str] | None = None,
              seeds: str | list[int] | None = None, epochs: int | None = None, subset: int | None = None,
              batch_size: int | None = None, space_args: dict[str, Any] | None = None, retrain: int = 0,
              retrain_limit: int | None = None, threads: int | None = None, latency: bool = True,
              data_root: str | None = None, accelerator: str = "auto", out: str | None = None, force: bool = False,
              command: str = "", time_budget: str | None = None) -> dict[str, Any]:
    """Resolve a budget and its overrides into one JSON-able plan, every value checked before any search runs."""
    if budget not in BUDGETS:
        raise UsageError(f"unknown budget {budget!r}; choose one of {sorted(BUDGETS)}")
    b = BUDGETS[budget]
    space = space or b.space
    names = [s.strip() for s in strategies.split(",") if s.strip()] if isinstance(strategies, str) else \
        list(strategies or ALL_STRATEGIES)
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise UsageError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    plan = {
        "budget": budget, "space": space, "dataset": b.dataset, "epochs": _given(epochs, b.epochs),
        "subset": _given(subset, b.subset), "batch_size": _given(batch_size, b.batch_size),
        "space_args": space_args if space_args is not None else dict(b.space_args.get(space, {})),
        "seeds": _seeds(seeds, b.seeds), "strategies": names, "bn_batches": b.bn_batches, "retrain": retrain,
        "retrain_limit": b.retrain_limit if retrain_limit is None else (retrain_limit or None),
        "threads": _given(threads, b.threads), "latency": bool(latency), "data_root": data_root,
        "accelerator": accelerator, "out": str(out if out is not None else f"runs/compare-{budget}"), "force": force,
        "command": command, "time_budget": time_budget,
    }
    _check_plan(plan)
    return plan


#: What a search under ``--time-budget`` spent and planned, copied into its row.
BUDGET_FIELDS = ("budget_seconds", "spent_seconds", "budget_epochs", "budget_steps", "stopped_by_budget",
                 "nasib_phases", "nasib_step_seconds")


def _given(value: Any, default: Any) -> Any:
    """``value`` unless it was not given (0 is given, and then refused by the checks)."""
    return default if value is None else value


def _seeds(seeds: str | list[int] | None, default: tuple[int, ...]) -> list[int]:
    """Seeds from ``"0,1,2"`` or a list."""
    if seeds is None:
        return list(default)
    try:
        return [int(s) for s in seeds.split(",")] if isinstance(seeds, str) else [int(s) for s in seeds]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {seeds!r}") from None


def _check_plan(plan: dict[str, Any]) -> None:
    """Every option in range: the searches' own checks on each strategy's config, then the comparison's."""
    for name, low in (("retrain", 0), ("threads", 1), ("bn_batches", 1)):
        value = plan[name]
        if value is not None and (not isinstance(value, int) or value < low):
            raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    if plan["retrain_limit"] is not None and plan["retrain_limit"] < 1:
        raise UsageError(f"retrain_limit must be a positive integer, got {plan['retrain_limit']!r}")
    if not plan["seeds"]:
        raise UsageError("--seeds names no seed; pass e.g. --seeds 0,1,2")
    check_out_path(plan["out"])
    for strategy in plan["strategies"]:
        for seed in plan["seeds"]:
            search_config(plan, strategy, seed, Path(plan["out"])).validate()


#: NASIB plans its own epochs from the time budget: the plan's epochs (the others' schedule) do not cap it.
NASIB_EPOCHS = 100_000


def search_config(plan: dict[str, Any], strategy: str, seed: int, folder: Path) -> SearchConfig:
    """The search one (strategy, seed) job of ``plan`` runs."""
    epochs = NASIB_EPOCHS if strategy == "nasib" else plan["epochs"]
    return SearchConfig(
        space=plan["space"], dataset=plan["dataset"], strategy=strategy, epochs=epochs,
        subset=plan["subset"], seed=seed, out=str(folder / "search"), batch_size=plan["batch_size"],
        space_args=dict(plan["space_args"]), data_root=plan["data_root"], accelerator=plan["accelerator"],
        progress=False, budget=plan.get("time_budget"))


# --------------------------------------------------------------------------- running
def run_compare(plan: dict[str, Any], log: Callable[[str], None] = print) -> int:
    """Run every (seed, strategy) search in its own process, then write the tables and plots; 0 if all ran."""
    with OutputFolder(plan["out"], "hmnas compare", force=plan["force"]) as folder:
        folder.clear_previous(writes=("runs", "results.json", "results.csv", "table.md", "acc_vs_params.png",
                                      "acc_vs_time.png"))
        out = folder.path
        log(f"compare: {plan['budget']} budget, space {plan['space']}, {plan['dataset']}, {plan['epochs']} epochs, "
            f"subset {plan['subset']}, seeds {plan['seeds']}, strategies {plan['strategies']} -> {out}")
        rows: list[dict[str, Any]] = []
        jobs = [(seed, s) for i, seed in enumerate(plan["seeds"]) for s in _rotate(plan["strategies"], i)]
        started = time.perf_counter()
        for k, (seed, strategy) in enumerate(jobs, 1):
            t0 = time.perf_counter()
            row = run_job(plan, strategy, seed)
            rows.append(row)
            log(f"[{k}/{len(jobs)}] {strategy} seed {seed}: {_row_line(row)} ({time.perf_counter() - t0:.0f} s)")
            if row["status"] != "ok":
                log(f"    {row['reason']}")
            write_results(out, plan, rows, time.perf_counter() - started)
        summary = write_results(folder.staging, plan, rows, time.perf_counter() - started)
        folder.commit("results.json")
    for line in ratio_lines(summary):
        log(line)
    log(f"wrote {out / 'results.json'}, results.csv, table.md, acc_vs_params.png, acc_vs_time.png")
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _row_line(row: dict[str, Any]) -> str:
    """One line for a finished job."""
    if row["status"] != "ok":
        return row["status"]
    return (f"derived {row['derived_val_acc']:.4f} (gap {row['derivation_gap']:+.4f}), "
            f"{row['epoch_seconds']:.1f} s/epoch, {row['peak_memory_mb']:.0f} MiB")


def _rotate(items: list[str], k: int) -> list[str]:
    """``items`` rotated by ``k``: each seed starts with a different strategy."""
    k %= max(1, len(items))
    return items[k:] + items[:k]


# --------------------------------------------------------------------------- one search, in a child process
def run_job(plan: dict[str, Any], strategy: str, seed: int) -> dict[str, Any]:
    """Run one search in a fresh spawned process and return its row (a failed row if the process died)."""
    run_dir = Path(plan["out"]) / "runs" / f"{strategy}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    row_path = run_dir / "row.json"
    if row_path.exists():
        row_path.unlink()
    proc = mp.get_context("spawn").Process(target=_child, args=(plan, strategy, seed, str(run_dir)))
    proc.start()
    proc.join()
    if row_path.is_file():
        return json.loads(row_path.read_text())
    return {"strategy": strategy, "seed": seed, "status": "failed", "run_dir": str(run_dir),
            "reason": f"search process exited with code {proc.exitcode} without a result; see {run_dir / 'log.txt'}"}


def _child(plan: dict[str, Any], strategy: str, seed: int, run_dir: str) -> None:
    """Subprocess body: log to ``run_dir/log.txt``, search, measure, write ``row.json``."""
    folder = Path(run_dir)
    log = open(folder / "log.txt", "w", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    row: dict[str, Any] = {"strategy": strategy, "seed": seed, "run_dir": run_dir}
    try:
        row.update(measure(plan, strategy, seed, folder))
        row["status"] = "ok"
    except EnasUnavailable as e:
        row.update(status="unavailable", reason=str(e))
    except Exception as e:  # noqa: BLE001 - any failure becomes a row that says why
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:400]
        row.update(status="failed", reason=f"{type(e).__name__}: {first}")
    write_json(folder / "row.json", row)


class EnasUnavailable(RuntimeError):
    """NNI's ENAS cannot run here; the message says why and how to fix it."""


def enas_ready() -> None:
    """Raise :class:`EnasUnavailable` unless NNI's ENAS controller (tianshou + gym) imports."""
    from hmnas_nni.search.nni_enas import enas_missing

    missing = enas_missing()
    if missing:
        raise EnasUnavailable(missing)


def measure(plan: dict[str, Any], strategy: str, seed: int, folder: Path) -> dict[str, Any]:
    """Search once, then evaluate supernet and derived network as extracted and after BN re-estimation."""
    import psutil
    import torch
    from safetensors.torch import load_file

    from hmnas_nni.format.architecture import Architecture
    from hmnas_nni.nas.rebuild import network_of
    from hmnas_nni.search.data import load_dataset, search_splits
    from hmnas_nni.search.evaluation import accuracy, count_parameters
    from hmnas_nni.search.run import run_search

    notes: list[str] = []
    if strategy == "enas":
        enas_ready()
        notes.append("ENAS ran as hmnas_nni.search.nni_enas.LightningENAS (NNI's ENAS with tagged batches)")
    elif strategy == "enas-memory":
        enas_ready()
        notes.append("ENAS with a memory of past architectures ran as hmnas_nni.search.enas_memory.MemoryENAS")
    config = search_config(plan, strategy, seed, folder)
    if plan.get("threads"):
        torch.set_num_threads(plan["threads"])
    rss_start = psutil.Process().memory_info().rss / 2**20
    result = run_search(config)
    final = result.final
    train, _test, info = load_dataset(plan["dataset"], plan["data_root"])
    train_split, val_split = search_splits(train, plan["subset"], seed)
    device = next(result.strategy.supernet.parameters()).device

    # derived network rebuilt from the files the search wrote (not from the live supernet)
    arch = Architecture.load(folder / "search" / "arch.json")
    weights = load_file(str(folder / "search" / "supernet.safetensors"))
    derived = network_of(arch, weights, require_path=False).to(device).eval()  # measured as the strategy gave it
    derived_files = accuracy(derived, val_split, plan["batch_size"], device)
    if abs(derived_files - final["derived_val_acc"]) > 1e-9:
        notes.append(f"derived accuracy from the files ({derived_files:.4f}) differs from the search's "
                     f"({final['derived_val_acc']:.4f})")
    bn = _batchnorm_reestimated(plan, result.strategy.supernet, derived, (train_split, val_split), device, notes)
    cpu_net = derived.cpu().eval()
    shape = (info.in_channels, info.input_size, info.input_size)
    row: dict[str, Any] = {
        "epoch_seconds": final["epoch_seconds"], "peak_memory_mb": final["peak_memory_mb"],
        "peak_memory_over_start_mb": final["peak_memory_mb"] - rss_start, "search_seconds": final["search_seconds"],
        "supernet_val_acc": final["supernet_val_acc"], "derived_val_acc": final["derived_val_acc"],
        "derivation_gap": final["derivation_gap"], "derived_val_acc_from_files": derived_files,
        **bn,
        "ops_kept": final["ops_kept"], "edges_kept": final["edges_kept"], "params": count_parameters(cpu_net),
        "flops": count_flops(cpu_net, shape), "val_images": len(val_split), "train_images": len(train_split),
        "device": "cuda" if device.type == "cuda" else "cpu", "torch_threads": torch.get_num_threads(),
        **{k: final[k] for k in BUDGET_FIELDS if k in final},
    }
    row.update(ort_latency(cpu_net, shape, folder / "derived.onnx") if plan["latency"] else {"latency_ms": None})
    if plan["retrain"] > 0:
        row.update(retrain_from_scratch(plan, folder, seed))
    row["notes"] = notes
    return row


def _batchnorm_reestimated(plan: dict[str, Any], supernet: Any, derived: Any, halves: tuple[Any, Any], device: Any,
                           notes: list[str]) -> dict[str, float]:
    """Supernet and derived accuracy after re-estimating BN statistics on a few training batches, and their gap."""
    from hmnas_nni.search.evaluation import accuracy, recalibrate_batchnorm

    bs, nbn = plan["batch_size"], plan["bn_batches"]
    train, val = halves
    derived_bn = accuracy(recalibrate_batchnorm(copy.deepcopy(derived), train, nbn, bs, device), val, bs, device)
    try:
        supernet_copy = copy.deepcopy(supernet)
    except Exception as e:  # noqa: BLE001 - then re-estimate in place: the search is over and saved
        notes.append(f"supernet could not be copied ({type(e).__name__}); BN re-estimated in place after saving")
        supernet_copy = supernet
    supernet_bn = accuracy(recalibrate_batchnorm(supernet_copy, train, nbn, bs, device), val, bs, device)
    return {"supernet_val_acc_bn": supernet_bn, "derived_val_acc_bn": derived_bn,
            "derivation_gap_bn": supernet_bn - derived_bn}


def count_flops(model: Any, shape: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass at batch 1, counted by ``torch.utils.flop_counter`` (multiply-add = 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return int(counter.get_total_flops())


def ort_latency(model: Any, shape: tuple[int, int, int], path: Path) -> dict[str, Any]:
    """ONNX Runtime CPU latency at batch 1 (median of >= 200 runs, 1 intra-op thread), via the export package."""
    import numpy as np

    from hmnas_nni.export.bench import time_runs
    from hmnas_nni.export.onnx_export import export_onnx, ort_session

    export_onnx(model, path, shape)
    session = ort_session(path, ["CPUExecutionProvider"], threads=1)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    stats = time_runs(lambda: session.run(None, {name: x}), warmup=20, iters=200, min_seconds=1.0)
    return {"latency_ms": stats["p50_ms"], "latency_p90_ms": stats["p90_ms"],
            "latency_backend": "onnxruntime CPUExecutionProvider, batch 1, 1 thread"}


def retrain_from_scratch(plan: dict[str, Any], folder: Path, seed: int) -> dict[str, Any]:
    """Retrain the derived network from scratch with ``hmnas retrain``'s function; test accuracy and seconds."""
    from hmnas_nni.export.retrain import retrain

    metrics = retrain(folder / "search" / "arch.json", plan["dataset"], plan["retrain"], folder / "retrain",
                      seed=seed, progress=False, limit_train=plan["retrain_limit"], data_root=plan["data_root"],
                      device="cpu" if plan["accelerator"] == "cpu" else "auto", force=True)
    return {"test_acc": metrics["test_accuracy"], "retrain_seconds": metrics["train_seconds"],
            "retrain_images": metrics["train_images"], "retrain_epochs": plan["retrain"]}
