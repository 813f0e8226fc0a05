"""Dataflow graphs of switchable edges: which edges feed which, and which feed the output.

HM-NAS's hierarchy rules (a node with no live input is removed with its out-edges; a node that feeds
nothing is removed with its in-edges; a path from the inputs to the output always stays) need the graph
behind the edges. An NNI ``Cell`` states it (:meth:`HMNASMixedCell.dataflow`); for ``LayerChoice`` edges
that a space sums itself (NAS-Bench-201 cells), :class:`DataflowProbe` reads it from the autograd graph
of one training forward pass, so no space has to declare it.

An edge may sit inside an op of another edge (a ``LayerChoice`` in a candidate of a ``LayerChoice``): the flow
then records the op it sits in and what that op's output depends on, so the inner edge counts when the op it sits
in is kept and passes its signal on, and the outer edge's op counts only when its inner edges pass theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .masks import MaskScores

#: A source that is not an edge: the network's (or the cell's) input.
INPUT = "<input>"

#: Which entries of each mask are on (mask id -> one flag per entry), as the hierarchy rules see them.
OnState = Mapping[int, list[bool]]


@dataclass(frozen=True, eq=False)
class FlowEdge:
    """One switchable edge: on when its gate entry is on and one of its ops (that carries data) is."""

    key: str
    ops: MaskScores
    gate: tuple[MaskScores, int] | None = None

    def gate_on(self, on: OnState) -> bool:
        return self.gate is None or on[id(self.gate[0])][self.gate[1]]

    def op_on(self, on: OnState, i: int) -> bool:
        return on[id(self.ops)][i] and self.ops.carries[i]

    def is_on(self, on: OnState) -> bool:
        return self.gate_on(on) and any(self.op_on(on, i) for i in range(len(self.ops.carries)))


@dataclass
class Flow:
    """Edges in execution order, the nearest edges (or :data:`INPUT`) each one's input depends on, and the
    nearest edges (or :data:`INPUT`) the output depends on. ``within`` maps an edge inside an op of another edge
    to that ``(edge, op index)``; ``op_sources`` gives, for such an op, the nearest edges (or :data:`INPUT`) its
    output depends on."""

    name: str
    edges: list[FlowEdge]
    sources: dict[str, frozenset[str]]
    output: frozenset[str]
    within: dict[str, tuple[str, int]] = field(default_factory=dict)
    op_sources: dict[tuple[str, int], frozenset[str]] = field(default_factory=dict)
    keys: dict[str, FlowEdge] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = {e.key: e for e in self.edges}

    def switched_on(self, e: FlowEdge, on: OnState) -> bool:
        """``e`` is on, and so is every op it sits in (with that op's edge gate)."""
        return e.is_on(on) and self.around_on(e, on)

    def around_on(self, e: FlowEdge, on: OnState) -> bool:
        """Every op ``e`` sits in is on, with the gates of their edges."""
        while e.key in self.within:
            key, i = self.within[e.key]
            e = self.keys[key]
            if not (e.gate_on(on) and on[id(e.ops)][i]):
                return False
        return True

    def reached(self, on: OnState, off: frozenset[str] = frozenset()) -> set[str]:
        """Edges (not in ``off``) that are switched on, get a signal (their input depends on the input or on a reached
        edge) and pass it on (an op of theirs that is on does: a plain op, or one whose output depends on a reached
        edge)."""
        out: set[str] = set()
        for e in self.edges:  # execution order: an edge inside an op comes before the edge around it
            if e.key in off or not self.switched_on(e, on):
                continue
            if self._fed(self.sources[e.key], out) and self.passing_ops(e, on, out):
                out.add(e.key)
        return out

    def passing_ops(self, e: FlowEdge, on: OnState, reached: set[str]) -> list[int]:
        """The ops of ``e`` that are on and pass a signal on, given the ``reached`` edges."""
        return [i for i in range(len(e.ops.carries))
                if e.op_on(on, i) and self._fed(self.op_sources.get((e.key, i), self.sources[e.key]), reached)]

    def useful(self, reached: set[str]) -> set[str]:
        """Reached edges whose output reaches the output (directly, through useful edges, or through the output of
        the op they sit in when its edge is useful)."""
        out = {k for k in reached if k in self.output}
        for e in reversed(self.edges):
            if e.key in reached and e.key not in out and self._feeds(e.key, out):
                out.add(e.key)
        return out

    def _feeds(self, key: str, useful: set[str]) -> bool:
        if any(key in self.sources[c] for c in useful):
            return True
        around = self.within.get(key)
        return around is not None and around[0] in useful and key in self.op_sources.get(around, frozenset())

    def output_reached(self, reached: set[str]) -> bool:
        return self._fed(self.output, reached)

    def frontier(self, reached: set[str], on: OnState) -> list[FlowEdge]:
        """Edges that are off (or sit in an op that is off) but would get a signal if switched on."""
        return [e for e in self.edges if not self.switched_on(e, on) and self._fed(self.sources[e.key], reached)]

    @staticmethod
    def _fed(sources: frozenset[str], reached: set[str]) -> bool:
        return INPUT in sources or any(s in reached for s in sources)

    def to_json(self) -> dict[str, Any]:
        """The graph by edge key (masks are looked up again when it is read back)."""
        return {"name": self.name, "edges": [e.key for e in self.edges],
                "sources": {k: sorted(v) for k, v in self.sources.items()}, "output": sorted(self.output),
                "within": {k: list(v) for k, v in self.within.items()},
                "op_sources": [[k, i, sorted(v)] for (k, i), v in self.op_sources.items()]}

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
                   frozenset(doc["output"]), {k: (v[0], int(v[1])) for k, v in doc.get("within", {}).items()},
                   {(k, int(i)): frozenset(v) for k, i, v in doc.get("op_sources", [])})


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


