"""The last mutation hook: any NNI primitive left unrelaxed is an error naming the module and what HMNAS relaxes."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from nni.nas.nn.pytorch import MutableModule
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

SUPPORTED = ("nni.nas.nn.pytorch.LayerChoice (operation level), InputChoice with reduction sum/mean and Cell (edge "
             "level), Repeat with a depth choice (block level) and value choices in MutableConv2d, MutableLinear, "
             "MutableBatchNorm2d, MutableLayerNorm, MutableMultiheadAttention and the mixed operations a space returns "
             "from extra_oneshot_hooks, such as AutoFormer's class token (weight level)")


def unsupported_mutable_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
    """Raise for a module that still holds mutables after every HM-NAS hook had its turn (as NNI's DARTS does)."""
    if isinstance(module, MutableModule) and not isinstance(module, BaseSuperNetModule) and module.mutables:
        raise TypeError(
            f"HMNAS does not support module {name!r} of type {type(module).__name__} (its choices are not supported: "
            f"HMNAS relaxes {SUPPORTED}). Express the choice with those, or search this space with another NNI "
            "strategy."
        )
    return True
