"""What a weights file must hold before any network loads it: floating-point tensors with finite values only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .errors import UsageError

#: safetensors metadata ``format`` of a search's ``supernet.safetensors`` (every candidate op, not a network).
SUPERNET_FORMAT = "hmnas-supernet/1"
#: Integer buffers a network legitimately carries (BatchNorm's batch counter).
INTEGER_BUFFERS = ("num_batches_tracked",)


class BadWeights(UsageError):
    """A weights file with non-float or non-finite tensors."""


def check_weights(tensors: Mapping[str, Any], path: str | os.PathLike, error: type[Exception] = BadWeights) -> None:
    """Raise ``error`` (one line) when a tensor is not floating point or holds NaN / inf."""
    import torch

    for name, t in tensors.items():
        if name.endswith(INTEGER_BUFFERS):
            continue
        if not t.is_floating_point():
            raise error(f"weights file {path}: tensor {name} is {t.dtype}, not floating point; it is not a network's "
                        "weights file: pass the model.safetensors that hmnas_nni.export.retrain.retrain "
                        "(`hmnas retrain`) wrote")
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise error(f"weights file {path}: tensor {name} holds {bad} non-finite value(s) (NaN or inf); the "
                        "training that wrote it diverged: retrain with a lower lr (--lr)")
