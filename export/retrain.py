"""``hmnas retrain``: train a derived network from scratch, or fine-tune it from its searched supernet.

Writes ``model.safetensors`` (timm-keyed weights with the architecture in the header),
``metrics.json`` (held-out test accuracy and the run's settings), ``arch.json`` (the architecture
with its dataset's input config) and ``config.json`` (so ``timm.create_model('local-dir:OUT')`` works).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from hmnas_nni.format.architecture import Architecture, ArchitectureError
from hmnas_nni.format.files import OutputExists, guard_outputs, sha256, write_json

from .hmnas_timm import HmnasNet, WeightsError, resolve_architecture, save_weights

OUTPUTS = ("model.safetensors", "metrics.json", "arch.json", "config.json")
SUPERNET_FILES = ("supernet.safetensors", "supernet.ckpt", "supernet.pt", "supernet.pth")


class RetrainError(RuntimeError):
    """A retrain request that cannot run as given; the message says what to change."""


def add_retrain_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hmnas retrain`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "retrain", help="train a derived architecture and report held-out test accuracy",
        description="Train the derived network of ARCH from scratch (or fine-tune it from a searched supernet), "
                    "report its accuracy on the dataset's held-out test set, write model.safetensors and metrics.json.",
    )
    p.add_argument("arch", help="architecture JSON written by `hmnas search`")
    p.add_argument("--dataset", required=True, help="digits, fashion-mnist or cifar10")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files (see `hmnas_nni.search.data`)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (0 only evaluates; default 10)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--from-supernet", default=None, metavar="DIR",
                   help="search output folder (arch.json + supernet weights): inherit its weights, then fine-tune")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.05 SGD / 2e-3 AdamW)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--weight-decay", type=float, default=3e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="train on the first N training images only (quick runs; recorded in metrics.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.set_defaults(func=run_retrain)
    return p


def run_retrain(args: argparse.Namespace) -> int:
    """CLI entry: run :func:`retrain` and turn expected failures into one-line errors (exit 2)."""
    try:
        metrics = retrain(
            arch_path=args.arch, dataset=args.dataset, epochs=args.epochs, out=args.out,
            from_supernet=args.from_supernet, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
            weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, limit_train=args.limit_train,
            seed=args.seed, device=args.device, data_root=args.data_root, progress=not args.no_progress,
            force=args.force,
        )
    except (RetrainError, ArchitectureError, WeightsError, OutputExists, FileNotFoundError, ValueError) as e:
        print(f"hmnas retrain: error: {e}", file=sys.stderr)
        return 2
    print(f"test accuracy {metrics['test_accuracy']:.4f} on {metrics['test_images']} held-out images "
          f"({metrics['dataset']}, {metrics['epochs']} epochs) -> {Path(args.out) / 'model.safetensors'}")
    return 0


def _device(name: str) -> torch.device:
    """Resolve ``auto`` to CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RetrainError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return dev


def load_supernet_dir(folder: str | Path) -> tuple[Architecture, dict[str, torch.Tensor], Path]:
    """Read a search output folder: its ``arch.json`` and the supernet weights beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RetrainError(f"--from-supernet {folder} is not a folder; pass the --out folder of `hmnas search`")
    arch = Architecture.load(folder / "arch.json")
    for name in SUPERNET_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        raise RetrainError(f"--from-supernet {folder} holds no supernet weights (looked for "
                           f"{', '.join(SUPERNET_FILES)}); re-run `hmnas search` so it saves the supernet")
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
    return arch, _strip_to_net(state), path


def _strip_to_net(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``model.``, ``module.``) so keys start at the space (``net.``) or its body."""
    for prefix in ("model.", "module.", "_model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _evaluate(model: nn.Module, data: TensorDataset, device: torch.device, batch_size: int) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data``."""
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=max(batch_size, 256)):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    return correct / max(n, 1), loss_sum / max(n, 1)


