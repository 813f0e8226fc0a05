"""Plain PyTorch modules that hold what a derived architecture kept, and nothing else.

Each replaces one relaxed module of the supernet in the derived network and computes exactly what
the masked supernet computed there (same ops, same weights, same order of sums), with no NNI class
and no architecture parameter inside.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Union

import torch
import torch.nn as nn


class KeptOps(nn.Module):
    """The ops an architecture kept on one edge (or ``LayerChoice``), summed with their learned weights."""

    def __init__(self, ops: dict[str, nn.Module], weights: list[float]) -> None:
        super().__init__()
        if not ops or len(ops) != len(weights):
            raise ValueError(f"KeptOps needs one weight per kept op, got {len(ops)} ops and {len(weights)} weights")
        self.ops = nn.ModuleDict(ops)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        k = 0
        for op in self.ops.values():
            y = op(x) * self.weights[k]
            out = y if k == 0 else out + y
            k += 1
        return out


class RemovedEdge(nn.Module):
    """A removed edge: zeros shaped like the edge's output, so the sum it fed is unchanged.

    The shape follows the input as the edge's output did in the supernet: the input's channels if the edge kept
    them (so a width-pruned network still fits), else the edge's own; spatial sizes scaled by the same ratio
    (``ceil``, as strided convolutions and pooling round).
    """

    def __init__(self, in_shape: list[int], out_shape: list[int]) -> None:
        super().__init__()
        if len(in_shape) != len(out_shape) or len(out_shape) < 2:
            raise ValueError(f"RemovedEdge needs input and output shapes of one rank, got {in_shape} -> {out_shape}")
        self.channels: int = -1 if out_shape[1] == in_shape[1] else int(out_shape[1])
        self.size_in: list[int] = [int(d) for d in in_shape[2:]]
        self.size_out: list[int] = [int(d) for d in out_shape[2:]]

    @staticmethod
    def rule(in_shape: list[int], out_shape: list[int]) -> tuple[int, tuple[Fraction, ...]]:
        """What a removed edge computes from its input's shape: fixed channels (-1: the input's) and each size's ratio;
        edges with one rule give zeros of one shape for every input."""
        channels = -1 if out_shape[1] == in_shape[1] else int(out_shape[1])
        return channels, tuple(Fraction(int(o), int(i)) for i, o in zip(in_shape[2:], out_shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[0], x.shape[1] if self.channels < 0 else self.channels]
        for d in range(len(self.size_in)):
            shape.append((x.shape[d + 2] * self.size_out[d] + self.size_in[d] - 1) // self.size_in[d])
        return x.new_zeros(shape)


class KeptInputs(nn.Module):
    """The inputs an architecture kept at one ``InputChoice``, summed with their learned weights."""

    def __init__(self, indices: list[int], weights: list[float]) -> None:
        super().__init__()
        if not indices or len(indices) != len(weights):
            raise ValueError(f"KeptInputs needs one weight per kept input, got {indices} and {weights}")
        self.indices: list[int] = [int(i) for i in indices]
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(self, candidate_inputs: list[torch.Tensor]) -> torch.Tensor:
        out = candidate_inputs[self.indices[0]] * self.weights[0]
        for k in range(1, len(self.indices)):
            out = out + candidate_inputs[self.indices[k]] * self.weights[k]
        return out


class DerivedCell(nn.Module):
    """An NNI ``Cell`` holding only the edges and ops an architecture kept.

    Called as NNI's ``Cell`` is, with a list of predecessors (or, for one predecessor, the tensor itself). A
    removed node takes no input and feeds nothing; in the cell's concatenation it is zeros, so the output keeps
    the shape the following layers were trained on. TorchScript compiles it when its pre- and postprocessor
    compile.
    """

    def __init__(self, preprocessor: nn.Module, postprocessor: nn.Module, num_predecessors: int, num_nodes: int,
                 concat_dim: int, edges: list[tuple[int, int, KeptOps]]) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.num_predecessors = num_predecessors
        self.num_nodes = num_nodes
        self.concat_dim = concat_dim
        order = sorted(range(len(edges)), key=lambda k: (edges[k][0], edges[k][1]))
        self.edge_dst: list[int] = [edges[k][0] for k in order]
        self.edge_src: list[int] = [edges[k][1] for k in order]
        self.edges = nn.ModuleList([edges[k][2] for k in order])
        alive = set(self.edge_dst)
        self.node_alive: list[bool] = [i in alive for i in range(num_predecessors, num_predecessors + num_nodes)]
        if not edges:
            raise ValueError("a derived cell needs at least one node with a kept input edge")
        self.last_alive: int = max(alive)

    def forward(self, inputs: Union[list[torch.Tensor], torch.Tensor]):  # noqa: UP007 (TorchScript reads Union)
        processed = [inputs] if isinstance(inputs, torch.Tensor) else inputs
        if len(processed) != self.num_predecessors:
            raise ValueError("a derived cell takes as many inputs as its cell's num_predecessors")
        states = self.preprocessor(processed)
        acc = states[0]
        node = -1
        k = 0
        for edge in self.edges:
            dst = self.edge_dst[k]
            if dst != node:  # the first kept edge of the next live node
                if node >= 0:
                    states.append(acc)
                while len(states) < dst:  # removed nodes: placeholders, only the concat sees them (as zeros)
                    states.append(states[0])
                node = dst
                acc = edge(states[self.edge_src[k]])
            else:
                acc = acc + edge(states[self.edge_src[k]])
            k += 1
        states.append(acc)
        ref = states[self.last_alive]
        outs: list[torch.Tensor] = []
        for i in range(self.num_nodes):
            outs.append(states[self.num_predecessors + i] if self.node_alive[i] else torch.zeros_like(ref))
        return self.postprocessor(torch.cat(outs, self.concat_dim), processed)


class Blocks(nn.Module):
    """A fixed stack of blocks (what an NNI ``Repeat`` keeps), applied in order."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Any) -> Any:
        for block in self.blocks:
            x = block(x)
        return x
