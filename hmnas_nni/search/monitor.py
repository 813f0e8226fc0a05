"""What a search records after every epoch: time, memory, the derived architecture and both accuracies.

:class:`SearchMonitor`'s history travels in every checkpoint (so a resumed run reports every epoch) and is
written to ``out/metrics.json`` after each epoch by rank 0; under DDP each rank also writes
``out/ranks/rank{r}.json`` with hashes of its architecture parameters and its masks' live lists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.format.files import write_json
from hmnas_nni.nas.lightning import PHASES as HMNAS_PHASES
from hmnas_nni.nas.rebuild import architecture_of, derived_of
from hmnas_nni.spaces import space_identity
from hmnas_nni.spaces.catalogue import candidate_ops

from .evaluation import accuracy, count_parameters
from .memory import PeakMemory
from .reliability import arch_digest

_logger = logging.getLogger(__name__)

#: Every phase an epoch can be in: HM-NAS's own phases, then ``search`` (NNI's strategies after warm-up).
#: The NNI trial reports a phase as its index here.
PHASES: tuple[str, ...] = (*HMNAS_PHASES, "search")


def epoch_phase(pl_module: pl.LightningModule, epoch: int, warmup_epochs: int) -> str:
    """The phase of ``epoch``: HM-NAS's module knows its own; other strategies warm up, then search."""
    if hasattr(pl_module, "phase"):
        return pl_module.phase(epoch)
    return "warmup" if epoch < warmup_epochs else "search"


def phase_code(name: Any) -> int:
    """Index of ``name`` in :data:`PHASES` (numbers pass through), -1 for an unknown phase."""
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return int(name)
    return PHASES.index(name) if name in PHASES else -1


def write_metrics(out: Path, config: Any, space: nn.Module, history: list[dict[str, Any]], status: str,
                  final: dict[str, Any] | None = None, error: str | None = None) -> None:
    """``out/metrics.json``: config, per-epoch history so far, run status (and final metrics once done)."""
    summary: dict[str, Any] = {"config": asdict(config), "space_args": space_identity(space)[1], "status": status}
    if error:
        summary["error"] = error
    if final is not None:
        summary["final"] = final
    summary["history"] = history
    write_json(out / "metrics.json", summary)


class SearchMonitor(pl.Callback):
    """After every search epoch: time it, derive the architecture, evaluate supernet and derived network."""

    def __init__(self, config: Any, space: nn.Module, val_data: Any, on_epoch_end: Any = None) -> None:
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
        phase = epoch_phase(pl_module, trainer.current_epoch, self.config.schedule()[0])
        metrics = {"epoch": trainer.current_epoch, "phase": phase, **self.evaluate(pl_module),
                   "epoch_seconds": seconds, "peak_memory_mb": peak}
        self.history = [h for h in self.history if h["epoch"] < metrics["epoch"]] + [metrics]
        pl_module.log_dict({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        _logger.info("epoch %d (%s):%s supernet %.4f, derived %.4f, gap %.4f, ops %d, edges %d, %.1f s",
                     metrics["epoch"], phase, _losses(trainer), metrics["supernet_val_acc"],
                     metrics["derived_val_acc"], metrics["derivation_gap"], metrics["ops_kept"],
                     metrics["edges_kept"], seconds)
        out = Path(self.config.out)
        if self.world_size > 1:
            self._write_rank(trainer, pl_module, out)
        if self.global_rank == 0:
            write_metrics(out, self.config, self.space, self.history, status="running")
            if self.on_epoch_end is not None:
                self.on_epoch_end(dict(metrics))

    def _write_rank(self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: Path) -> None:
        """``out/ranks/rank{r}.json``: this rank's architecture state after every epoch."""
        self.ranks.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                           "data_sha256": self._data_hash.hexdigest(), **arch_digest(pl_module),
                           "arch": self.last_arch.to_dict()})
        (out / "ranks").mkdir(exist_ok=True)
        write_json(out / "ranks" / f"rank{self.global_rank}.json",
                   {"rank": self.global_rank, "world_size": self.world_size, "epochs": self.ranks})

    @torch.no_grad()
    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Validation accuracy of the supernet and of the derived network with inherited weights."""
        supernet = pl_module.training_module.model
        device = next(supernet.parameters()).device
        arch = architecture_of(pl_module.export(), supernet, self.config.strategy)
        derived = derived_of(supernet, arch)
        self.last_arch = arch
        derived = derived.to(device)
        was_training = supernet.training
        supernet.eval()
        supernet_acc = accuracy(supernet, self.val_data, self.config.batch_size, device)
        supernet.train(was_training)
        derived_acc = accuracy(derived.eval(), self.val_data, self.config.batch_size, device)
        return {
            "supernet_val_acc": supernet_acc,
            "derived_val_acc": derived_acc,
            "derivation_gap": supernet_acc - derived_acc,
            "ops_kept": arch.ops_kept(),
            "edges_kept": arch.edges_kept(),
            "sparsity": 1.0 - arch.ops_kept() / max(1, candidate_ops(self.space)),  # fraction of ops removed
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


def _losses(trainer: pl.Trainer) -> str:
    """The epoch's logged losses as `` train_loss 0.412,``, for the one line an epoch writes to the log."""
    shown = [f" {k} {float(v):.4f}," for k, v in sorted(trainer.callback_metrics.items())
             if "loss" in k and getattr(v, "numel", lambda: 1)() == 1]
    return "".join(shown)
