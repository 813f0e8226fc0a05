"""A derived body walked step by step (stem, each cell or block, final layers) and its measured feature levels.

A body (the project's ``ClassifierNet``) holds ``stem``, then ``cells`` (``nn.ModuleList``) or ``blocks``
(``nn.Sequential``), then optionally ``lastact`` or ``conv_head``. A step whose ``forward`` takes two
tensors gets the outputs of the two steps before it (DARTS cells; the stem's output counts for both at
the start). Feature levels are the stem, then the last step at each resolution: recorded by the body as it was
built (the project's spaces), else found by a dry forward.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from timm.models import checkpoint

__all__ = ["Step", "BodyLayout", "FeatureLevels", "body_layout", "run_steps", "recorded_levels", "measure_levels"]

SEQUENCE_NAMES = ("cells", "blocks")
TAIL_NAMES = ("lastact", "conv_head")


@dataclass(frozen=True)
class Step:
    """One module of the walk: its path inside the body, its role and whether it takes two inputs."""

    name: str
    kind: str  # "stem", "cell" or "tail"
    two_inputs: bool


@dataclass(frozen=True)
class BodyLayout:
    """Where the steps of a body live: the name of its cell/block container and of its final layers."""

    sequence: str
    tail: str | None
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class FeatureLevels:
    """timm ``feature_info`` entries, the step each level is taken after, and the final spatial size."""

    info: list[dict[str, Any]]
    steps: list[int]
    final_size: tuple[int, int]


def _two_inputs(module: nn.Module, where: str) -> bool:
    """Whether ``module.forward`` takes two tensors (a DARTS-style cell) rather than one."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(params) not in (1, 2):
        raise ValueError(f"body module {where} takes {len(params)} inputs; a derived body's cells take one or two")
    return len(params) == 2


def body_layout(body: nn.Module) -> BodyLayout:
    """The steps of ``body`` in execution order, read from its ``stem``, ``cells``/``blocks`` and tail."""
    sequence = next((n for n in SEQUENCE_NAMES if isinstance(getattr(body, n, None), nn.Module)), None)
    if not isinstance(getattr(body, "stem", None), nn.Module) or sequence is None or not hasattr(body, "num_features"):
        raise ValueError(f"{type(body).__name__} has no `stem`, `cells`/`blocks` and `num_features`, the layout "
                         "timm's CNN interface is built on (a network of an NNI hub space's own class has not); "
                         "take it as hmnas_nni.export.derived_model(arch), which hmnas retrain, export and bench use")
    tail = next((n for n in TAIL_NAMES if isinstance(getattr(body, n, None), nn.Module)), None)
    steps = [Step("stem", "stem", False)]
    for i, cell in enumerate(getattr(body, sequence)):
        steps.append(Step(f"{sequence}.{i}", "cell", _two_inputs(cell, f"{sequence}.{i}")))
    if tail is not None:
        steps.append(Step(tail, "tail", False))
    return BodyLayout(sequence, tail, tuple(steps))


def run_steps(body: nn.Module, steps: Sequence[Step], x: torch.Tensor,
              checkpointed: bool = False) -> Iterator[torch.Tensor]:
    """Yield the output of every step; with ``checkpointed`` each cell recomputes its activations in backward."""
    prev = cur = x
    for i, step in enumerate(steps):
        module = body.get_submodule(step.name)
        args = (prev, cur) if step.two_inputs else (cur,)
        out = checkpoint(module, *args) if checkpointed and step.kind == "cell" else module(*args)
        prev, cur = (out, out) if i == 0 else (cur, out)
        yield out


def _level_steps(sizes: Sequence[tuple[int, int]], steps: Sequence[Step]) -> list[int]:
    """The stem, then every cell after which the resolution changes or the cells end."""
    cells = [i for i, s in enumerate(steps) if s.kind == "cell"]
    ends = [i for k, i in enumerate(cells) if k == len(cells) - 1 or sizes[cells[k + 1]] != sizes[i]]
    return [0, *ends]


def recorded_levels(body: nn.Module, layout: BodyLayout, input_shape: tuple[int, int, int]) -> FeatureLevels | None:
    """The levels ``body`` recorded while it was built (the project's spaces do, as timm's builders do), placed on
    ``layout``'s steps, with the final size at ``input_shape`` (C, H, W); ``None`` for a body that recorded none."""
    info = getattr(body, "feature_info", None)
    index = {s.name: i for i, s in enumerate(layout.steps)}
    if not info or any(e["module"] not in index for e in info):
        return None
    levels = [dict(e, module=f"body.{e['module']}") for e in info]
    if layout.tail is None:
        levels[-1].pop("num_chs_norm", None)
    r = int(levels[-1]["reduction"])
    final = (math.ceil(input_shape[-2] / r), math.ceil(input_shape[-1] / r))
    return FeatureLevels(levels, [index[e["module"]] for e in info], final)


def measure_levels(body: nn.Module, layout: BodyLayout, input_shape: tuple[int, int, int]) -> FeatureLevels:
    """One dry forward at ``input_shape`` (C, H, W): channels and reduction of every level, checked against the body."""
    p = next(body.parameters())
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    was_training = body.training
    body.eval()
    with torch.no_grad():
        outs = list(run_steps(body, layout.steps, x))
        expected = body.forward_features(x)
    body.train(was_training)
    if outs[-1].shape != expected.shape or not torch.allclose(outs[-1], expected, rtol=1e-4, atol=1e-5):
        raise ValueError(f"walking {type(body).__name__} step by step does not reproduce its forward_features; "
                         "its stem, cells/blocks and lastact/conv_head must run in that order")
    sizes = [(int(o.shape[-2]), int(o.shape[-1])) for o in outs]
    levels = _level_steps(sizes, layout.steps)
    info = []
    for i in levels:
        reduction = max(1, round(input_shape[-1] / sizes[i][1]))
        name = f"body.{layout.steps[i].name}"
        info.append({"num_chs": int(outs[i].shape[1]), "reduction": reduction, "module": name})
    if layout.tail is not None:
        info[-1]["num_chs_norm"] = int(outs[-1].shape[1])  # the last level after the final layers (norm=True)
    return FeatureLevels(info, levels, sizes[-1])
