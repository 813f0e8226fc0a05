"""Hierarchical masking rules, applied after every mask update.

1. An edge whose mask is 0 (or whose ops are all masked) removes all its operations.
2. A node with no live input is removed, and so are the edges leaving it; an edge whose output feeds nothing that
   reaches the output is removed too, and so is an op whose output depends only on removed edges (the edges inside
   it, where a choice sits in an op of another).
3. A cell (and the whole network) keeps at least one path from its inputs to its output: if masking
   would cut every path, the highest-scoring edge that reconnects it is kept (and its best op), and the
   log says so.
4. A choice outside any graph (a ``LayerChoice`` of a chain, an ``InputChoice``) keeps at least its best entry.
5. A removed op (of a ``LayerChoice`` or a cell edge) or a removed block (of a ``Repeat``) removes every choice
   inside it, unless a kept part of the network uses that choice too.

The graphs come from the supernet itself: each NNI ``Cell`` states its own, and the ``LayerChoice`` edges a
space sums itself are read from the first training forward pass (:class:`~hmnas_nni.nas.dataflow.DataflowProbe`),
following edges into the ops of other edges. :meth:`Hierarchy.removed` lists every entry the rules removed while
its own score kept it, with the rule that removed it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from .dataflow import DataflowProbe, Flow, FlowEdge, Nesting, OnState
from .masks import MaskScores
from .supermodules import HMNASMixedCell, HMNASMixedInput, HMNASMixedLayer, HMNASMixedRepeat

_logger = logging.getLogger(__name__)

#: Why each removed entry went: (mask id, entry) -> the rule, in words.
Reasons = dict[tuple[int, int], str]


@dataclass(frozen=True, eq=False)
class Part:
    """An op of a ``LayerChoice`` (``index``: its candidate), an op on a cell edge (``(node, input, op)``) or a
    block of a ``Repeat`` (its number, from 1), inside ``parent`` if that is not ``None``."""

    owner: nn.Module
    index: Any
    module: nn.Module
    parent: Part | None

    def describe(self) -> str:
        owner = self.owner
        if isinstance(owner, HMNASMixedLayer):
            return f"op {owner.names[self.index]!r} of {owner.label!r}"
        if isinstance(owner, HMNASMixedCell):
            node, j, o = self.index
            return f"op {owner.op_names[o]!r} on edge {j}->{node} of cell {owner.label!r}"
        return f"block {self.index} of a Repeat"


class Hierarchy:
    """Owns every mask of a supernet and keeps their ``forced`` / ``alive`` / ``live`` state consistent."""

    def __init__(self, masks: dict[str, MaskScores], keep_one: dict[str, MaskScores], cells: list[Flow],
                 gated: dict[str, FlowEdge]) -> None:
        self.masks = masks
        self.keep_one = keep_one
        self.cells = cells
        self.gated = gated
        self.traced: Flow | None = None
        self.bridges: list[FlowEdge] = []
        self.repeats: list[HMNASMixedRepeat] = []
        #: Parts that hold masks, outermost first; per mask id, the innermost part of each place that holds it.
        self.parts: list[Part] = []
        self.places: dict[int, list[Part | None]] = {}
        self.nesting: dict[str, Nesting] = {}
        self.entry_names: dict[str, list[str]] = {name: [str(i) for i in range(m.scores.numel())]
                                                  for name, m in masks.items()}
        self.forced_events = 0
        self._removed: dict[str, dict[str, str]] = {}
        self._probe: DataflowProbe | None = None
        self._reported: set[str] = set()

    # -- building
    @classmethod
    def of(cls, supernet: nn.Module) -> Hierarchy:
        """The masks and graphs of an HM-NAS supernet, found by walking its modules."""
        masks: dict[str, MaskScores] = {}
        keep_one: dict[str, MaskScores] = {}
        cells: dict[str, Flow] = {}
        gated: dict[str, FlowEdge] = {}
        names: dict[str, list[str]] = {}
        for path, module in supernet.named_modules():
            if isinstance(module, HMNASMixedLayer):
                masks.setdefault(f"ops:{module.label}", module.op_masks)
                names[f"ops:{module.label}"] = [str(n) for n in module.names]
                names[f"edge:{module.label}"] = ["gate"]
                if module.edge_masks is None:
                    keep_one.setdefault(module.label, module.op_masks)
                else:
                    masks.setdefault(f"edge:{module.label}", module.edge_masks)
                    gated[path] = FlowEdge(path, module.op_masks, (module.edge_masks, 0))
            elif isinstance(module, HMNASMixedInput):
                masks.setdefault(f"inputs:{module.label}", module.edge_masks)
                keep_one.setdefault(module.label, module.edge_masks)
            elif isinstance(module, HMNASMixedCell) and module.label not in cells:
                cells[module.label] = module.dataflow()
                masks.update(module.named_masks())
                names.update({f"cell:{module.label}/{e}#ops": list(module.op_names) for e in module.op_masks})
            for m in getattr(module, "value_masks", {}).values():
                masks.setdefault(f"values:{m.label}", m)
                names[f"values:{m.label}"] = [f"step to {v}" for v in m.values[1:]]
        hierarchy = cls(masks, keep_one, list(cells.values()), gated)
        hierarchy.entry_names.update(names)
        hierarchy.repeats = [m for m in supernet.modules() if isinstance(m, HMNASMixedRepeat)]
        enclosing = hierarchy._find_parts(supernet)
        modules = dict(supernet.named_modules())
        gated_ids = {id(modules[p]) for p in gated}
        hierarchy.nesting = {p: n for p in gated if (n := _nesting(enclosing.get(id(modules[p])), gated_ids))}
        return hierarchy

    def _find_parts(self, root: nn.Module) -> dict[int, Part | None]:
        """Set :attr:`parts` and :attr:`places`; return the innermost part around each ``LayerChoice`` (by id)."""
        parts: list[Part] = []
        enclosing: dict[int, Part | None] = {}

        def visit(module: nn.Module, part: Part | None) -> None:
            if isinstance(module, MaskScores):
                self.places.setdefault(id(module), []).append(part)
                return
            if isinstance(module, HMNASMixedLayer):
                enclosing.setdefault(id(module), part)
            for child, inner in _children(module, part):
                if inner is not part:
                    parts.append(inner)
                visit(child, inner)

        visit(root, None)
        holding = {id(p) for ps in self.places.values() for p in ps for p in _chain(p)}
        self.parts = [p for p in parts if id(p) in holding]
        return enclosing

    def watch(self, supernet: nn.Module) -> None:
        """Read the graph of the gated ``LayerChoice`` edges from the supernet's next training forward pass."""
        if self.gated and self.traced is None and self._probe is None:
            modules = dict(supernet.named_modules())
            self._probe = DataflowProbe(supernet, {modules[p]: e for p, e in self.gated.items()}, self.set_traced,
                                        {modules[p]: n for p, n in self.nesting.items()})

    def set_traced(self, flow: Flow) -> None:
        """Use ``flow`` as the graph of the gated edges (from a probe or a checkpoint) and re-apply the rules."""
        if self._probe is not None:
            self._probe.remove()
            self._probe = None
        self.traced = flow
        self.bridges = _bridges(flow)
        self.apply()

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint must carry for a resumed search to apply the same rules: the traced graph."""
        return self.traced.to_json() if self.traced is not None else None

    def load_state(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.set_traced(Flow.from_json(state, self.gated))

    def all_masks(self) -> list[MaskScores]:
        return list(self.masks.values())

    # -- the rules
    def apply(self) -> list[str]:
        """Recompute what is live from the current scores; return messages for any path kept by force."""
        for m in self.all_masks():
            m.forced.zero_()
            m.alive.fill_(True)
        on = {id(m): m.switched_on() for m in self.all_masks()}
        for e in self.bridges:  # every path runs through it: its gate cannot remove it, only its ops decide
            self._force_gate(e, on)
        messages = [f"choice {name!r}: every entry was masked; kept its best entry #{self._keep_best(m, on)}"
                    for name, m in self.keep_one.items() if not any(on[id(m)])]
        results = []
        flows = self.cells + ([self.traced] if self.traced is not None else [])
        for flow in flows:
            reached, forced = self._apply_flow(flow, on)
            results.append((flow, reached))
            messages += forced
        reasons: Reasons = {}
        self._mark_dead(results, on, reasons)
        self._drop_removed_parts(on, reasons)
        self._settle(on, reasons)
        self._report(messages)
        return messages

    def _settle(self, on: OnState, reasons: Reasons) -> None:
        """Each mask's ``live`` entries (on or forced, and not removed), and the record of what the rules removed."""
        self._removed = {}
        for name, m in self.masks.items():
            kept = [o or f for o, f in zip(on[id(m)], m.forced.tolist())]
            alive = m.alive.tolist()
            m.live = [i for i, (k, a) in enumerate(zip(kept, alive)) if k and a]
            for i in (i for i, (k, a) in enumerate(zip(kept, alive)) if k and not a):
                self._removed.setdefault(name, {})[self.entry_names[name][i]] = reasons.get((id(m), i), "")

    def removed(self) -> dict[str, dict[str, str]]:
        """Every entry the rules removed at the last :meth:`apply` though its own score kept it: mask name -> entry
        (op name, input index, value step) -> the rule that removed it."""
        return {name: dict(entries) for name, entries in self._removed.items()}

    @staticmethod
    def _score(e: FlowEdge) -> float:
        if e.gate is not None:
            return float(e.gate[0].scores.detach()[e.gate[1]])
        scores = [s for s, c in zip(e.ops.scores.detach().tolist(), e.ops.carries) if c]
        return max(scores or e.ops.scores.detach().tolist())

    @staticmethod
    def _keep_best(mask: MaskScores, on: dict[int, list[bool]]) -> int:
        """Force the highest-scoring entry of ``mask`` that carries data (any, if none does) on; return its index."""
        scores = mask.scores.detach().clone()
        if any(mask.carries):
            scores[[not c for c in mask.carries]] = -float("inf")
        best = int(scores.argmax())
        mask.forced[best] = True
        on[id(mask)][best] = True
        return best

    def _force(self, flow: Flow, e: FlowEdge, on: dict[int, list[bool]]) -> None:
        """Switch ``e`` on (its best op if none is on), with every op it sits in."""
        if not any(e.op_on(on, i) for i in range(len(e.ops.carries))):
            self._keep_best(e.ops, on)
        self._force_gate(e, on)
        while e.key in flow.within:
            key, i = flow.within[e.key]
            e = flow.keys[key]
            e.ops.forced[i] = True
            on[id(e.ops)][i] = True
            self._force_gate(e, on)

    @staticmethod
    def _force_gate(e: FlowEdge, on: dict[int, list[bool]]) -> None:
        if e.gate is not None:
            mask, i = e.gate
            mask.forced[i] = True
            on[id(mask)][i] = True

    def _apply_flow(self, flow: Flow, on: dict[int, list[bool]]) -> tuple[set[str], list[str]]:
        """The edges of ``flow`` that get and pass a signal (forcing a path back if masking cut every one), and
        what was forced."""
        messages = []
        reached = flow.reached(on)
        while not flow.output_reached(reached):
            candidates = flow.frontier(reached, on)
            if not candidates:
                raise RuntimeError(f"{flow.name}: no edge can reconnect its output; is the graph connected?")
            best = max(candidates, key=self._score)
            self._force(flow, best, on)
            messages.append(f"{flow.name}: masking cut every path from inputs to output; kept edge {best.key}, "
                            "its highest-scoring edge")
            reached = flow.reached(on)
        return reached, messages

    def _mark_dead(self, results: list[tuple[Flow, set[str]]], on: OnState, reasons: Reasons) -> None:
        """Switch off every mask entry used only by edges that do not stay (an edge used twice stays if either does),
        and every op of a staying edge whose output depends only on removed edges."""
        why_ops: dict[int, str | None] = {}  # ops mask id -> None if a use keeps the edge, else why it goes
        why_gates: dict[tuple[int, int], str | None] = {}
        why_op: dict[tuple[int, int], str | None] = {}  # an op that passes nothing on, on an edge that stays
        masks: dict[int, MaskScores] = {}
        for flow, reached in results:
            useful = flow.useful(reached)
            for e in flow.edges:
                why = None if e.key in useful else _why_edge_goes(flow, e, on, reached)
                masks[id(e.ops)] = e.ops
                _merge(why_ops, id(e.ops), why)
                if e.gate is not None:
                    masks[id(e.gate[0])] = e.gate[0]
                    _merge(why_gates, (id(e.gate[0]), e.gate[1]), why)
                passing = flow.passing_ops(e, on, reached) if why is None else []
                for i in range(len(e.ops.carries)):
                    if (e.key, i) in flow.op_sources:
                        _merge(why_op, (id(e.ops), i), None if why is not None or i in passing else
                               f"rule 2: op #{i} of edge {e.key} passes nothing on: every edge inside it is removed")
        for mid, why in why_ops.items():
            if why is not None:
                _remove(masks[mid], range(masks[mid].scores.numel()), why, reasons)
        for (mid, i), why in [*why_gates.items(), *why_op.items()]:
            if why is not None:
                _remove(masks[mid], [i], why, reasons)

    def _drop_removed_parts(self, on: OnState, reasons: Reasons) -> None:
        """Rule 5: a removed op or block takes every choice inside it, unless a kept part uses that choice too."""
        dead: dict[int, str] = {}
        for part in self.parts:  # outermost first, so a part's parent is decided before it
            if part.parent is not None and id(part.parent) in dead:
                dead[id(part)] = dead[id(part.parent)]
            elif not _runs(part, on):
                dead[id(part)] = f"rule 5: inside {part.describe()}, which is removed"
        if not dead:
            return
        for m in self.all_masks():
            places = self.places.get(id(m), [None])
            whys = [next((dead[id(p)] for p in _chain(place) if id(p) in dead), None) for place in places]
            if all(whys):
                _remove(m, range(m.scores.numel()), whys[0], reasons)

    def blocks_kept(self) -> tuple[int, int]:
        """Blocks kept and blocks in all, over every ``Repeat`` with a depth choice."""
        return sum(r.chosen_depth() for r in self.repeats), sum(len(r.blocks) for r in self.repeats)

    def _report(self, messages: list[str]) -> None:
        """Log each distinct forced-path message once (the rules run after every step)."""
        self.forced_events += len(messages)
        for msg in messages:
            if msg not in self._reported:
                self._reported.add(msg)
                _logger.warning(msg)


