"""Cells for meta-learners (Auto-Meta's space), as an NNI model space for multi-trial strategies.

The network is ``depth`` stages of one shared cell design, ``width`` channels each; the last four stages end in a
2x2 max-pool (MAML's Conv-4 pools after every one of its four layers), then a linear classifier. A cell has
``blocks`` blocks (1 .. ``max_blocks``); block ``b`` applies operation ``op{b}`` to input ``in{b}`` (0: the cell's
input, ``j``: block ``j``'s output), and the cell's output is the sum of the blocks no later block reads. Every
operation ends in batch normalisation and ReLU, as MAML's layers do.

MAML's Conv-4 is one point of the space (:data:`CONV4`): width 32, depth 4, one block, ``conv3x3`` on the cell
input. Choices of blocks past ``blocks`` do not change the network; the progressive strategy
(:class:`~hmnas_nni.strategy.pnas.PNAS`) grows ``blocks`` one block at a time and keeps those choices at their
first values, so that one network has one sample.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from nni.mutable import Categorical, Sample, ensure_frozen
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.space import model_context

OPS = ("conv3x3", "conv5x5", "sep3x3", "dil3x3", "max3x3", "skip")
#: Pooled stages at the end of the network (28 -> 14 -> 7 -> 3 -> 1 on 28x28 images).
POOLED_STAGES = 4
#: MAML's four-layer learner as a sample of the default space.
CONV4 = {"width": 32, "depth": 4, "blocks": 1, "op1": "conv3x3"}


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation, groups=groups),
            nn.BatchNorm2d(c_out), nn.ReLU()]


def make_op(name: str, c_in: int, c_out: int) -> nn.Module:
    """Operation ``name`` from ``c_in`` to ``c_out`` channels (same resolution); pooling and skip project with a
    1x1 convolution when the channels differ."""
    if name == "conv3x3":
        return nn.Sequential(*_conv_bn_relu(c_in, c_out, 3))
    if name == "conv5x5":
        return nn.Sequential(*_conv_bn_relu(c_in, c_out, 5))
    if name == "sep3x3":
        return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in), *_conv_bn_relu(c_in, c_out, 1))
    if name == "dil3x3":
        return nn.Sequential(*_conv_bn_relu(c_in, c_out, 3, dilation=2))
    project = _conv_bn_relu(c_in, c_out, 1) if c_in != c_out else []
    if name == "max3x3":
        return nn.Sequential(*project, nn.MaxPool2d(3, stride=1, padding=1))
    if name == "skip":
        return nn.Sequential(*project) if project else nn.Identity()
    raise ValueError(f"unknown operation {name!r}; one of {OPS}")


class MetaCell(nn.Module):
    """One stage's cell: blocks of (input, operation), output the sum of the blocks nothing later reads."""

    def __init__(self, design: list[tuple[str, int]], c_in: int, c_out: int) -> None:
        super().__init__()
        self.inputs = [i for _, i in design]
        self.ops = nn.ModuleList(make_op(op, c_in if i == 0 else c_out, c_out) for op, i in design)
        read = set(self.inputs)
        self.leaves = [b for b in range(1, len(design) + 1) if b not in read]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for op, i in zip(self.ops, self.inputs):
            states.append(op(states[i]))
        return sum(states[b] for b in self.leaves)


class MetaCellSpace(ModelSpace):
    """Auto-Meta's search space of meta-learner cells (module docstring); NNI labels ``width``, ``depth``,
    ``blocks``, ``op1`` .. ``op{max_blocks}`` and ``in2`` .. ``in{max_blocks}``."""

    def __init__(self, in_channels: int = 1, input_size: int = 28, num_classes: int = 5, max_blocks: int = 3,
                 widths: tuple[int, ...] = (16, 32, 48), depths: tuple[int, ...] = (3, 4, 5)) -> None:
        super().__init__()
        self.space_args = {"in_channels": in_channels, "input_size": input_size, "num_classes": num_classes,
                     "max_blocks": max_blocks, "widths": tuple(widths), "depths": tuple(depths)}
        arch = {label: ensure_frozen(self.add_mutable(choice)) for label, choice in
                search_choices(max_blocks, widths, depths).items()}
        self.arch: dict[str, Any] = arch
        design = [(arch[f"op{b}"], arch.get(f"in{b}", 0)) for b in range(1, arch["blocks"] + 1)]
        stages, c, size = [], in_channels, input_size
        for s in range(arch["depth"]):
            stages.append(MetaCell(design, c, arch["width"]))
            if s >= arch["depth"] - POOLED_STAGES:
                stages.append(nn.MaxPool2d(2))
                size //= 2
            c = arch["width"]
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Linear(c * max(size, 1) ** 2, num_classes)

    def freeze(self, sample: Sample) -> MetaCellSpace:
        """The network of ``sample`` (NNI's recipe for spaces built from added mutables)."""
        with model_context(sample):
            return MetaCellSpace(**self.space_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def search_choices(max_blocks: int = 3, widths: tuple[int, ...] = (16, 32, 48),
                   depths: tuple[int, ...] = (3, 4, 5)) -> dict[str, Categorical]:
    """The space's choices by label."""
    choices = {"width": Categorical(list(widths), label="width"), "depth": Categorical(list(depths), label="depth"),
               "blocks": Categorical(list(range(1, max_blocks + 1)), label="blocks")}
    for b in range(1, max_blocks + 1):
        choices[f"op{b}"] = Categorical(list(OPS), label=f"op{b}")
        if b > 1:
            choices[f"in{b}"] = Categorical(list(range(b)), label=f"in{b}")
    return choices


def conv4_sample(space: MetaCellSpace) -> Sample:
    """MAML's Conv-4 as a full sample of ``space``: the unused blocks' choices at their first values."""
    return {**{label: c.values[0] for label, c in space.simplify().items()}, **CONV4}
