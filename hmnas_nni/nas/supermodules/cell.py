"""NNI's ``Cell`` in an HM-NAS supernet: the edge and operation levels of a cell, with its graph known.

Every predecessor-to-node edge ``j -> i`` carries all candidate ops (created by the cell's op factory with
input index ``j``, so reduction cells get their strides right), with ``alpha`` over its ops and one mask per
op; every node ``i`` has ``beta`` over its ``i`` possible inputs and one mask per input:

    x_i = sum_j  mb_ij * b_ij * sum_o  mo_ijo * a_ijo * op_o(x_j)

HM-NAS keeps any number of edges per node and ops per edge (NNI's ``num_ops_per_node`` and its one op per
slot do not bound it). The cell's output concatenates every node, a removed node as zeros, as NNI's
one-shot cells treat ``merge_op`` (``loose_end`` included) so that the cell's output shape stays fixed.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import Cell, LayerChoice
from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingCell

from hmnas_nni.format.architecture import Architecture

from ..dataflow import INPUT, Flow, FlowEdge
from ..derived import DerivedCell, KeptOps
from ..masks import MaskScores, masked_softmax
from .memo import shared_logits, shared_masks

#: Live inputs of each node and, per live input, the live ops of that edge.
Plan = dict[int, list[tuple[int, list[int]]]]


def _copy_op(node: int, op_index: int, input_index: int | None, *, op: nn.Module) -> nn.Module:
    return copy.deepcopy(op)


def op_factory_of(cell: Cell) -> list | dict:
    """The cell's op factory; for cells built from modules, one that copies its candidate modules."""
    if cell.op_candidates_factory is not None:
        return cell.op_candidates_factory
    first = cell.ops[-1][-1]
    if not isinstance(first, LayerChoice):
        raise TypeError(f"cell {cell.label!r} has ops of type {type(first).__name__}, which is not supported: HMNAS "
                        "relaxes cells whose ops are LayerChoices (as nni.nas.nn.pytorch.Cell builds them)")
    candidates = first.candidates
    if isinstance(candidates, dict):
        return {name: functools.partial(_copy_op, op=op) for name, op in candidates.items()}
    return [functools.partial(_copy_op, op=op) for op in candidates]


