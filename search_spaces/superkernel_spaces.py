"""Superkernel variants of the project's spaces: ``nb201-sk`` and ``mobile-sk``.

``nb201-sk``: every NAS-Bench-201 edge offers, besides none / skip / average pooling, a ReLU-conv-BN of every odd
size up to ``max_kernel`` and every dilation up to ``max_dilation`` (1x1 once), all cropped from one superkernel
per edge: 8 candidates per edge at the defaults (5, 2) for the weights of one 5x5 convolution.
``mobile-sk``: every block offers inverted residuals of depthwise size {3, 5, 7 up to ``max_kernel``} x dilation
{1 .. ``max_dilation``} x expansion {3, 6}; the candidates of one expansion share their expand, depthwise
(superkernel) and project weights and keep their own BatchNorms: 12 candidates (plus skip) per block at the
defaults (7, 2) for the weights of two.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn

from .mobile import MobileNet, MobileSpace
from .nasbench201 import NasBench201Net, NasBench201Space
from .ops import Zero
from .superkernel import SubKernelConv, SuperKernel, candidate_name, kernel_grid, superkernel_ops

#: The inverted residuals' expansions (as in ``mobile``).
EXPANSIONS = (3, 6)


def odd_sizes(low: int, high: int) -> tuple[int, ...]:
    return tuple(range(low, high + 1, 2))


def nb201_sk_ops(c: int, max_kernel: int, max_dilation: int) -> dict[str, nn.Module]:
    """none, skip, the superkernel convolutions, average pooling (NAS-Bench-201's non-conv ops kept)."""
    convs = superkernel_ops(c, c, odd_sizes(1, max_kernel), tuple(range(1, max_dilation + 1)))
    return {"none": Zero(c, 1), "skip_connect": nn.Identity(), **convs,
            "avg_pool_3x3": nn.AvgPool2d(3, 1, 1, count_include_pad=False)}


class SharedInvertedResidual(nn.Module):
    """The weights the candidates of one expansion share: 1x1 expand, depthwise superkernel, 1x1 project."""

    def __init__(self, c_in: int, c_out: int, expansion: int, max_kernel: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.depthwise = SuperKernel(hidden, hidden, max_kernel, groups=hidden)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)


class SubKernelInvertedResidual(nn.Module):
    """A MobileNetV2 block on shared weights, its depthwise kernel cropped and dilated; its own BatchNorms."""

    def __init__(self, shared: SharedInvertedResidual, size: int, dilation: int, stride: int, c_in: int) -> None:
        super().__init__()
        self.shared = shared
        self.depthwise = SubKernelConv(shared.depthwise, size, dilation, stride)
        hidden, c_out = shared.expand.out_channels, shared.project.out_channels
        self.bn_expand, self.bn_depthwise, self.bn_project = (nn.BatchNorm2d(hidden), nn.BatchNorm2d(hidden),
                                                              nn.BatchNorm2d(c_out))
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu6(self.bn_expand(self.shared.expand(x)))
        h = nn.functional.relu6(self.bn_depthwise(self.depthwise(h)))
        out = self.bn_project(self.shared.project(h))
        return out + x if self.use_residual else out


def mobile_sk_ops(c_in: int, c_out: int, stride: int, max_kernel: int, max_dilation: int) -> dict[str, nn.Module]:
    """``mb_k5d2_e3``-named inverted residuals over sizes x dilations x expansions, plus skip where shapes allow."""
    ops: dict[str, nn.Module] = {}
    for e in EXPANSIONS:
        shared = SharedInvertedResidual(c_in, c_out, e, max_kernel)
        for k, d in kernel_grid(odd_sizes(3, max_kernel), tuple(range(1, max_dilation + 1))):
            ops[f"mb_{candidate_name(k, d)}_e{e}"] = SubKernelInvertedResidual(shared, k, d, stride, c_in)
    if stride == 1 and c_in == c_out:
        ops["skip"] = nn.Identity()
    return ops


def _check_kernel(name: str, args: dict[str, Any], low: int) -> None:
    if args["max_kernel"] < low or args["max_kernel"] % 2 == 0:
        raise ValueError(f"space {name!r}: max_kernel={args['max_kernel']} must be odd and >= {low}")


class NasBench201SuperKernelSpace(NasBench201Space):
    """NAS-Bench-201 cells whose convolutions are superkernel candidates (sizes x dilations, one tensor per edge)."""

    name = "nb201-sk"

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        return {**super().default_args(), "max_kernel": 5, "max_dilation": 2}

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_args(args)
        _check_kernel(cls.name, merged, 1)
        return merged

    def build(self) -> NasBench201Net:
        a = self.space_args
        ops = partial(nb201_sk_ops, max_kernel=a["max_kernel"], max_dilation=a["max_dilation"])
        return NasBench201Net(a["in_channels"], a["channels"], a["cells_per_stage"], a["num_classes"], ops)


class MobileSuperKernelSpace(MobileSpace):
    """The mobile chain whose blocks choose depthwise size, dilation and expansion over shared weights."""

    name = "mobile-sk"

    @classmethod
    def default_args(cls) -> dict[str, Any]:
        return {**super().default_args(), "max_kernel": 7, "max_dilation": 2}

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        merged = super().check_args(args)
        _check_kernel(cls.name, merged, 3)
        return merged

    def build(self) -> MobileNet:
        a = self.space_args
        ops = partial(mobile_sk_ops, max_kernel=a["max_kernel"], max_dilation=a["max_dilation"])
        return MobileNet(a["in_channels"], a["channels"], a["num_classes"], ops)
