"""What every project space has: a name, JSON constructor arguments, its cell graphs,
and a plain derived network for any architecture of it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
from nni.mutable import Categorical, CategoricalMultiple
from nni.nas.nn.pytorch import ModelSpace

from hmnas_nni.format.architecture import Architecture, ArchitectureError, ChoiceSpec
from hmnas_nni.format.graph import CellGraph


class ClassifierNet(nn.Module):
    """timm-shaped body: ``forward_features`` -> unpooled features, ``forward_head`` -> logits.

    Subclasses set ``num_classes``, ``num_features``, ``global_pool`` and ``classifier``.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ProjectSpace(ModelSpace):
    """An NNI model space whose whole network sits in ``self.net`` (a :class:`ClassifierNet`).

    Subclasses set ``name``, implement ``build(choices=True|arch)`` and ``cell_graphs()``.
    """

    name: ClassVar[str]
    net: ClassifierNet

    def __init__(self, **args: Any) -> None:
        super().__init__()
        self.space_args = self.check_args(args)
        self.net = self.build(None)

    # -- what subclasses provide
    @classmethod
    def default_args(cls) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, arch: Architecture | None) -> ClassifierNet:
        """Build the network: with ``arch=None`` the supernet with NNI choices, else the derived network."""
        raise NotImplementedError

    def cell_graphs(self) -> list[CellGraph]:
        return []

    # -- shared behaviour
    @classmethod
    def check_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        defaults = cls.default_args()
        unknown = sorted(set(args) - set(defaults))
        if unknown:
            raise ValueError(f"space {cls.name!r} has no argument(s) {unknown}; it takes {sorted(defaults)}")
        merged = {**defaults, **args}
        for key, value in merged.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"space {cls.name!r}: argument {key}={value!r} must be a positive integer")
        return merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def catalogue(self) -> dict[str, ChoiceSpec]:
        """Every choice label of the space with its candidates."""
        out: dict[str, ChoiceSpec] = {}
        for label, mutable in self.simplify().items():
            if isinstance(mutable, CategoricalMultiple):
                out[label] = ChoiceSpec("input", tuple(mutable.values), mutable.n_chosen)
            elif isinstance(mutable, Categorical):
                out[label] = ChoiceSpec("op", tuple(mutable.values))
        return out

    def derived_network(self, arch: Architecture) -> ClassifierNet:
        if arch.space != self.name:
            raise ArchitectureError(f"architecture was searched on space {arch.space!r}, not {self.name!r}")
        arch.validate(self.catalogue())
        return self.build(arch)
