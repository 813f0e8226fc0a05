"""Superkernels: convolutions of several kernel sizes and dilations that share one weight tensor.

A :class:`SuperKernel` holds the weight of the largest kernel; a :class:`SubKernelConv` of size ``k`` and
dilation ``d`` convolves with its centre ``k x k`` crop, dilated by ``d`` (padding ``d * (k - 1) / 2`` keeps the
resolution). Every candidate of a choice built by :func:`superkernel_choice` reads the same tensor, so a space
offers sizes x dilations candidates for the weights of one: what a sub-kernel learns is shared with the others,
as the centre of a larger kernel. Each candidate keeps its own BatchNorm (statistics differ per sub-kernel).

NNI users put the choice in their own spaces like any ``LayerChoice``::

    self.conv = superkernel_choice(16, 16, sizes=(3, 5, 7), dilations=(1, 2), label="conv1")

HM-NAS, DARTS and the sampling strategies search it as a ``LayerChoice``; a derived network keeps the chosen
candidates, still reading (and training) the shared tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.nn.pytorch import LayerChoice


class SuperKernel(nn.Module):
    """The shared weight: ``(c_out, c_in / groups, K, K)`` for the largest (odd) kernel size ``K``."""

    def __init__(self, c_in: int, c_out: int, size: int, groups: int = 1) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"a superkernel's size must be odd and >= 1 (it is cropped at its centre), got {size}")
        self.size, self.groups = size, groups
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, size, size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # what nn.Conv2d does

    def crop(self, size: int) -> torch.Tensor:
        """The centre ``size x size`` of the weight."""
        if size > self.size or size % 2 == 0:
            raise ValueError(f"sub-kernel size {size} must be odd and <= the superkernel's {self.size}")
        start = (self.size - size) // 2
        return self.weight[:, :, start:start + size, start:start + size]


class SubKernelConv(nn.Module):
    """A ``size x size`` convolution, dilated by ``dilation``, whose weight is cropped from a shared superkernel."""

    def __init__(self, kernel: SuperKernel, size: int, dilation: int = 1, stride: int = 1) -> None:
        super().__init__()
        kernel.crop(size)  # checks the size
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        self.kernel = kernel  # the same module in every candidate: one tensor
        self.size, self.dilation, self.stride = size, dilation, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.dilation * (self.size - 1) // 2
        return F.conv2d(x, self.kernel.crop(self.size), None, self.stride, pad, self.dilation, self.kernel.groups)

    def extra_repr(self) -> str:
        return f"size={self.size}, dilation={self.dilation}, stride={self.stride}"


def kernel_grid(sizes: Sequence[int], dilations: Sequence[int]) -> list[tuple[int, int]]:
    """(size, dilation) pairs of a choice; a 1x1 kernel is the same at every dilation, so it appears once."""
    return [(k, d) for k in sizes for d in dilations if k > 1 or d == dilations[0]]


def candidate_name(size: int, dilation: int) -> str:
    """``k5d2``: what a sub-kernel candidate is called in architectures."""
    return f"k{size}d{dilation}"


def superkernel_ops(c_in: int, c_out: int, sizes: Sequence[int] = (3, 5, 7), dilations: Sequence[int] = (1, 2),
                    stride: int = 1, groups: int = 1, relu: bool = True) -> dict[str, nn.Module]:
    """``[ReLU] -> SubKernelConv -> BN`` candidates of every size and dilation, all reading one superkernel of the
    largest size, named by :func:`candidate_name`."""
    kernel = SuperKernel(c_in, c_out, max(sizes), groups)
    ops: dict[str, nn.Module] = {}
    for k, d in kernel_grid(sizes, dilations):
        layers = [nn.ReLU(inplace=False)] if relu else []
        ops[candidate_name(k, d)] = nn.Sequential(*layers, SubKernelConv(kernel, k, d, stride), nn.BatchNorm2d(c_out))
    return ops


def superkernel_choice(c_in: int, c_out: int, sizes: Sequence[int] = (3, 5, 7), dilations: Sequence[int] = (1, 2),
                       stride: int = 1, groups: int = 1, label: str | None = None, relu: bool = True,
                       extra: dict[str, nn.Module] | None = None) -> LayerChoice:
    """A ``LayerChoice`` over :func:`superkernel_ops` (call it inside a ``ModelSpace``'s ``__init__``, as any NNI
    choice); ``extra`` candidates (skip, pooling, zero) are added as they are."""
    ops = superkernel_ops(c_in, c_out, sizes, dilations, stride, groups, relu)
    return LayerChoice({**ops, **(extra or {})}, label=label)
