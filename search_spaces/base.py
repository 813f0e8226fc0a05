"""What every project space has: a name, JSON constructor arguments, and its whole network in ``self.net``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import ModelSpace

from hmnas_nni.format.architecture import ChoiceSpec

from .catalogue import catalogue


class ClassifierNet(nn.Module):
    """timm-shaped body: ``forward_features`` -> unpooled features, ``forward_head`` -> logits.

    Subclasses set ``num_classes``, ``num_features``, ``global_pool`` and ``classifier``, and record their feature
    levels as they build (:meth:`record_levels`), as timm's builders do: ``feature_info`` lists ``num_chs``,
    ``reduction`` and ``module`` (a path in this network) of the stem and of the last step at each resolution, the
    last level with ``num_chs_norm``, its channels after the final layers. (No class annotation: TorchScript would
    read it as the attribute's type.)
    """

    def record_levels(self, steps: list[tuple[str, int, int]], tail_channels: int | None = None) -> None:
        """Record the feature levels from the steps as built: (module path, output channels, reduction so far) for
        the stem and each cell or block in order, and the channels after the final layers where there are some."""
        last = len(steps) - 1
        kept = [steps[0], *(s for k, s in enumerate(steps[1:], 1) if k == last or steps[k + 1][2] != s[2])]
        self.feature_info = [{"num_chs": c, "reduction": r, "module": name} for name, c, r in kept]
        if tail_channels is not None:
            self.feature_info[-1]["num_chs_norm"] = tail_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ProjectSpace(ModelSpace):
    """An NNI model space whose whole network sits in ``self.net`` (a :class:`ClassifierNet`).

    Subclasses set ``name`` and implement ``default_args`` and ``build``. A network derived from the space
    is its ``net`` (``derived_network_attr``): plain PyTorch, with no NNI model space around it.
    """

    name: ClassVar[str]
    derived_network_attr: ClassVar[str] = "net"
    net: ClassifierNet

    def __init__(self, **args: Any) -> None:
        super().__init__()
        self.space_args = self.check_args(args)
        self.net = self.build()

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        raise NotImplementedError

    def build(self) -> ClassifierNet:
        """The network with its NNI choices, sized by ``self.space_args``."""
        raise NotImplementedError

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
        return catalogue(self)
