"""``hmnas retrain``: train a derived network from scratch, or fine-tune it from its searched supernet.

Writes, together (see :mod:`hmnas_nni.format.outputs`): ``model.safetensors`` (timm-keyed weights with the
architecture in the header), ``metrics.json`` (held-out test accuracy and the run's settings), ``arch.json``
(the architecture with its dataset's input config) and ``config.json`` (so
``timm.create_model('local-dir:OUT')`` works).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.files import sha256, write_json
from hmnas_nni.format.outputs import OutputFolder, verify_results
from hmnas_nni.format.progress import on_terminal
from hmnas_nni.format.weights import check_weights

from .derived_model import derived_model, is_timm_model
from .hmnas_timm import HmnasNet, resolve_architecture, save_weights

OUTPUTS = ("model.safetensors", "metrics.json", "arch.json", "config.json")
SUPERNET_FILES = ("supernet.safetensors", "supernet.ckpt", "supernet.pt", "supernet.pth")
OPTIMIZERS = ("sgd", "adamw")

_logger = logging.getLogger(__name__)


class RetrainError(UsageError):
    """A retrain request that cannot run as given; the message says what to change."""


@dataclass
class RetrainSettings:
    """How to train: every value range-checked by :meth:`check` before any data is loaded."""

    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "sgd"
    weight_decay: float = 3e-4
    label_smoothing: float = 0.0
    limit_train: int | None = None
    seed: int = 0

    def check(self) -> RetrainSettings:
        """Raise :class:`RetrainError` naming the first value out of range."""
        ints = {"epochs": (self.epochs, 0), "batch_size": (self.batch_size, 1), "seed": (self.seed, 0)}
        if self.limit_train is not None:
            ints["limit_train"] = (self.limit_train, 1)
        for name, (value, low) in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise RetrainError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise RetrainError(f"--optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        _check_float("lr", self.lr, 0.0, math.inf, low_open=True, optional=True)
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0)
        return self

    def peak_lr(self) -> float:
        """The given learning rate, or the optimizer's default (0.05 SGD, 2e-3 AdamW)."""
        return self.lr if self.lr is not None else (0.05 if self.optimizer == "sgd" else 2e-3)