def retrain(
    arch_path: str | Path, dataset: str, epochs: int, out: str | Path, from_supernet: str | Path | None = None,
    batch_size: int = 128, lr: float | None = None, optimizer: str = "sgd", weight_decay: float = 3e-4,
    label_smoothing: float = 0.0, limit_train: int | None = None, seed: int = 0, device: str = "auto",
    data_root: str | None = None, progress: bool = True, force: bool = False,
) -> dict[str, Any]:
    """Train (or fine-tune) the derived network of ``arch_path`` and write weights and metrics to ``out``."""
    from hmnas_nni.search.data import load_dataset

    if epochs < 0:
        raise RetrainError(f"--epochs must be 0 or more, got {epochs}")
    if batch_size < 1:
        raise RetrainError(f"--batch-size must be positive, got {batch_size}")
    arch, _ = resolve_architecture(arch_path)
    out = guard_outputs(out, OUTPUTS, force)
    dev = _device(device)
    torch.manual_seed(seed)

    train, test, info = load_dataset(dataset, root=data_root)
    if int(arch.space_args.get("in_channels", info.in_channels)) != info.in_channels:
        raise RetrainError(
            f"architecture takes {arch.space_args['in_channels']}-channel input but {dataset} has "
            f"{info.in_channels} channel(s); search on {dataset} or pick a dataset with matching channels"
        )
    if limit_train is not None:
        if limit_train < 1:
            raise RetrainError(f"--limit-train must be positive, got {limit_train}")
        x, y = train.tensors
        train = TensorDataset(x[:limit_train], y[:limit_train])

    extras = {"dataset": {"name": info.name, "mean": list(info.mean), "std": list(info.std)}}
    arch_doc = arch.to_dict() | extras
    if arch.space_args.get("input_size") != info.input_size:
        arch_doc["space_args"] = dict(arch.space_args, input_size=info.input_size)

    inherited_from = None
    body = None
    if from_supernet is not None:
        from hmnas_nni.nas.derive import WeightsMismatch
        from hmnas_nni.nas.rebuild import network_from_architecture

        searched, state, weights_path = load_supernet_dir(from_supernet)
        if searched.to_dict() != arch.to_dict():
            print(f"note: {arch_path} differs from {from_supernet}/arch.json; inheriting weights for {arch_path}",
                  file=sys.stderr)
        try:
            body = network_from_architecture(arch, state, where=f"supernet weights {weights_path}")
        except WeightsMismatch as e:
            raise RetrainError(f"supernet {weights_path} does not fit the architecture: {e}") from None
        inherited_from = {"path": str(weights_path), "sha256": sha256(weights_path)}

    model = HmnasNet(arch_doc, num_classes=info.num_classes, body=body).to(dev)
    params = sum(p.numel() for p in model.parameters())
    lr = lr if lr is not None else (0.05 if optimizer == "sgd" else 2e-3)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                                     weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    total_steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps)
                                                                                  / total_steps)))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    inherited_acc = None
    if inherited_from is not None:
        inherited_acc, _ = _evaluate(model, test, dev, batch_size)
        inherited_from["test_accuracy_before_finetune"] = inherited_acc

    history: list[dict[str, float]] = []
    t0 = time.time()
    bar = _progress(total=epochs * len(loader), enabled=progress)
    for epoch in range(epochs):
        model.train()
        seen, correct, loss_sum = 0, 0, 0.0
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            loss = criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            if not torch.isfinite(loss):
                raise RetrainError(f"loss became {loss.item()} in epoch {epoch + 1}; lower --lr (now {lr})")
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen})
    bar.close()
    train_time = time.time() - t0
    test_acc, test_loss = _evaluate(model, test, dev, batch_size)

    model = model.cpu()
    metrics: dict[str, Any] = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "test_images": len(test),
        "dataset": info.name,
        "train_images": len(train),
        "epochs": epochs,
        "history": history,
        "init": "supernet" if inherited_from else "scratch",
        "inherited": inherited_from,
        "arch": str(arch_path),
        "space": arch.space,
        "strategy": arch.strategy,
        "params": params,
        "settings": {"batch_size": batch_size, "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
                     "label_smoothing": label_smoothing, "schedule": "cosine", "seed": seed,
                     "limit_train": limit_train},
        "train_seconds": round(train_time, 2),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "note": "test accuracy is measured once, after the last epoch; the test set takes no part in training",
    }
    write_json(out / "arch.json", arch_doc)
    save_weights(model, out / "model.safetensors", extra={"dataset": info.name, "test_accuracy": f"{test_acc:.6f}"})
    write_json(out / "config.json", timm_config(model, arch_doc))
    metrics["weights_sha256"] = sha256(out / "model.safetensors")
    write_json(out / "metrics.json", metrics)
    return metrics


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
    if not enabled or total == 0:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="retrain", unit="step", dynamic_ncols=True, mininterval=1.0)
