"""One search, start to finish: data -> space -> NNI evaluator + strategy -> NasExperiment -> outputs.

``run_search(SearchConfig(...))`` is what ``hmnas search``, the NNI trial and the comparison
scripts all call. It writes, in ``config.out``:

- ``arch.json``: the derived architecture (see :mod:`hmnas_nni.format.architecture`);
- ``metrics.json``: per-epoch and final metrics (rewritten after every epoch);
- ``supernet.safetensors``: the supernet's weights, from which the derived network inherits;
- ``cells.png``: a drawing of the derived cells;
- ``checkpoints/last.ckpt``: Lightning's checkpoint of the whole search state, after every epoch
  (``--resume`` continues from it; ``interrupted.ckpt`` is written on SIGTERM/SIGINT);
- ``ranks/rank{r}.json`` (DDP only): per-epoch hashes of each rank's architecture state.

See ``docs/reliability.md`` for faults, resume, DDP and remote trials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import pytorch_lightning as pl
import torch
import torch.nn as nn
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from torch.utils.data import TensorDataset

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.nas.defaults import DEFAULTS
from hmnas_nni.nas.derive import network_weights
from hmnas_nni.nas.rebuild import derived_of
from hmnas_nni.nas.samples import architecture_of
from hmnas_nni.spaces import build_space, catalogue, data_args, fit_input, space_factory, space_identity

from .data import DATASETS, DatasetInfo, load_dataset, search_splits
from .evaluation import accuracy, count_parameters
from .reliability import (
    EpochCheckpoint,
    EpochSampler,
    GracefulStop,
    SearchInterrupted,
    SearchState,
    arch_digest,
    check_resumable,
)

_logger = logging.getLogger(__name__)
CallbackT = TypeVar("CallbackT", bound=pl.Callback)

STRATEGIES = ("hmnas", "darts", "gumbel-darts", "enas", "random-oneshot", "proxyless")
#: Lightning strategies a search may run under: one process, or one supernet replicated over ``devices``.
DISTRIBUTED = ("auto", "ddp")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class SearchConfig:
    """Everything one search needs; every field is JSON-able so configs round-trip through NNI."""

    space: str = "nb201"
    dataset: str = "digits"
    strategy: str = "hmnas"
    epochs: int = 10
    subset: int | None = None
    seed: int = 0
    out: str = "runs/search"
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 3e-4
    space_args: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    # architecture search knobs (shared by the differentiable strategies where they apply)
    arc_lr: float = DEFAULTS.arc_learning_rate
    warmup_epochs: int | None = None
    # HM-NAS knobs
    arch_epochs: int | None = None
    tau: float = DEFAULTS.tau
    mask_init: float = DEFAULTS.mask_init
    mask_lr: float = DEFAULTS.mask_learning_rate
    sparsity: float = DEFAULTS.sparsity
    settle_epochs: int = DEFAULTS.settle_epochs
    # where to run
    accelerator: str = "auto"
    devices: int = 1
    num_workers: int = 0
    progress: bool = True
    # fault tolerance and scale-out
    resume: str | None = None  # --out folder of an earlier run: continue from its checkpoints/last.ckpt
    distributed: str = "auto"  # Lightning strategy over `devices`: "auto" (one process) or "ddp"

    def validate(self) -> SearchConfig:
        """Raise ``ValueError`` with one line naming the bad field and what it accepts."""
        space_factory(self.space)  # a project space name or an importable NNI model space, else a one-line error
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "devices": self.devices}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.subset is not None and (not isinstance(self.subset, int) or self.subset < 4):
            raise ValueError(f"subset must be an integer >= 4 (images), got {self.subset!r}")
        if not self.tau > 0:
            raise ValueError(f"tau (mask threshold) must be > 0, got {self.tau!r}")
        if not self.mask_init >= self.tau:
            raise ValueError(f"mask_init ({self.mask_init}) must be >= tau ({self.tau}) so every op starts on")
        if not self.sparsity >= 0:
            raise ValueError(f"sparsity (weight of the sparsity term) must be >= 0, got {self.sparsity!r}")
        for name in ("learning_rate", "arc_lr", "mask_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
            if value > FLOAT32_MAX:
                raise ValueError(f"{name}={value!r} does not fit a float32 (max {FLOAT32_MAX:.3g}); "
                                 "use a learning rate below 1")
        for name in ("warmup_epochs", "arch_epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.space_args, dict):
            raise ValueError(f"space_args must be a JSON object, got {self.space_args!r}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {list(DISTRIBUTED)}, got {self.distributed!r}")
        if self.resume is not None and not isinstance(self.resume, str):
            raise ValueError(f"resume must be the path of an earlier run's output folder, got {self.resume!r}")
        if not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"out {str(out)!r} is a file, not a folder; pass a folder path for the results")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown search option(s) {unknown}; known options are {sorted(known)}")
        return cls(**values)

    def schedule(self) -> tuple[int, int]:
        """(warm-up epochs, architecture epochs before masking): a quarter each unless given."""
        warmup = self.warmup_epochs if self.warmup_epochs is not None else max(1, self.epochs // 4)
        arch = self.arch_epochs if self.arch_epochs is not None else max(1, self.epochs // 4)
        return min(warmup, self.epochs - 1), arch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_strategy(config: SearchConfig):
    """The NNI strategy object named by ``config.strategy``, with the config's shared knobs."""
    from nni.nas.oneshot.pytorch.strategy import DARTS, GumbelDARTS, Proxyless, RandomOneShot

    from hmnas_nni.nas.strategy import HMNAS

    warmup, arch = config.schedule()
    if config.strategy == "hmnas":
        return HMNAS(arc_learning_rate=config.arc_lr, mask_learning_rate=config.mask_lr, warmup_epochs=warmup,
                     arch_epochs=arch, tau=config.tau, mask_init=config.mask_init, sparsity=config.sparsity,
                     settle_epochs=config.settle_epochs)
    if config.strategy == "darts":
        return DARTS(arc_learning_rate=config.arc_lr, warmup_epochs=warmup)
    if config.strategy == "gumbel-darts":
        return GumbelDARTS(arc_learning_rate=config.arc_lr, warmup_epochs=warmup)
    if config.strategy == "proxyless":
        return Proxyless(arc_learning_rate=config.arc_lr, warmup_epochs=warmup)
    if config.strategy == "enas":
        from .nni_enas import LightningENAS, enas_missing

        missing = enas_missing()
        if missing:
            raise ValueError(missing)
        return LightningENAS(warmup_epochs=warmup, reward_metric_name="val_acc")
    return RandomOneShot()  # NNI's RandomOneShot has no warm-up