@dataclass(frozen=True, eq=False)
class Nesting:
    """Where an edge module sits: inside ``op``, the candidate ``index`` of the edge module ``around``."""

    around: nn.Module
    index: int
    op: nn.Module


class DataflowProbe:
    """Records one forward pass with gradients through ``model`` and calls ``done(flow)`` with the graph of
    ``edges`` (module -> its :class:`FlowEdge`), ``nesting`` saying which edge modules sit inside an op of another;
    then removes its hooks."""

    def __init__(self, model: nn.Module, edges: dict[nn.Module, FlowEdge], done: Callable[[Flow], None],
                 nesting: Mapping[nn.Module, Nesting] | None = None) -> None:
        self.edges = edges
        self.done = done
        self.nesting = dict(nesting or {})
        self._ops = {n.op: n for n in self.nesting.values()}
        self._calls: list[tuple[nn.Module, list[torch.Tensor], torch.Tensor]] = []
        self._op_calls: list[tuple[int, Nesting, torch.Tensor]] = []
        self._inputs: list[torch.Tensor] = []
        self._hooks = [m.register_forward_hook(self._record) for m in edges]
        self._hooks += [op.register_forward_hook(self._record_op) for op in self._ops]
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
        self._calls, self._op_calls, self._inputs = [], [], []
        if not torch.is_grad_enabled():
            return None
        return tuple(self._mark(a) for a in args), {k: self._mark(v) for k, v in kwargs.items()}

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            self._calls.append((module, _tensors(args), output))

    def _record_op(self, module: nn.Module, args: Any, output: Any) -> None:
        """An op that holds edges finished: the next call of its edge is the one it belongs to."""
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            self._op_calls.append((len(self._calls), self._ops[module], output))

    def _next_call(self, module: nn.Module, start: int) -> int | None:
        return next((k for k in range(start, len(self._calls)) if self._calls[k][0] is module), None)

    def _finish(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled() or not self._calls:
            return  # an evaluation pass: wait for a training one
        # an edge module run twice (shared, or in a loop) is two edges of the flow
        keys = [f"{self.edges[m].key}@{k}" for k, (m, _, _) in enumerate(self._calls)]
        produced_by = {out.grad_fn: keys[k] for k, (_, _, out) in enumerate(self._calls) if out.grad_fn is not None}
        inputs = {id(t) for t in self._inputs}
        edges = [FlowEdge(keys[k], self.edges[m].ops, self.edges[m].gate) for k, (m, _, _) in enumerate(self._calls)]
        sources = {keys[k]: nearest_sources(a, produced_by, inputs) for k, (_, a, _) in enumerate(self._calls)}
        within, op_sources = {}, {}
        for k, (m, _, _) in enumerate(self._calls):
            nest = self.nesting.get(m)
            around = None if nest is None else self._next_call(nest.around, k + 1)
            if around is not None:
                within[keys[k]] = (keys[around], nest.index)
        for start, nest, out in self._op_calls:
            around = self._next_call(nest.around, start)
            if around is not None:
                op_sources[(keys[around], nest.index)] = nearest_sources([out], produced_by, inputs)
        flow = Flow("supernet", edges, sources, nearest_sources(_tensors(output), produced_by, inputs), within,
                    op_sources)
        self._calls, self._op_calls, self._inputs = [], [], []
        self.remove()
        self.done(flow)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
