"""Plain PyTorch modules that hold what a derived architecture kept, and nothing else.

Derived networks use the same module paths as the supernet (``cells.3.edges.2_4`` ...),
with each choice's kept candidates under ``ops``, so weights inherited from a supernet
map one to one. No NNI class appears in them and they compile with ``torch.jit.script``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.format.graph import CellGraph, Edge, liveness


class DerivedOps(nn.Module):
    """The ops kept on one edge, summed with their learned weights."""

    def __init__(self, ops: dict[str, nn.Module], weights: list[float]) -> None:
        super().__init__()
        if not ops:
            raise ValueError("DerivedOps needs at least one kept op")
        self.ops = nn.ModuleDict(ops)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        k = 0
        for _, op in self.ops.items():
            y = op(x) * self.weights[k]
            out = y if k == 0 else out + y
            k += 1
        return out


def derived_ops(arch: Architecture, label: str, candidates: dict[str, nn.Module]) -> DerivedOps:
    """Keep the candidates the architecture names for ``label``, in the space's candidate order."""
    weights = arch.op_weights(label)
    kept = {name: op for name, op in candidates.items() if name in weights}
    return DerivedOps(kept, [weights[name] for name in kept])


def kept_edges(graph: CellGraph, arch: Architecture) -> dict[Edge, bool]:
    """Which edges of ``graph`` the architecture keeps: some op kept and, where inputs are chosen, the input kept."""
    kept = {}
    for e in graph.edges:
        on = bool(arch.ops.get(e.op_label))
        if e.input_label is not None:
            on = on and e.input_index in arch.input_weights(e.input_label)
        kept[e] = on
    return kept


class DerivedCell(nn.Module):
    """A cell DAG with only its live edges. Subclasses define ``forward`` and call :meth:`run_dag`."""

    def __init__(self, graph: CellGraph, arch: Architecture, make_ops: Callable[[Edge], dict[str, nn.Module]]) -> None:
        super().__init__()
        live = liveness(graph, kept_edges(graph, arch))
        if not live.output_reached:
            raise ValueError(f"architecture leaves no path from the inputs to the output of the {graph.kind!r} cell")
        self.edges = nn.ModuleDict()
        src: list[int] = []
        dst: list[int] = []
        weight: list[float] = []
        for e in live.live_edges:
            self.edges[e.key] = derived_ops(arch, e.op_label, make_ops(e))
            src.append(e.src)
            dst.append(e.dst)
            weight.append(arch.input_weights(e.input_label)[e.input_index] if e.input_label is not None else 1.0)
        self.edge_src = src
        self.edge_dst = dst
        self.register_buffer("edge_weight", torch.tensor(weight, dtype=torch.float32), persistent=False)
        self.num_inputs = graph.num_inputs
        self.num_nodes = graph.num_nodes
        self.node_alive = [live.node_alive(n) for n in graph.node_ids]
        self.concat_output = graph.output == "concat"

    def run_dag(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Compute the live nodes in order; a removed node is a placeholder that only the concat sees (as zeros)."""
        acc = states[0]
        k = 0
        for _, edge in self.edges.items():
            node = self.edge_dst[k]
            while len(states) < node:  # close the nodes before this edge's node
                states.append(acc)
            y = edge(states[self.edge_src[k]]) * self.edge_weight[k]
            if len(states) == node and (k == 0 or self.edge_dst[k - 1] != node):
                acc = y
            else:
                acc = acc + y
            k += 1
        while len(states) < self.num_inputs + self.num_nodes:
            states.append(acc)
        if not self.concat_output:
            return states[-1]
        ref = states[self.num_inputs]
        for i in range(self.num_nodes):
            if self.node_alive[i]:
                ref = states[self.num_inputs + i]
        outs: list[torch.Tensor] = []
        for i in range(self.num_nodes):
            outs.append(states[self.num_inputs + i] if self.node_alive[i] else torch.zeros_like(ref))
        return torch.cat(outs, dim=1)