class HMNASMixedCell(PathSamplingCell):
    """An NNI ``Cell`` relaxed at the edge and operation levels (a full DAG of edges, each with every op)."""

    _arch_parameter_names: list[str] = ["_arch_alpha", "_arch_beta"]

    def __init__(self, op_factory: Any, num_nodes: int, num_ops_per_node: int, num_predecessors: int,
                 preprocessor: Any, postprocessor: Any, concat_dim: int, memo: dict[str, Any],
                 mutate_kwargs: dict[str, Any], label: str) -> None:
        super().__init__(op_factory, num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor,
                         concat_dim, memo, mutate_kwargs, label)
        k = len(self.op_names)
        self._arch_alpha = nn.ParameterDict()
        self._arch_beta = nn.ParameterDict()
        self.op_masks = nn.ModuleDict()
        self.input_masks = nn.ModuleDict()
        for i in self.node_ids():
            self._arch_beta[str(i)] = shared_logits(memo, f"{label}/{i}#beta", i)
            self.input_masks[str(i)] = shared_masks(memo, f"{label}/{i}#inputs", i, mutate_kwargs)
            for j in range(i):
                self._arch_alpha[f"{i}_{j}"] = shared_logits(memo, f"{label}/{i}_{j}#alpha", k)
                self.op_masks[f"{i}_{j}"] = shared_masks(memo, f"{label}/{i}_{j}#ops", k, mutate_kwargs)

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        if type(module) is not Cell:
            return None
        return cls(op_factory_of(module), module.num_nodes, module.num_ops_per_node, module.num_predecessors,
                   module.preprocessor, module.postprocessor, module.concat_dim, memo, mutate_kwargs, module.label)

    # -- structure
    def node_ids(self) -> range:
        return range(self.num_predecessors, self.num_predecessors + self.num_nodes)

    def named_masks(self) -> dict[str, MaskScores]:
        out = {f"cell:{self.label}/{i}#inputs": m for i, m in self.input_masks.items()}
        out.update({f"cell:{self.label}/{e}#ops": m for e, m in self.op_masks.items()})
        return out

    def dataflow(self) -> Flow:
        """The cell's graph: edge ``j -> i`` depends on the cell's inputs (``j`` a predecessor) or on node ``j``'s
        in-edges; the output (every node, concatenated) depends on every edge."""
        edges, sources = [], {}
        for i in self.node_ids():
            for j in range(i):
                key = f"{self.label}/{j}->{i}"
                edges.append(FlowEdge(key, self.op_masks[f"{i}_{j}"], (self.input_masks[str(i)], j)))
                sources[key] = frozenset({INPUT} if j < self.num_predecessors else
                                         {f"{self.label}/{m}->{j}" for m in range(j)})
        return Flow(f"cell {self.label!r}", edges, sources, frozenset(sources))

    def plan(self) -> Plan:
        """What the masks keep: per node, its live inputs (from live nodes) with their live ops."""
        plan: Plan = {}
        for i in self.node_ids():
            kept = []
            for j in self.input_masks[str(i)].live:
                ops = self.op_masks[f"{i}_{j}"].live
                if ops and (j < self.num_predecessors or plan.get(j)):
                    kept.append((j, ops))
            plan[i] = kept
        return plan

    # -- NNI's supermodule interface
    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Per node, its kept input edges with their weights and kept ops: ``{label: {node: [edge, ...]}}``."""
        if self.label in memo:
            return {}
        nodes: dict[str, list[dict[str, Any]]] = {}
        with torch.no_grad():
            for i, kept in self.plan().items():
                if not kept:
                    continue
                b = self._input_weights(i, [j for j, _ in kept]).tolist()
                nodes[str(i)] = [{"input": j, "weight": bj, "ops": [
                    {"op": self.op_names[o], "weight": a} for o, a in zip(ops, self._op_weights(i, j, ops).tolist())]}
                    for (j, ops), bj in zip(kept, b)]
        return {self.label: nodes}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, alpha in self._arch_alpha.items():
            if f"{self.label}/{key}" not in memo:
                out[f"{self.label}/{key}"] = dict(zip(self.op_names, torch.softmax(alpha.detach(), -1).tolist()))
        return out

    def arch_parameters(self):
        yield from self._arch_alpha.values()  # its own logits, without walking the ops' weights
        yield from self._arch_beta.values()

    # -- forward
    def _input_weights(self, i: int, inputs: list[int]) -> torch.Tensor:
        mask = self.input_masks[str(i)]
        live = mask.live
        w = masked_softmax(self._arch_beta[str(i)], mask(), live)
        return w[[live.index(j) for j in inputs]] if inputs != live else w

    def _op_weights(self, i: int, j: int, ops: list[int]) -> torch.Tensor:
        mask = self.op_masks[f"{i}_{j}"]
        return masked_softmax(self._arch_alpha[f"{i}_{j}"], mask(), ops)

    def _node(self, i: int, kept: list[tuple[int, list[int]]], states: list[torch.Tensor | None]) -> torch.Tensor:
        b = self._input_weights(i, [j for j, _ in kept])
        node = None
        for k, (j, ops) in enumerate(kept):
            a = self._op_weights(i, j, ops) * b[k]
            edge = None
            for m, o in enumerate(ops):
                y = self.ops[i - self.num_predecessors][j][self.op_names[o]](states[j]) * a[m]
                edge = y if edge is None else edge + y
            node = edge if node is None else node + edge
        return node

    def forward(self, *inputs: Any) -> Any:
        processed = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states: list[torch.Tensor | None] = list(self.preprocessor(processed))
        for i, kept in self.plan().items():
            states.append(self._node(i, kept, states) if kept else None)
        nodes = states[self.num_predecessors:]
        ref = next((s for s in nodes if s is not None), None)
        if ref is None:
            raise RuntimeError(f"cell {self.label!r} has no live node; the hierarchy rules keep one, so the masks "
                               "were changed without Hierarchy.apply()")
        this_cell = torch.cat([s if s is not None else torch.zeros_like(ref) for s in nodes], self.concat_dim)
        return self.postprocessor(this_cell, processed)

    # -- derivation
    def derive(self, arch: Architecture) -> nn.Module:
        """The cell with only the edges and ops ``arch`` keeps, each op weighted by (edge weight x op weight)."""
        nodes = arch.cells.get(self.label)
        if nodes is None:
            raise ValueError(f"architecture has no decision for cell {self.label!r}")
        edges = []
        for node, entries in nodes.items():
            i = int(node)
            for e in entries:
                j = int(e["input"])
                candidates = self.ops[i - self.num_predecessors][j]
                names = [o["op"] for o in e["ops"]]
                w = torch.tensor([o["weight"] for o in e["ops"]]) * torch.tensor(float(e["weight"]))
                edges.append((i, j, KeptOps({n: candidates[n] for n in names}, w.tolist())))
        return DerivedCell(self.preprocessor, self.postprocessor, self.num_predecessors, self.num_nodes,
                           self.concat_dim, edges)
