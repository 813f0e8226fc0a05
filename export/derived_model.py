"""The deployable model of any derived architecture: :class:`HmnasNet` (timm's CNN interface) when the network
has the stem + cells/blocks layout of the project's spaces, else :class:`DerivedModel`, the derived network as it
is (NNI hub spaces' own classes), which ``hmnas retrain``, ``hmnas export`` and ``hmnas bench`` take alike."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .hmnas_timm import ArchLike, HmnasNet, arch_pretrained_cfg, build_body, resolve_architecture
from .stages import body_layout


def timm_layout_problem(body: nn.Module) -> str | None:
    """Why ``body`` cannot take timm's CNN interface (no stem, cells/blocks or ``num_features``), or None."""
    try:
        body_layout(body)
    except ValueError as e:
        return str(e).split(";")[0]
    return None


class DerivedModel(nn.Module):
    """A derived network outside timm's layout, with what the export commands read: ``arch``, ``num_classes``,
    ``pretrained_cfg`` (input size, mean, std). Its state dict is the network's under ``body.``."""

    def __init__(self, arch: ArchLike, num_classes: int | None = None, body: nn.Module | None = None) -> None:
        super().__init__()
        self.arch, extras = resolve_architecture(arch)
        self.body = build_body(self.arch, self.arch.space_args) if body is None else body
        self.pretrained_cfg = arch_pretrained_cfg(self.arch.to_dict() | extras)
        with torch.no_grad():
            was = self.body.training
            logits = self.body.eval()(torch.zeros(1, *self.pretrained_cfg["input_size"]))
            self.body.train(was)
        self.num_classes = int(logits.shape[-1])
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(f"the derived network of space {self.arch.space!r} has {self.num_classes} outputs, not "
                             f"{num_classes}; search with the dataset it will be trained on (its classes size the "
                             "space's head)")
        self.pretrained_cfg["num_classes"] = self.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The derived network's logits."""
        return self.body(x)


def derived_model(arch: ArchLike, num_classes: int | None = None, body: nn.Module | None = None) -> nn.Module:
    """:class:`HmnasNet` of ``arch`` where its network has timm's layout, else :class:`DerivedModel`."""
    parsed, extras = resolve_architecture(arch)
    doc = parsed.to_dict() | extras
    if body is None:
        body = build_body(parsed, dict(parsed.space_args))
    if timm_layout_problem(body) is None:
        return HmnasNet(doc, num_classes=num_classes, body=body)
    return DerivedModel(doc, num_classes=num_classes, body=body)


def is_timm_model(model: Any) -> bool:
    """Whether ``model`` has timm's whole interface (and a timm ``config.json`` can rebuild it)."""
    return isinstance(model, HmnasNet)
