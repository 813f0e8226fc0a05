"""Small builders shared by the tests: tiny spaces and HM-NAS supernets with chosen masks."""

from __future__ import annotations

import hmnas_nni.spaces as search_spaces
import torch

from hmnas_nni import HMNAS
from hmnas_nni.search.config import TINY_SPACE_ARGS
from hmnas_nni.search.derive import to_architecture

TINY_ARGS = {name: {**args, "input_size": 8} for name, args in TINY_SPACE_ARGS.items()}


def tiny_space(name: str):
    return search_spaces.build_space(name, **TINY_ARGS[name])


def hmnas_supernet(name: str, seed: int = 0):
    """A tiny space turned into an HM-NAS supernet, with its strategy."""
    torch.manual_seed(seed)
    space = tiny_space(name)
    strategy = HMNAS()
    strategy.mutate_model(space)
    return space, strategy


def random_masks(strategy: HMNAS, seed: int = 0, keep: float = 0.6) -> None:
    """Switch entries on/off at random (scores either side of tau) and re-apply the hierarchy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in strategy.hierarchy.all_masks():
            on = torch.rand(m.scores.shape, generator=g) < keep
            m.scores.copy_(torch.where(on, 2 * m.tau, 0.5 * m.tau) + 1e-4 * torch.rand(m.scores.shape, generator=g))
        for p in strategy._arch_parameters.values():
            p.copy_(torch.randn(p.shape, generator=g))
    strategy.hierarchy.apply()


def export(space, strategy: HMNAS):
    sample = {}
    for module in space.modules():
        if hasattr(module, "export") and hasattr(module, "op_masks") or hasattr(module, "edge_masks"):
            sample.update(module.export(sample))
    return to_architecture(sample, space, "hmnas")


def warm_batchnorm(model, batches: int = 3, channels: int = 1, size: int = 8) -> None:
    """Give BN layers non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(16, channels, size, size) * 2 + 0.5)
    model.eval()
