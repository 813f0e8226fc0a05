"""Measuring networks: accuracy on a dataset, parameter counts, BatchNorm re-estimation."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 256,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` (in whatever train/eval mode it is) over ``data``."""
    correct = total = 0
    loss = 0.0
    for x, y in DataLoader(data, batch_size=batch_size):
        logits = model(x.to(device)).cpu()
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        total += len(y)
    return correct / max(1, total), loss / max(1, total)


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 256, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` (in whatever train/eval mode it is) over ``data``."""
    return evaluate(model, data, batch_size, device)[0]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (weights, not buffers)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dataset, batches: int = 10, batch_size: int = 64,
                          device: torch.device | str = "cpu") -> nn.Module:
    """Re-estimate BN running statistics on a few training batches (cumulative average), then eval mode.

    A network cut out of a supernet inherits statistics of the supernet's mixture; this is the
    common, fair fix before measuring its accuracy.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for i, (x, _) in enumerate(DataLoader(data, batch_size=batch_size, shuffle=False)):
        if i >= batches:
            break
        model(x.to(device))
    return model.eval()
