"""Where a supernet's memory goes, HM-NAS's against DARTS's on the same space: a trace, not a timing.

    python -m hmnas_nni.experiments.memory_trace [--space nni.nas.hub.pytorch.NasBench201 --batch 64]

For each strategy the space is made its supernet (``HMNAS().mutate_model`` / NNI's ``DARTS().mutate_model``) and
one training step (forward of a batch, cross-entropy, backward) runs, as the weight step of a search does. Counted,
in MiB: network weights; architecture parameters (alpha, beta, gates, mask scores); other buffers (masks' state,
BatchNorm statistics); the tensors autograd keeps from the forward for the backward (each storage once); and the
gradients the backward leaves. Printed per strategy with HM-NAS/DARTS ratios, so the difference a process's peak
memory shows can be placed; the step of the architecture (validation batch, masks' sparsity term) is not traced.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

MIB = 2**20

#: Name and data pointer of every storage seen while saving tensors for backward.
Saved = dict[tuple[int, str], int]


def _bytes(tensors: Any) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def _is_architecture(name: str) -> bool:
    from hmnas_nni.nas.rebuild import is_architecture_key

    return is_architecture_key(name) or name.endswith(".scores")  # value masks' scores too


def supernet(strategy: str, space_name: str, space_args: dict[str, Any], shape: tuple[int, ...]) -> nn.Module:
    """A fresh supernet of the space under ``strategy`` (``hmnas`` or ``darts``), with one traced step behind it."""
    from nni.nas.strategy import DARTS

    from hmnas_nni import HMNAS
    from hmnas_nni.spaces.registry import build_space, fit_input

    torch.manual_seed(0)
    space = fit_input(build_space(space_name, **space_args), shape)
    (HMNAS() if strategy == "hmnas" else DARTS()).mutate_model(space)
    space.train()
    space(torch.randn(2, *shape)).sum().backward()  # HM-NAS reads its dataflow from a first step
    space.zero_grad(set_to_none=True)
    return space


def saved_for_backward(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """MiB autograd keeps from one forward for the backward (each storage once), and MiB of gradients after it."""
    seen: Saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.untyped_storage().data_ptr(), str(t.device))] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    params = list(net.parameters())
    weights = {p.untyped_storage().data_ptr() for p in params}  # parameters are counted apart
    saved = sum(n for (ptr, _), n in seen.items() if ptr not in weights)
    grads = _bytes(p.grad for p in params if p.grad is not None)
    return saved / MIB, grads


def trace(strategy: str, space_name: str, space_args: dict[str, Any], shape: tuple[int, ...],
          batch: int) -> dict[str, float]:
    """The MiB of each part of ``strategy``'s supernet and of one training step on it."""
    net = supernet(strategy, space_name, space_args, shape)
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    arch = [p for n, p in params.items() if _is_architecture(n)]
    weights = [p for n, p in params.items() if not _is_architecture(n)]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
    saved, grads = saved_for_backward(net, x, y)
    return {"network weights": _bytes(weights), "architecture parameters": _bytes(arch),
            "buffers": _bytes(buffers.values()), "saved for backward": saved, "gradients": grads}


def table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown: one line per part, a column per strategy, and HM-NAS/DARTS."""
    parts = list(next(iter(rows.values())))
    lines = ["| part (MiB) | hmnas | darts | hmnas/darts |", "|---|---:|---:|---:|"]
    for part in [*parts, "total"]:
        h, d = (sum(rows[s].values()) if part == "total" else rows[s][part] for s in ("hmnas", "darts"))
        lines.append(f"| {part} | {h:.2f} | {d:.2f} | {h / d:.3f}x |" if d else f"| {part} | {h:.2f} | {d:.2f} | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="nni.nas.hub.pytorch.NasBench201")
    p.add_argument("--space-args", default='{"stem_out_channels": 8, "num_modules_per_stack": 1}')
    p.add_argument("--input", default="1,28,28", help="C,H,W of one image")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    shape = tuple(int(d) for d in args.input.split(","))
    rows = {s: trace(s, args.space, json.loads(args.space_args), shape, args.batch) for s in ("hmnas", "darts")}
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
