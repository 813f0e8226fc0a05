"""Safetensors weights of :class:`~hmnas_nni.export.hmnas_timm.HmnasNet`: read, check, load and save.

Files hold ``HmnasNet.state_dict()`` with the architecture JSON in the header; plain derived-network
state dicts (``stem.0.weight`` ... ``classifier.weight``) load too, through :func:`checkpoint_filter_fn`.
Every failure is a one-line :class:`WeightsError` that names the file and the fix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hmnas_nni.format.architecture import Architecture, ArchitectureError
from hmnas_nni.format.files import publish
from hmnas_nni.format.weights import check_weights

__all__ = [
    "WEIGHTS_FORMAT", "WeightsError", "read_state_dict", "checkpoint_filter_fn", "check_state_dict",
    "load_weights", "save_weights",
]

WEIGHTS_FORMAT = "hmnas-weights/1"


class WeightsError(ValueError):
    """A weights file that cannot be used with this architecture; the message says why and how to fix it."""


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file, turning every failure into a one-line :class:`WeightsError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; pass the model.safetensors written by `hmnas retrain`")
    if path.stat().st_size < 8:
        raise WeightsError(f"weights file {path} is empty or truncated; re-run `hmnas retrain` to write it again")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(
            f"weights file {path} is not a readable safetensors file ({msg}); it may be truncated or of another "
            "format: re-run `hmnas retrain` or pass the model.safetensors it wrote"
        ) from None
    check_weights(sd, path, WeightsError)
    return sd, meta


def _arch_key(arch: Architecture) -> dict[str, Any]:
    """What must match between weights and an architecture (head size and input channels may be adapted)."""
    args = {k: v for k, v in arch.space_args.items() if k not in ("num_classes", "in_channels", "input_size")}
    return {"space": arch.space, "space_args": args, "ops": arch.ops, "inputs": arch.inputs}


def _difference(weights: dict[str, Any], given: dict[str, Any]) -> str:
    """The first place two architecture keys differ, as a phrase naming both sides."""
    for field in ("space", "space_args"):
        if weights[field] != given[field]:
            return f"{field}: weights {weights[field]!r}, architecture {given[field]!r}"
    for field in ("ops", "inputs"):
        for label in sorted(set(weights[field]) | set(given[field])):
            mine, theirs = weights[field].get(label), given[field].get(label)
            if mine != theirs:
                return f"at {label!r}: weights keep {_kept(mine)}, architecture keeps {_kept(theirs)}"
    return "same choices"


def _kept(entries: Any) -> str:
    """The entries kept at one label with their weights, e.g. ``[conv_3x3 0.44, skip_connect 0.56]``."""
    if entries is None:
        return "no such choice"
    names = [f"{e.get('op', e.get('input'))} {e.get('weight', 1.0):.3g}" for e in entries]
    return "[" + ", ".join(names) + "]"


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map plain derived-network keys onto :class:`HmnasNet` keys and reject weights of another architecture."""
    check_weights(state_dict, "pretrained weights", WeightsError)
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if not k.startswith(("body.", "classifier.")):
            k = "body." + k
        if k.startswith(("body.classifier.", "body.global_pool.")):
            k = k[len("body."):]
        out[k] = v
    skip = {"classifier.weight", "classifier.bias"}
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if first_conv:
        skip.add(f"{first_conv}.weight")  # timm adapts the stem to other input channel counts
    check_state_dict(model, out, "pretrained weights", skip=skip)
    return out


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str,
                     skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Raise a one-line :class:`WeightsError` when ``sd`` does not fit ``model`` key for key and shape for shape."""
    own = {k: v for k, v in model.state_dict().items() if k not in skip}
    theirs = {k: v for k, v in sd.items() if k not in skip}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shape = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} of another shape (e.g. {k}: {tuple(theirs[k].shape)} vs {tuple(own[k].shape)})")
        raise WeightsError(
            f"{where} belong to another architecture: {'; '.join(parts)}; "
            "pass the arch.json the weights were trained with (retrain writes it beside model.safetensors)"
        )


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load a safetensors file into ``model`` strictly, with one-line errors; returns the file's metadata."""
    sd, meta = read_state_dict(path)
    if "architecture" in meta:
        try:
            saved = Architecture.from_dict(json.loads(meta["architecture"]))
        except (ValueError, ArchitectureError):
            saved = None
        if saved is not None and _arch_key(saved) != _arch_key(model.arch):
            raise WeightsError(
                f"weights file {path} was written for another architecture than the one given "
                f"({_difference(_arch_key(saved), _arch_key(model.arch))}); pass the arch.json from the same run "
                "as the weights"
            )
    sd = checkpoint_filter_fn(sd, model) if any(not k.startswith(("body.", "classifier.")) for k in sd) else sd
    check_state_dict(model, sd, f"weights in {path}")
    model.load_state_dict(sd, strict=True)
    return meta


def save_weights(model: nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict as safetensors atomically, with the architecture in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": WEIGHTS_FORMAT, "architecture": json.dumps(model.arch.to_dict())}
    for k, v in (extra or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    # cloned: a tensor shared by several modules (a superkernel's candidates) is saved under each name
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".weights-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