def _check_float(name: str, value: Any, low: float, high: float, low_open: bool = False,
                 optional: bool = False) -> None:
    """Refuse a value that is not a finite number in ``[low, high)`` (``(low, high)`` when ``low_open``)."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value >= high or (low_open and value == low):
        span = f"{'>' if low_open else '>='} {low:g}" + (f" and < {high:g}" if math.isfinite(high) else "")
        raise RetrainError(f"--{name.replace('_', '-')} must be a finite number {span}, got {value!r}")


def _device(name: str) -> torch.device:
    """Resolve ``auto`` to CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RetrainError(f"--device {name!r} is not a device; use auto, cpu or cuda[:i]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RetrainError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return dev


def load_supernet_dir(folder: str | Path) -> tuple[Architecture, dict[str, torch.Tensor], Path]:
    """Read a search output folder: its ``arch.json`` and the supernet weights beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RetrainError(f"--from-supernet {folder} is not a folder; pass the --out folder of `hmnas search`")
    arch = Architecture.load(folder / "arch.json")
    path = next((folder / n for n in SUPERNET_FILES if (folder / n).is_file()), None)
    if path is None:
        raise RetrainError(f"--from-supernet {folder} holds no supernet weights (looked for "
                           f"{', '.join(SUPERNET_FILES)}); re-run `hmnas search` so it saves the supernet")
    verify_results(folder, ("arch.json", path.name))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise RetrainError(f"cannot read supernet weights {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                           "the file may be truncated: re-run `hmnas search`") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RetrainError(f"{path} does not hold a state dict of tensors; re-run `hmnas search`")
    check_weights(state, path, RetrainError)
    return arch, _strip_to_net(state), path


def _strip_to_net(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``model.``, ``module.``) so keys start at the space (``net.``) or its body."""
    for prefix in ("model.", "module.", "_model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _inherit(arch: Architecture, arch_path: Any, from_supernet: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The derived network's body with the searched supernet's weights, and where they came from."""
    from hmnas_nni.nas.rebuild import WeightsMismatch, network_of

    searched, state, weights_path = load_supernet_dir(from_supernet)
    if searched.to_dict() != arch.to_dict():
        print(f"note: {arch_path} differs from {from_supernet}/arch.json; inheriting weights for {arch_path}",
              file=sys.stderr)
    try:
        body = network_of(arch, state)
    except WeightsMismatch as e:
        raise RetrainError(f"supernet {weights_path} does not fit the architecture: {e}") from None
    return body, {"path": str(weights_path), "sha256": sha256(weights_path)}


def _training_data(dataset: str, data_root: str | None, arch: Architecture, limit: int | None) -> tuple[Any, ...]:
    """(train, test, info) of ``dataset``, the training set cut to ``limit`` images; checked against ``arch``."""
    from hmnas_nni.search.data import load_dataset

    train, test, info = load_dataset(dataset, root=data_root)
    if int(arch.space_args.get("in_channels", info.in_channels)) != info.in_channels:
        raise RetrainError(
            f"architecture takes {arch.space_args['in_channels']}-channel input but {dataset} has "
            f"{info.in_channels} channel(s); search on {dataset} or pick a dataset with matching channels")
    if limit is not None:
        if limit > len(train):
            raise RetrainError(f"--limit-train {limit} is more than the {len(train):,} training images of {dataset}; "
                               f"pass --limit-train {len(train)} or less, or leave it out")
        x, y = train.tensors
        train = TensorDataset(x[:limit], y[:limit])
    return train, test, info


def retrain(
    arch_path: str | Path, dataset: str, epochs: int, out: str | Path, from_supernet: str | Path | None = None,
    batch_size: int = 128, lr: float | None = None, optimizer: str = "sgd", weight_decay: float = 3e-4,
    label_smoothing: float = 0.0, limit_train: int | None = None, seed: int = 0, device: str = "auto",
    data_root: str | None = None, progress: bool = True, force: bool = False,
) -> dict[str, Any]:
    """Train (or fine-tune) the derived network of ``arch_path`` and write weights and metrics to ``out``."""
    settings = RetrainSettings(epochs, batch_size, lr, optimizer, weight_decay, label_smoothing, limit_train,
                               seed).check()
    arch, _ = resolve_architecture(arch_path)
    dev = _device(device)
    train, test, info = _training_data(dataset, data_root, arch, limit_train)
    arch_doc = arch.to_dict() | {"dataset": {"name": info.name, "mean": list(info.mean), "std": list(info.std)}}
    if "input_size" in arch.space_args and arch.space_args["input_size"] != info.input_size:
        arch_doc["space_args"] = dict(arch.space_args, input_size=info.input_size)
        if arch.input_shape is not None:
            arch_doc["input_shape"] = [arch.input_shape[0], info.input_size, info.input_size]
    body, inherited = _inherit(arch, arch_path, from_supernet) if from_supernet is not None else (None, None)
    torch.manual_seed(seed)
    model = derived_model(arch_doc, num_classes=info.num_classes, body=body).to(dev)
    with OutputFolder(out, "hmnas retrain", force=force) as folder:
        if inherited is not None:
            inherited["test_accuracy_before_finetune"] = _evaluate(model, test, dev, batch_size)[0]
        t0 = time.time()
        history = train_network(model, train, settings, dev, progress)
        train_time = time.time() - t0
        test_acc, test_loss = _evaluate(model, test, dev, batch_size)
        metrics = _metrics(model, settings, arch, arch_path, info, (len(train), len(test)), inherited, dev) | {
            "test_accuracy": test_acc, "test_loss": test_loss, "history": history,
            "train_seconds": round(train_time, 2)}
        model = model.cpu()
        write_json(folder.staged("arch.json"), arch_doc)
        save_weights(model, folder.staged("model.safetensors"),
                     extra={"dataset": info.name, "test_accuracy": f"{test_acc:.6f}"})
        if is_timm_model(model):
            write_json(folder.staged("config.json"), timm_config(model, arch_doc))
        else:
            metrics["timm"] = ("no config.json: the derived network has no stem + cells/blocks layout for timm's "
                               "CNN interface; hmnas export and hmnas bench take it as it is")
        metrics["weights_sha256"] = sha256(folder.staged("model.safetensors"))
        write_json(folder.staged("metrics.json"), metrics)
        folder.commit("metrics.json")
    return metrics


def _evaluate(model: nn.Module, data: TensorDataset, device: torch.device, batch_size: int) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` (in eval mode) on ``data``."""
    from hmnas_nni.search.evaluation import evaluate

    return evaluate(model.eval(), data, max(batch_size, 256), device)


def train_network(model: nn.Module, train: TensorDataset, s: RetrainSettings, dev: torch.device,
                  progress: bool) -> list[dict[str, float]]:
    """SGD (Nesterov) or AdamW with a cosine schedule over every step; the per-epoch training loss and accuracy."""
    lr = s.peak_lr()
    if s.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                                     weight_decay=s.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=s.weight_decay)
    loader = DataLoader(train, batch_size=s.batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(s.seed))
    total = max(1, s.epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    criterion = nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
    history: list[dict[str, float]] = []
    bar = _progress(total=s.epochs * len(loader), enabled=progress)
    for epoch in range(s.epochs):
        model.train()
        seen, correct, loss_sum = 0, 0, 0.0
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            loss = criterion(logits, y)
            if not torch.isfinite(loss):
                raise RetrainError(f"loss became {loss.item()} in epoch {epoch + 1}; lower --lr (now {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen})
        if isinstance(bar, _NoBar) and progress:
            _logger.info("retrain epoch %d/%d: train loss %.4f, train accuracy %.4f", epoch + 1, s.epochs,
                         loss_sum / seen, correct / seen)
    bar.close()
    return history


def _metrics(model: nn.Module, s: RetrainSettings, arch: Architecture, arch_path: Any, info: Any,
             sizes: tuple[int, int], inherited: dict[str, Any] | None, dev: torch.device) -> dict[str, Any]:
    """What ``metrics.json`` records about the run besides its results."""
    return {
        "test_images": sizes[1], "dataset": info.name, "train_images": sizes[0], "epochs": s.epochs,
        "init": "supernet" if inherited else "scratch", "inherited": inherited, "arch": str(arch_path),
        "space": arch.space, "strategy": arch.strategy, "params": sum(p.numel() for p in model.parameters()),
        "settings": {"batch_size": s.batch_size, "lr": s.peak_lr(), "optimizer": s.optimizer,
                     "weight_decay": s.weight_decay, "label_smoothing": s.label_smoothing, "schedule": "cosine",
                     "seed": s.seed, "limit_train": s.limit_train},
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "note": "test accuracy is measured once, after the last epoch; the test set takes no part in training",
    }


def timm_config(model: HmnasNet, arch_doc: dict[str, Any]) -> dict[str, Any]:
    """timm hub-style ``config.json``: ``timm.create_model('local-dir:OUT', pretrained=True)`` rebuilds the model."""
    cfg = {k: v for k, v in model.pretrained_cfg.items()
           if v is not None and k not in ("url", "file", "state_dict", "hf_hub_id", "source", "architecture", "tag")}
    return {
        "architecture": "hmnas",
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "model_args": {"arch": json.loads(json.dumps(arch_doc))},
        "pretrained_cfg": json.loads(json.dumps(cfg)),
    }


class _NoBar:
    """Stand-in for a progress bar when progress is off."""

    def update(self, n: int) -> None:
        """Do nothing."""

    def set_postfix(self, **kw: Any) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar over all training steps, or a silent stand-in."""
    if not enabled or total == 0 or not on_terminal():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="retrain", unit="step", dynamic_ncols=True, mininterval=1.0)