def _why_edge_goes(flow: Flow, e: FlowEdge, on: OnState, reached: set[str]) -> str:
    """The rule that removes an edge that does not stay, in words."""
    if not e.gate_on(on):
        return f"rule 1: the gate of edge {e.key} is off"
    if not flow.around_on(e, on):
        return f"rule 5: edge {e.key} sits in an op that is removed"
    if not e.is_on(on):
        return f"rule 1: every op of edge {e.key} is off"
    if e.key not in reached:
        return f"rule 2: edge {e.key} gets no input or passes nothing on: the edges it depends on are removed"
    return f"rule 2: edge {e.key} feeds nothing that reaches the output"


def _merge(whys: dict[Any, str | None], key: Any, why: str | None) -> None:
    """An entry used in several places stays if any use keeps it (``None``); else the first reason stands."""
    if key not in whys or why is None:
        whys[key] = why if key not in whys else None


def _remove(mask: MaskScores, entries: Iterable[int], why: str, reasons: Reasons) -> None:
    """Switch ``entries`` of ``mask`` off for good, noting ``why`` for those still alive."""
    alive = mask.alive.tolist()
    entries = [i for i in entries if alive[i]]
    for i in entries:
        reasons.setdefault((id(mask), i), why)
    if entries:
        mask.alive[entries] = False


