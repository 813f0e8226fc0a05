"""What keeps a search reproducible across faults: epoch-seeded data order, RNG state, graceful stops, resume checks.

- :class:`EpochSampler` shuffles by ``(seed, stream, epoch)``, so a resumed run (or every DDP rank) replays
  exactly the data order of an uninterrupted one;
- :class:`SearchState` stores the RNG states and the search config in every Lightning checkpoint, reseeds
  every RNG from ``(seed, epoch)`` at each epoch start and re-derives the mask hierarchy after a load;
- :class:`GracefulStop` turns SIGTERM / SIGINT into a stop at the next step boundary, with a checkpoint;
- :func:`arch_digest` hashes the architecture state, to check that DDP ranks agree.

Checkpoints and ``--resume`` are in :mod:`hmnas_nni.search.resume`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Sampler

_logger = logging.getLogger(__name__)



class SearchInterrupted(Exception):
    """The search stopped on SIGTERM / SIGINT at a step boundary; ``signum`` says which, the checkpoints say where.

    (Raised inside Lightning's loop, so an ``Exception``; outside the loop a signal raises
    :class:`hmnas_nni.format.errors.Interrupted`.)
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers: the same parts give the same seed in every process."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class EpochSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``(seed, stream, epoch)``: no hidden generator state to lose."""

    def __init__(self, size: int, seed: int, stream: int) -> None:
        self.size = size
        self.seed = seed
        self.stream = stream
        self.epoch = 0
        self.epoch_fn: Callable[[], int] | None = None  # set to the trainer's epoch counter by SearchState

    def set_epoch(self, epoch: int) -> None:
        """Lightning's hook; the trainer's own counter wins when :attr:`epoch_fn` is set."""
        self.epoch = epoch

    def current_epoch(self) -> int:
        """The epoch whose order :meth:`__iter__` yields."""
        return int(self.epoch_fn()) if self.epoch_fn is not None else self.epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.stream, self.current_epoch()))
        return iter(torch.randperm(self.size, generator=g).tolist())


def rng_states() -> dict[str, Any]:
    """Every RNG this search draws from, as tensors/lists that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = json.loads(states["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def reseed(seed: int, epoch: int) -> None:
    """Seed python, numpy and torch from ``(seed, epoch)``: an epoch draws the same numbers however it was reached."""
    s = mix_seed(seed, epoch, 7)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class SearchState(pl.Callback):
    """Puts the config and RNG states into every checkpoint; reseeds per epoch; re-derives masks after a load."""

    def __init__(self, config: dict[str, Any], samplers: list[EpochSampler]) -> None:
        self.config = config
        self.samplers = samplers
        self.restored_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return "hmnas.SearchState"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Tie the samplers to the trainer's epoch counter (restored from a checkpoint before data is drawn)."""
        for s in self.samplers:
            s.epoch_fn = lambda: trainer.current_epoch

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Order every optimizer's parameters as the module lists them, before a checkpoint's state is loaded.

        NNI's ``DartsLightningModule.arch_parameters()`` returns ``list(set(...))``, whose order changes from
        process to process; optimizer state is saved by position, so a resumed Adam would otherwise give one
        parameter another's moments (or fail on a shape mismatch).
        """
        order = {id(p): i for i, p in enumerate(pl_module.parameters())}
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["params"].sort(key=lambda p: order.get(id(p), len(order)))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a load, the hierarchy's forced/alive/live state follows the loaded mask scores."""
        hierarchy = getattr(pl_module, "hierarchy", None)
        if hierarchy is not None:
            hierarchy.apply()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reseed(int(self.config.get("seed", 0)), trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"config": json.dumps(self.config, sort_keys=True), "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            set_rng_states(state_dict["rng"])


class GracefulStop(pl.Callback):
    """SIGTERM / SIGINT stop the search at the next step boundary, writing ``interrupted.ckpt`` first.

    ``last.ckpt`` (the last finished epoch) is what ``--resume`` continues from; the interrupted
    checkpoint keeps the partial epoch for inspection. A second SIGINT interrupts at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum
        _logger.warning("received %s: stopping after this step", signal.Signals(signum).name)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.requested is not None:
            name = signal.Signals(self.requested).name
            raise SearchInterrupted(self.requested, f"stopped by {name} at epoch {trainer.current_epoch}, "
                                                    f"step {batch_idx}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning's own SIGTERM handling may end the loop before another step ends: still report the stop."""
        if self.requested is not None:
            name = signal.Signals(self.requested).name
            raise SearchInterrupted(self.requested, f"stopped by {name} at epoch {trainer.current_epoch}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        stop = self.interruption(exception)
        if isinstance(stop, SearchInterrupted) and trainer.world_size == 1:
            path = self.checkpoint_dir / "interrupted.ckpt"
            try:
                trainer.save_checkpoint(path)
            except OSError as e:  # a full disk must not hide the stop itself
                _logger.warning("%s; could not write %s: %s", stop, path, e)
                return
            _logger.warning("%s; wrote %s", stop, path)

    def interruption(self, exception: BaseException) -> BaseException:
        """``exception`` as the stop it was, when a signal asked for one.

        A SIGTERM that lands between an epoch's last step and its end is raised by Lightning itself, as a
        ``SIGTERMException`` (a ``SystemExit`` with status 0); the search must still report it as interrupted.
        Any other exception (a numerical fault, a bug) stays what it is.
        """
        if self.requested is None or not isinstance(exception, SystemExit):
            return exception
        name = signal.Signals(self.requested).name
        return SearchInterrupted(self.requested, f"stopped by {name} at the end of an epoch")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def arch_digest(pl_module: pl.LightningModule) -> dict[str, Any]:
    """Hashes of the architecture parameters and mask scores, and every mask's live list: equal across DDP ranks."""
    named = dict(pl_module.named_parameters())
    arch = {n: p for n, p in named.items() if any(t in n for t in ("_arch_alpha", "_edge_gate", ".scores"))}
    h = hashlib.sha256()
    for name in sorted(arch):
        h.update(name.encode())
        h.update(arch[name].detach().cpu().contiguous().numpy().tobytes())
    hierarchy = getattr(pl_module, "hierarchy", None)
    live = {}
    if hierarchy is not None:
        live = {name: list(m.live) for name, m in hierarchy.masks.items()}
    return {"arch_sha256": h.hexdigest(), "arch_tensors": len(arch), "live": live}
