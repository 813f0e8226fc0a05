"""Small builders shared by the tests: tiny spaces and HM-NAS supernets with chosen masks."""

from __future__ import annotations

import torch
import torch.nn as nn

import hmnas_nni.spaces as search_spaces
from hmnas_nni import HMNAS
from hmnas_nni.nas.samples import architecture_from_export
from hmnas_nni.search.config import TINY_SPACE_ARGS

TINY_ARGS = {name: {**args, "input_size": 8} for name, args in TINY_SPACE_ARGS.items()}


def tiny_space(name: str):
    return search_spaces.build_space(name, **TINY_ARGS[name])


def trace(space: nn.Module, shape: tuple[int, ...] = (1, 8, 8)) -> None:
    """One training forward and backward: HM-NAS reads the supernet's dataflow from it."""
    space.train()
    space(torch.randn(4, *shape)).sum().backward()
    space.zero_grad()


def hmnas_supernet(name: str, seed: int = 0):
    """A tiny space turned into an HM-NAS supernet (its dataflow traced), with its strategy."""
    torch.manual_seed(seed)
    space = tiny_space(name)
    strategy = HMNAS()
    strategy.mutate_model(space)
    trace(space)
    return space, strategy


def random_masks(space: nn.Module, strategy: HMNAS, seed: int = 0, keep: float = 0.6) -> None:
    """Switch entries on/off at random (scores either side of tau), randomise alpha/beta, re-apply the hierarchy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in strategy.hierarchy.all_masks():
            on = torch.rand(m.scores.shape, generator=g) < keep
            m.scores.copy_(torch.where(on, 2 * m.tau, 0.5 * m.tau) + 1e-4 * torch.rand(m.scores.shape, generator=g))
        for module in space.modules():
            for p in getattr(module, "arch_parameters", lambda: [])():
                p.copy_(torch.randn(p.shape, generator=g))
    strategy.hierarchy.apply()


def export_sample(space: nn.Module) -> dict:
    """What HMNAS's Lightning module exports for ``space``: every supermodule's kept entries."""
    sample: dict = {}
    for module in space.modules():
        if hasattr(module, "derive") and hasattr(module, "export"):
            sample.update(module.export(sample))
    return sample


def export(space: nn.Module, strategy: HMNAS | None = None, input_shape: list[int] | None = None):
    """The architecture document HMNAS exports for ``space``."""
    return architecture_from_export(export_sample(space), space, input_shape=input_shape or [1, 8, 8])


def warm_batchnorm(model, batches: int = 3, channels: int = 1, size: int = 8) -> None:
    """Give BN layers non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(16, channels, size, size) * 2 + 0.5)
    model.eval()