def _live(mask: MaskScores, i: int, on: OnState) -> bool:
    """On (by its score or forced: forcing sets ``on`` too) and not removed."""
    return on[id(mask)][i] and bool(mask.alive[i])


def _runs(part: Part, on: OnState) -> bool:
    """Whether the masks keep ``part`` (its own entry and the gates of its edge live, or its block within depth)."""
    owner = part.owner
    if isinstance(owner, HMNASMixedLayer):
        return _live(owner.op_masks, part.index, on) and (owner.edge_masks is None or _live(owner.edge_masks, 0, on))
    if isinstance(owner, HMNASMixedCell):
        node, j, o = part.index
        return _live(owner.input_masks[str(node)], j, on) and _live(owner.op_masks[f"{node}_{j}"], o, on)
    return part.index <= owner.chosen_depth()


def _children(module: nn.Module, part: Part | None) -> list[tuple[nn.Module, Part | None]]:
    """The children of ``module``, each with the part it opens (its op or block) or the one around it."""
    if isinstance(module, HMNASMixedLayer):
        ops = {str(n): i for i, n in enumerate(module.names)}
        return [(c, Part(module, ops[n], c, part) if n in ops else part) for n, c in module.named_children()]
    if isinstance(module, HMNASMixedCell):
        out = [(c, part) for n, c in module.named_children() if n != "ops"]
        for i in module.node_ids():
            for j in range(i):
                for o, name in enumerate(module.op_names):
                    op = module.ops[i - module.num_predecessors][j][name]
                    out.append((op, Part(module, (i, j, o), op, part)))
        return out
    if isinstance(module, HMNASMixedRepeat):
        blocks = [(b, Part(module, k, b, part)) for k, b in enumerate(module.blocks, start=1)]
        return [(c, part) for n, c in module.named_children() if n != "blocks"] + blocks
    return [(c, part) for c in module.children()]


def _chain(part: Part | None) -> list[Part]:
    """``part`` and every part around it."""
    out = []
    while part is not None:
        out.append(part)
        part = part.parent
    return out


def _nesting(part: Part | None, gated: set[int]) -> Nesting | None:
    """Where a gated edge sits: the nearest op of another gated edge (module ids ``gated``) around it, if any."""
    for p in _chain(part):
        if isinstance(p.owner, HMNASMixedLayer) and id(p.owner) in gated:
            return Nesting(p.owner, p.index, p.module)
    return None


def _bridges(flow: Flow) -> list[FlowEdge]:
    """Edges every path from the input to the output runs through (a chain's blocks): with all others on, the
    output is cut without them."""
    on = {id(m): [True] * m.scores.numel() for e in flow.edges for m in (e.ops, *(e.gate or ())[:1])}
    return [e for e in flow.edges if not flow.output_reached(flow.reached(on, off=frozenset({e.key})))]
