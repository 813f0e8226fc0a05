"""Dataflow graphs of switchable edges: which edges feed which, and which feed the output.

HM-NAS's hierarchy rules (a node with no live input is removed with its out-edges; a node that feeds
nothing is removed with its in-edges; a path from the inputs to the output always stays) need the graph
behind the edges. An NNI ``Cell`` states it (:meth:`HMNASMixedCell.dataflow`); for ``LayerChoice`` edges
that a space sums itself (NAS-Bench-201 cells), :class:`DataflowProbe` reads it from the autograd graph
of one training forward pass, so no space has to declare it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .masks import MaskScores

#: A source that is not an edge: the network's (or the cell's) input.
INPUT = "<input>"


@dataclass(frozen=True, eq=False)
class FlowEdge:
    """One switchable edge: on when its gate entry is on and one of its ops is."""

    key: str
    ops: MaskScores
    gate: tuple[MaskScores, int] | None = None


@dataclass
class Flow:
    """Edges in execution order, the nearest edges (or :data:`INPUT`) each one's input depends on, and the
    nearest edges (or :data:`INPUT`) the output depends on."""

    name: str
    edges: list[FlowEdge]
    sources: dict[str, frozenset[str]]
    output: frozenset[str]
    keys: dict[str, FlowEdge] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = {e.key: e for e in self.edges}

    def reached(self, on: Callable[[FlowEdge], bool]) -> set[str]:
        """Edges that are on and get a signal: their input depends on the input or on a reached edge."""
        out: set[str] = set()
        for e in self.edges:
            if on(e) and self._fed(self.sources[e.key], out):
                out.add(e.key)
        return out

    def useful(self, reached: set[str]) -> set[str]:
        """Reached edges whose output reaches the output (directly or through useful edges)."""
        out = {k for k in reached if k in self.output}
        for e in reversed(self.edges):
            if e.key in reached and any(e.key in self.sources[c] for c in out):
                out.add(e.key)
        return out

    def output_reached(self, reached: set[str]) -> bool:
        return self._fed(self.output, reached)

    def frontier(self, reached: set[str], on: Callable[[FlowEdge], bool]) -> list[FlowEdge]:
        """Edges that are off but would get a signal if switched on."""
        return [e for e in self.edges if not on(e) and self._fed(self.sources[e.key], reached)]

    @staticmethod
    def _fed(sources: frozenset[str], reached: set[str]) -> bool:
        return INPUT in sources or any(s in reached for s in sources)

    def to_json(self) -> dict[str, Any]:
        """The graph by edge key (masks are looked up again when it is read back)."""
        return {"name": self.name, "edges": [e.key for e in self.edges],
                "sources": {k: sorted(v) for k, v in self.sources.items()}, "output": sorted(self.output)}

    @classmethod
    def from_json(cls, doc: dict[str, Any], edges: dict[str, FlowEdge]) -> Flow:
        """Read back :meth:`to_json`; ``edges`` maps each edge module's key (before ``@call``) to its edge."""
        missing = [k for k in doc["edges"] if k.rsplit("@", 1)[0] not in edges]
        if missing:
            raise ValueError(f"dataflow names edges {missing[:3]} that this supernet does not have")
        flow_edges = []
        for k in doc["edges"]:
            base = edges[k.rsplit("@", 1)[0]]
            flow_edges.append(FlowEdge(k, base.ops, base.gate))
        return cls(doc["name"], flow_edges, {k: frozenset(v) for k, v in doc["sources"].items()},
                   frozenset(doc["output"]))


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor inside a (nested tuple/list/dict) value."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def nearest_sources(tensors: Iterable[torch.Tensor], produced_by: dict[Any, str], inputs: set[int]) -> frozenset[str]:
    """Walk the autograd graph back from ``tensors`` to the nearest edge outputs and to the marked ``inputs``
    (leaf tensors, by id). What depends on neither (only on parameters or constants) counts as fed by the input."""
    found: set[str] = set()
    stack = []
    for t in tensors:
        if t.grad_fn is not None:
            stack.append(t.grad_fn)
        elif id(t) in inputs:
            found.add(INPUT)
    seen: set[int] = set()
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if fn in produced_by:
            found.add(produced_by[fn])
            continue
        if type(fn).__name__ == "AccumulateGrad":
            if id(fn.variable) in inputs:
                found.add(INPUT)
            continue  # a parameter
        stack.extend(next_fn for next_fn, _ in fn.next_functions if next_fn is not None)
    return frozenset(found or {INPUT})


class DataflowProbe:
    """Records one forward pass with gradients through ``model`` and calls ``done(flow)`` with the graph of
    ``edges`` (module -> its :class:`FlowEdge`); then removes its hooks."""

    def __init__(self, model: nn.Module, edges: dict[nn.Module, FlowEdge], done: Callable[[Flow], None]) -> None:
        self.edges = edges
        self.done = done
        self._calls: list[tuple[FlowEdge, list[torch.Tensor], torch.Tensor]] = []
        self._inputs: list[torch.Tensor] = []
        self._hooks = [m.register_forward_hook(self._record) for m in edges]
        self._hooks.append(model.register_forward_pre_hook(self._start, with_kwargs=True))
        self._hooks.append(model.register_forward_hook(self._finish))

    def _mark(self, value: Any) -> Any:
        """A floating-point input as ``leaf * 1`` with the leaf requiring grad, so the walk can recognise it."""
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
            leaf = value.detach().requires_grad_()
            self._inputs.append(leaf)
            return leaf * 1.0
        if isinstance(value, (list, tuple)):
            return type(value)(self._mark(v) for v in value)
        return value

    def _start(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
        self._calls, self._inputs = [], []
        if not torch.is_grad_enabled():
            return None
        return tuple(self._mark(a) for a in args), {k: self._mark(v) for k, v in kwargs.items()}

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            self._calls.append((self.edges[module], _tensors(args), output))

    def _finish(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled() or not self._calls:
            return  # an evaluation pass: wait for a training one
        produced_by: dict[Any, str] = {}
        edges: list[FlowEdge] = []
        keys: dict[int, str] = {}
        for k, (edge, _, out) in enumerate(self._calls):
            key = f"{edge.key}@{k}"  # an edge module run twice (shared, or in a loop) is two edges of the flow
            keys[k] = key
            edges.append(FlowEdge(key, edge.ops, edge.gate))
            if out.grad_fn is not None:
                produced_by[out.grad_fn] = key
        inputs = {id(t) for t in self._inputs}
        sources = {keys[k]: nearest_sources(args_, produced_by, inputs)
                   for k, (_, args_, _) in enumerate(self._calls)}
        flow = Flow("supernet", edges, sources, nearest_sources(_tensors(output), produced_by, inputs))
        self._calls, self._inputs = [], []
        self.remove()
        self.done(flow)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
