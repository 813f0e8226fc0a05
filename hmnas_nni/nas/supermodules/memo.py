"""Architecture parameters and masks shared by label across a supernet, created on first use in the mutation memo.

Modules with one label (the same ``LayerChoice`` label in every cell, the same ``Cell`` label in every
stage) get the same objects, as NNI's DARTS shares ``alpha``; a second module of that label with another
number of candidates is an error naming the label.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..masks import MaskScores


def _check(obj: Any, key: str, size: int) -> Any:
    got = obj.scores.numel() if isinstance(obj, MaskScores) else obj.numel()
    if got != size:
        raise ValueError(f"label {key.split('#')[0]!r} is shared by choices of {got} and {size} candidates; give "
                         "choices with different candidates different labels")
    return obj


def shared_logits(memo: dict[str, Any], key: str, size: int) -> nn.Parameter:
    """``alpha``/``beta`` of a choice: small random logits (NNI DARTS's initialisation)."""
    if key not in memo:
        memo[key] = nn.Parameter(torch.randn(size) * 1e-3)
    return _check(memo[key], key, size)


def shared_gate(memo: dict[str, Any], key: str) -> nn.Parameter:
    """The edge gate of a ``LayerChoice`` that is an edge: ``sigmoid(2) = 0.88``, open."""
    if key not in memo:
        memo[key] = nn.Parameter(torch.full((1,), 2.0))
    return _check(memo[key], key, 1)


def shared_masks(memo: dict[str, Any], key: str, size: int, settings: dict[str, Any]) -> MaskScores:
    """Mask scores of a choice's entries, initialised to ``settings['mask_init']`` (switched on)."""
    if key not in memo:
        memo[key] = MaskScores(size, settings["mask_init"], settings["tau"])
    return _check(memo[key], key, size)