def to_architecture(sample: dict[str, Any], space: nn.Module, strategy: str) -> Architecture:
    """An exported sample as an architecture document: HM-NAS's multi-level form or NNI's ``{label: choice}``."""
    return architecture_of(sample, space, strategy, getattr(space, "hmnas_input_shape", None))


def atomic_write_json(path: Path, doc: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


class PeakMemory:
    """Peak memory of this run: the CUDA allocator's peak on GPU, else the process RSS sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.peak = 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return
        self._stop.clear()
        proc = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                self._stop.wait(0.02)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """Peak in MiB since :meth:`start`."""
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak / 2**20


class SearchMonitor(pl.Callback):
    """After every search epoch: time it, derive the architecture, evaluate supernet and derived network.

    Its history travels in every checkpoint (so a resumed run reports every epoch) and is written to
    ``out/metrics.json`` after each epoch by rank 0; under DDP each rank also writes ``out/ranks/rank{r}.json``
    with hashes of its architecture parameters and its masks' live lists, to check that ranks agree.
    """

    def __init__(self, config: SearchConfig, space: nn.Module, val_data, on_epoch_end=None) -> None:
        self.config = config
        self.space = space
        self.val_data = val_data
        self.on_epoch_end = on_epoch_end
        self.history: list[dict[str, Any]] = []
        self.memory = PeakMemory()
        self._t0 = 0.0
        self.last_arch: Architecture | None = None
        self.global_rank = 0
        self.world_size = 1
        self.ranks: list[dict[str, Any]] = []
        self._data_hash = hashlib.sha256()

    @property
    def state_key(self) -> str:
        return "hmnas.SearchMonitor"

    def state_dict(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history), "ranks": json.dumps(self.ranks)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = json.loads(state_dict.get("history", "[]"))
        self.ranks = json.loads(state_dict.get("ranks", "[]"))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.global_rank, self.world_size = trainer.global_rank, trainer.world_size

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.memory.start()
        self._t0 = time.perf_counter()
        self._data_hash = hashlib.sha256()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Under DDP, hash the labels each rank trained on: ranks see different data yet must agree on the arch."""
        if self.world_size > 1:
            for t in _tensors(batch):
                if not t.is_floating_point():
                    self._data_hash.update(t.detach().cpu().contiguous().numpy().tobytes())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self._t0
        peak = self.memory.stop()
        metrics = self.evaluate(pl_module)
        phase = pl_module.phase() if hasattr(pl_module, "phase") else ("warmup" if trainer.current_epoch <
                                                                        self.config.schedule()[0] else "search")
        metrics = {"epoch": trainer.current_epoch, "phase": phase, **metrics,
                   "epoch_seconds": seconds, "peak_memory_mb": peak}
        self.history = [h for h in self.history if h["epoch"] < metrics["epoch"]] + [metrics]
        pl_module.log_dict({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        _logger.info("epoch %d (%s): supernet %.4f, derived %.4f, gap %.4f, ops %d, edges %d",
                     metrics["epoch"], phase, metrics["supernet_val_acc"], metrics["derived_val_acc"],
                     metrics["derivation_gap"], metrics["ops_kept"], metrics["edges_kept"])
        out = Path(self.config.out)
        if self.world_size > 1:
            self.ranks.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                               "data_sha256": self._data_hash.hexdigest(), **arch_digest(pl_module),
                               "arch": self.last_arch.to_dict()})
            (out / "ranks").mkdir(exist_ok=True)
            atomic_write_json(out / "ranks" / f"rank{self.global_rank}.json",
                              {"rank": self.global_rank, "world_size": self.world_size, "epochs": self.ranks})
        if self.global_rank == 0:
            write_metrics(out, self.config, self.space, self.history, status="running")
            if self.on_epoch_end is not None:
                self.on_epoch_end(dict(metrics))

    @torch.no_grad()
    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        supernet = pl_module.training_module.model
        device = next(supernet.parameters()).device
        arch = to_architecture(pl_module.export(), supernet, self.config.strategy)
        self.last_arch = arch
        derived = derived_of(supernet, arch).to(device)
        was_training = supernet.training
        supernet.eval()
        supernet_acc = accuracy(supernet, self.val_data, self.config.batch_size, device)
        supernet.train(was_training)
        derived_acc = accuracy(derived.eval(), self.val_data, self.config.batch_size, device)
        total_ops = candidate_ops(self.space)
        return {
            "supernet_val_acc": supernet_acc,
            "derived_val_acc": derived_acc,
            "derivation_gap": supernet_acc - derived_acc,
            "ops_kept": arch.ops_kept(),
            "edges_kept": arch.edges_kept(),
            "sparsity": 1.0 - arch.ops_kept() / max(1, total_ops),  # fraction of candidate ops removed
            "params": count_parameters(derived),
        }


def _tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor inside a (nested dict/list/tuple) batch, in a fixed order."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for k in sorted(batch) for t in _tensors(batch[k])]
    if isinstance(batch, (list, tuple)):
        return [t for b in batch for t in _tensors(b)]
    return []


def write_metrics(out: Path, config: SearchConfig, space: nn.Module, history: list[dict[str, Any]],
                  status: str, final: dict[str, Any] | None = None, error: str | None = None) -> None:
    """``out/metrics.json``: config, per-epoch history so far, run status (and final metrics once done)."""
    summary: dict[str, Any] = {"config": asdict(config), "space_args": space_identity(space)[1], "status": status}
    if error:
        summary["error"] = error
    if final is not None:
        summary["final"] = final
    summary["history"] = history
    atomic_write_json(out / "metrics.json", summary)


def _is_global_zero() -> bool:
    """True outside DDP and on rank 0 of a DDP run (Lightning's launcher sets RANK / LOCAL_RANK for the others)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def candidate_ops(space: nn.Module) -> int:
    """Every candidate op of a space: per op choice, and per edge of every cell."""
    total = 0
    for spec in catalogue(space).values():
        if spec.kind == "op":
            total += len(spec.candidates)
        elif spec.kind == "cell":
            edges = sum(i for i in spec.node_ids())
            total += edges * len(spec.candidates)
    return total


def search_inputs(config: SearchConfig) -> tuple[nn.Module, TensorDataset, TensorDataset, DatasetInfo]:
    """The space and the two data halves a search of ``config`` uses (space size taken from the data)."""
    train, _test, info = load_dataset(config.dataset, config.data_root)
    train_split, val_split = search_splits(train, config.subset, config.seed)
    for name, split in (("training", train_split), ("validation", val_split)):
        if len(split) < config.batch_size:
            raise ValueError(f"the {name} half of the data has {len(split)} images, fewer than one batch "
                             f"(--batch-size {config.batch_size}); raise --subset or lower --batch-size")
    from_data = {"in_channels": info.in_channels, "input_size": info.input_size, "num_classes": info.num_classes}
    shape = (info.in_channels, info.input_size, info.input_size)
    args = data_args(config.space, config.space_args, from_data, config.dataset)
    space = fit_input(build_space(config.space, **args), shape)
    space.hmnas_input_shape = list(shape)
    return space, train_split, val_split, info


def run_search(config: SearchConfig, on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run one search as configured; return the final metrics (also written to ``out/metrics.json``).

    With ``config.resume`` the search continues from that folder's ``checkpoints/last.ckpt`` (checked
    against this config before any data is loaded). A :class:`NumericalFault` or a SIGTERM/SIGINT
    (:class:`SearchInterrupted`) propagates after ``metrics.json`` records it; the checkpoints stay.
    Under ``distributed="ddp"`` every rank runs this function; only rank 0 writes results.
    """
    config.validate()
    out = Path(config.out)
    resume_from = None
    if config.resume is not None:
        resume_from, _saved, done = check_resumable(asdict(config), config.resume)
        _logger.info("resuming from %s after %d finished epoch(s)", resume_from, done)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    space, train_split, val_split, info = search_inputs(config)

    monitor = SearchMonitor(config, space, val_split, on_epoch_end)
    checkpoints = EpochCheckpoint(out / "checkpoints")
    samplers = [EpochSampler(len(train_split), config.seed, 0), EpochSampler(len(val_split), config.seed, 1)]
    state = SearchState(asdict(config), samplers)
    stopper = GracefulStop(out / "checkpoints")
    distributed: dict[str, Any] = {}
    if config.distributed == "ddp":
        # masked-out ops take no part in a step: DDP must look for unused parameters
        distributed = {"strategy": "ddp_find_unused_parameters_true", "use_distributed_sampler": True}
    evaluator = Classification(
        train_dataloaders=DataLoader(train_split, batch_size=config.batch_size, sampler=samplers[0], drop_last=True,
                                     num_workers=config.num_workers),
        val_dataloaders=DataLoader(val_split, batch_size=config.batch_size, sampler=samplers[1], drop_last=True,
                                   num_workers=config.num_workers),
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, num_classes=info.num_classes,
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
        callbacks=[state, monitor, checkpoints, stopper], logger=pl.loggers.CSVLogger(out, name="logs"),
        enable_progress_bar=config.progress, enable_model_summary=False, default_root_dir=out, **distributed,
    )
    if resume_from is not None:
        # what NNI's OneShotStrategy.load_state_dict({"ckpt_path": ...}) does, set before the run starts
        evaluator.fit_kwargs.update(ckpt_path=str(resume_from), weights_only=True)
    strategy = make_strategy(config)
    experiment = NasExperiment(space, evaluator, strategy)
    rank_dir = "nni" if _is_global_zero() else f"nni-rank{os.environ.get('RANK', os.environ.get('LOCAL_RANK'))}"
    experiment.config.experiment_working_directory = str((out / rank_dir).resolve())

    started = time.perf_counter()
    try:
        experiment.run()
    except BaseException as e:  # record why the run stopped beside the epochs it finished, then re-raise
        stop = (_find_callback(strategy, GracefulStop) or stopper).interruption(e)
        monitor = _find_callback(strategy, SearchMonitor) or monitor
        if monitor.global_rank == 0:
            status = "interrupted" if isinstance(stop, (SearchInterrupted, KeyboardInterrupt)) else "failed"
            write_metrics(out, config, space, monitor.history, status=status,
                          error=f"{type(stop).__name__}: {stop}")
        if stop is e:
            raise
        raise stop from e
    finally:
        experiment.stop()  # now, not at interpreter exit (when test runners have closed the log streams)
    search_seconds = time.perf_counter() - started

    monitor = _find_callback(strategy, SearchMonitor) or monitor
    if not monitor.history or monitor.last_arch is None:
        raise RuntimeError("the search finished without completing an epoch; see the log above")
    arch = monitor.last_arch
    final = {**monitor.history[-1], "search_seconds": search_seconds,
             "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in monitor.history])),
             "peak_memory_mb": max(h["peak_memory_mb"] for h in monitor.history)}
    if monitor.world_size > 1:
        final.update(global_rank=monitor.global_rank, world_size=monitor.world_size)
    if monitor.global_rank != 0:
        return final
    arch.save(out / "arch.json")
    _save_supernet(strategy.supernet, out / "supernet.safetensors")
    write_metrics(out, config, space, monitor.history, status="finished", final=final)
    try:
        from .plot import plot_architecture

        plot_architecture(arch, out / "cells.png", catalogue(space))
    except Exception as e:  # a drawing never costs the search its results
        _logger.warning("could not draw the cells: %s", e)
    return final


def _find_callback(strategy, kind: type[CallbackT]) -> CallbackT | None:
    """The ``kind`` callback instance the trainer actually ran (NNI may have copied the evaluator)."""
    trainer = getattr(strategy.oneshot_module, "_trainer", None) or getattr(strategy.oneshot_module, "trainer", None)
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, kind):
            return cb
    return None


def _save_supernet(supernet: nn.Module, path: Path) -> None:
    """The supernet body's weights and BN statistics (architecture parameters live in the checkpoint)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in network_weights(supernet).items()}
    fd, tmp = tempfile.mkstemp(prefix=".supernet.", dir=path.parent)
    os.close(fd)
    save_file(state, tmp)
    os.replace(tmp, path)
