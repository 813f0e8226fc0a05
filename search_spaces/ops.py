"""Candidate operations of the cell and chain spaces, written in plain PyTorch.

Names follow the DARTS and NAS-Bench-201 papers so that architectures read the way the
field writes them. Every op maps ``(N, C_in, H, W)`` to ``(N, C_out, H/stride, W/stride)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv -> BN, the DARTS / NAS-Bench-201 convolution block."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise dilated conv -> pointwise conv -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked dilation-1 DilConvs, the DARTS separable convolution."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    """The 'none' op: outputs zeros of the op's output shape."""

    def __init__(self, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_out = c_out
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        shape = [x.shape[0], self.c_out, x.shape[2], x.shape[3]]
        return x.new_zeros(shape)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs (DARTS' reduce-skip)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # Pad so odd resolutions (7x7 after two reductions of 28x28) keep both branches aligned.
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class PoolBN(nn.Sequential):
    """Pooling followed by a BN (DARTS keeps pooling outputs on the scale of conv outputs)."""

    def __init__(self, kind: str, c: int, stride: int, affine: bool = True) -> None:
        pool = nn.MaxPool2d(3, stride, 1) if kind == "max" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        super().__init__(pool, nn.BatchNorm2d(c, affine=affine))


DARTS_OP_NAMES = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
                  "dil_conv_5x5")


def darts_op(name: str, c: int, stride: int) -> nn.Module:
    """One DARTS candidate for an edge with ``c`` channels in and out (DARTS searches with affine-free BN)."""
    affine = False
    if name == "max_pool_3x3":
        return PoolBN("max", c, stride, affine)
    if name == "avg_pool_3x3":
        return PoolBN("avg", c, stride, affine)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        k = int(name[-1])
        return SepConv(c, c, k, stride, k // 2, affine)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        k = int(name[-1])
        return DilConv(c, c, k, stride, k - 1, 2, affine)
    raise ValueError(f"unknown DARTS op {name!r}; the ops are {DARTS_OP_NAMES}")


def nb201_ops(c: int) -> dict[str, nn.Module]:
    """The five NAS-Bench-201 candidates (names as in NNI's ``NasBench201`` hub space)."""
    return {
        "none": Zero(c, 1),
        "skip_connect": nn.Identity(),
        "conv_1x1": ReLUConvBN(c, c, 1, 1, 0),
        "conv_3x3": ReLUConvBN(c, c, 3, 1, 1),
        "avg_pool_3x3": nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    }



class ResNetBasicBlock(nn.Module):
    """The fixed stride-2 residual block between NAS-Bench-201 stages."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.downsample(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, kxk depthwise, 1x1 project; residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.use_residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=False),
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=False),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            out = out + x
        return out


def mobile_ops(c_in: int, c_out: int, stride: int) -> dict[str, nn.Module]:
    """Kernel {3,5,7} x expansion {3,6} inverted residuals, plus skip where input and output shapes match."""
    ops: dict[str, nn.Module] = {
        f"mb_k{k}_e{e}": InvertedResidual(c_in, c_out, k, e, stride) for k in (3, 5, 7) for e in (3, 6)
    }
    if stride == 1 and c_in == c_out:
        ops["skip"] = nn.Identity()
    return ops
