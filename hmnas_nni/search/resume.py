"""Checkpoints and ``--resume``: written in-folder every epoch, read back only as data, checked against the config.

- :class:`EpochCheckpoint` writes ``last.ckpt`` after every training epoch through :class:`InFolderCheckpointIO`
  (a temporary file in the checkpoint's own folder, renamed over the old one);
- :func:`read_checkpoint` opens a checkpoint for ``--resume`` with ``torch.load(weights_only=True)`` and turns
  every failure into a one-line :class:`ResumeError`; :func:`check_resumable` compares its config with this run's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.files import atomic_path

#: SearchConfig fields that may differ between a run and its resume (where to run, how to show it, budget).
RESUMABLE_CHANGES = frozenset({"out", "resume", "epochs", "budget", "progress", "num_workers", "accelerator", "devices",
                               "distributed", "force"})


class ResumeError(UsageError):
    """A ``--resume`` folder or checkpoint that cannot continue this search; the message says why and what to do."""


class InFolderCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving through a temporary file in the checkpoint's own folder.

    Lightning's own writer stages the file elsewhere and copies it over the old one, so a full disk left a
    truncated ``last.ckpt``; here the old checkpoint stays until the new one is complete and renamed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("InFolderCheckpointIO takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialised first, so a full disk surfaces as an OSError of the write
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())


class EpochCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` writing ``last.ckpt`` after every training epoch, with no top-k files.

    (Lightning saves ``last`` only alongside a top-k checkpoint, and a search has no metric to rank by.)
    """

    def __init__(self, dirpath: str | Path, saved_epoch: int | None = None) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, save_on_train_epoch_end=True)
        self.saved_epoch = saved_epoch  # the epoch last.ckpt holds (None: no checkpoint yet)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self.saved_epoch = trainer.current_epoch


def checkpoint_path(folder: str | Path) -> Path:
    """``folder/checkpoints/last.ckpt`` of an earlier run, or a :class:`ResumeError` naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResumeError(f"--resume {folder}: no such folder; pass the --out folder of the search to continue")
    path = folder / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ResumeError(f"--resume {folder}: no checkpoint at {path}; a search writes it after its first epoch, "
                          "so start this one afresh (without --resume)")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``; corrupt or foreign files raise :class:`ResumeError`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ResumeError(f"--resume: cannot read checkpoint {path} ({type(e).__name__}: {first}); it is truncated "
                          "or not a checkpoint of `hmnas search`: delete it to restart from scratch") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "epoch" not in ckpt:
        raise ResumeError(f"--resume: {path} is not a Lightning checkpoint of `hmnas search` "
                          "(no state_dict/epoch); pass the --out folder of an hmnas search")
    return ckpt


def saved_config(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """The search config stored in a checkpoint by :class:`SearchState`."""
    state = (ckpt.get("callbacks") or {}).get("hmnas.SearchState")
    if not isinstance(state, dict) or "config" not in state:
        raise ResumeError(f"--resume: {path} carries no search config; it was not written by `hmnas search`")
    return json.loads(state["config"])


def check_resumable(config: dict[str, Any], folder: str | Path) -> tuple[Path, dict[str, Any], int]:
    """Validate ``--resume folder`` against ``config``; return the checkpoint path, its config and epochs done."""
    path = checkpoint_path(folder)
    ckpt = read_checkpoint(path)
    saved = saved_config(ckpt, path)
    diffs = [f"{k}={saved.get(k)!r} (now {config.get(k)!r})" for k in sorted(set(saved) | set(config))
             if k not in RESUMABLE_CHANGES and saved.get(k) != config.get(k)]
    if diffs:
        raise ResumeError(f"--resume {folder}: that search ran with {', '.join(diffs)}; pass the same options "
                          "as the original run (only --epochs, --out and where-to-run options may change)")
    done = int(ckpt["epoch"]) + 1
    if done >= int(config["epochs"]):
        raise ResumeError(f"--resume {folder}: the search already finished its {done} epoch(s); pass --epochs N "
                          f"with N > {done} to search longer")
    return path, saved, done
