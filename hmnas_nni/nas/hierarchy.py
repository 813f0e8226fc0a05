"""Hierarchical masking rules, applied after every mask update.

1. An edge whose mask is 0 (or whose ops are all masked) removes all its operations.
2. A node with no live input edge is removed, and so are the edges leaving it; an edge whose output
   feeds nothing that reaches the output is removed too.
3. A cell (and the whole network) keeps at least one path from its inputs to its output: if masking
   would cut every path, the highest-scoring edge that reconnects it is kept (and its best op), and the
   log says so.
4. A choice outside any graph (a ``LayerChoice`` of a chain, an ``InputChoice``) keeps at least its best entry.

The graphs come from the supernet itself: each NNI ``Cell`` states its own, and the ``LayerChoice`` edges a
space sums itself are read from the first training forward pass (:class:`~hmnas_nni.nas.dataflow.DataflowProbe`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from .dataflow import DataflowProbe, Flow, FlowEdge
from .masks import MaskScores
from .supermodules import HMNASMixedCell, HMNASMixedInput, HMNASMixedLayer, HMNASMixedRepeat

_logger = logging.getLogger(__name__)


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
        self.repeats: list[tuple[HMNASMixedRepeat, list[set[int]]]] = []
        self.outside: set[int] = {id(m) for m in masks.values()}
        self.forced_events = 0
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
        for path, module in supernet.named_modules():
            if isinstance(module, HMNASMixedLayer):
                masks.setdefault(f"ops:{module.label}", module.op_masks)
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
            for m in getattr(module, "value_masks", {}).values():
                masks.setdefault(f"values:{m.label}", m)
        hierarchy = cls(masks, keep_one, list(cells.values()), gated)
        hierarchy.repeats = [(m, [_mask_ids(b) for b in m.blocks]) for m in supernet.modules()
                             if isinstance(m, HMNASMixedRepeat)]
        inside = set().union(*[ids for _, blocks in hierarchy.repeats for ids in blocks])
        hierarchy.outside = _mask_ids(supernet) - inside
        return hierarchy

    def watch(self, supernet: nn.Module) -> None:
        """Read the graph of the gated ``LayerChoice`` edges from the supernet's next training forward pass."""
        if self.gated and self.traced is None and self._probe is None:
            modules = dict(supernet.named_modules())
            self._probe = DataflowProbe(supernet, {modules[p]: e for p, e in self.gated.items()}, self.set_traced)

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
        useful: set[int] = set()  # ids of the FlowEdges that stay
        flows = self.cells + ([self.traced] if self.traced is not None else [])
        for flow in flows:
            kept, forced = self._apply_flow(flow, on)
            useful |= {id(flow.keys[k]) for k in kept}
            messages += forced
        self._mark_dead(flows, useful)
        self._drop_removed_blocks()
        for m in self.all_masks():
            forced = m.forced.tolist()
            alive = m.alive.tolist()
            m.live = [i for i, (o, f, a) in enumerate(zip(on[id(m)], forced, alive)) if (o or f) and a]
        self._report(messages)
        return messages

    @staticmethod
    def _edge_on(e: FlowEdge, on: dict[int, list[bool]]) -> bool:
        gate_on = e.gate is None or on[id(e.gate[0])][e.gate[1]]
        return gate_on and any(o and c for o, c in zip(on[id(e.ops)], e.ops.carries))

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

    def _force(self, e: FlowEdge, on: dict[int, list[bool]]) -> None:
        if not any(o and c for o, c in zip(on[id(e.ops)], e.ops.carries)):
            self._keep_best(e.ops, on)
        self._force_gate(e, on)

    @staticmethod
    def _force_gate(e: FlowEdge, on: dict[int, list[bool]]) -> None:
        if e.gate is not None:
            mask, i = e.gate
            mask.forced[i] = True
            on[id(mask)][i] = True

    def _apply_flow(self, flow: Flow, on: dict[int, list[bool]]) -> tuple[set[str], list[str]]:
        """The edges of ``flow`` that stay (forcing a path back if masking cut every one), and what was forced."""
        def edge_on(e: FlowEdge) -> bool:
            return self._edge_on(e, on)

        messages = []
        reached = flow.reached(edge_on)
        while not flow.output_reached(reached):
            candidates = flow.frontier(reached, edge_on)
            if not candidates:
                raise RuntimeError(f"{flow.name}: no edge can reconnect its output; is the graph connected?")
            best = max(candidates, key=self._score)
            self._force(best, on)
            messages.append(f"{flow.name}: masking cut every path from inputs to output; kept edge {best.key}, "
                            "its highest-scoring edge")
            reached = flow.reached(edge_on)
        return flow.useful(reached), messages

    @staticmethod
    def _mark_dead(flows: list[Flow], useful: set[int]) -> None:
        """Switch off every mask entry used only by edges that do not stay (an edge used twice stays if either does)."""
        ops_alive: dict[int, bool] = {}
        gates_alive: dict[tuple[int, int], bool] = {}
        entries: dict[int, MaskScores] = {}
        for flow in flows:
            for e in flow.edges:
                keep = id(e) in useful
                ops_alive[id(e.ops)] = ops_alive.get(id(e.ops), False) or keep
                entries[id(e.ops)] = e.ops
                if e.gate is not None:
                    key = (id(e.gate[0]), e.gate[1])
                    gates_alive[key] = gates_alive.get(key, False) or keep
                    entries[id(e.gate[0])] = e.gate[0]
        for mid, alive in ops_alive.items():
            if not alive:
                entries[mid].alive.fill_(False)
        for (mid, i), alive in gates_alive.items():
            if not alive:
                entries[mid].alive[i] = False

    def _drop_removed_blocks(self) -> None:
        """A block a depth mask removed takes every choice inside it (unless another kept part uses that choice)."""
        dropped, kept = set(), set(self.outside)
        for repeat, blocks in self.repeats:
            depth = repeat.chosen_depth()
            for i, ids in enumerate(blocks):
                (kept if i < depth else dropped).update(ids)
        for m in self.all_masks():
            if id(m) in dropped and id(m) not in kept:
                m.alive.fill_(False)

    def blocks_kept(self) -> tuple[int, int]:
        """Blocks kept and blocks in all, over every ``Repeat`` with a depth choice."""
        return sum(r.chosen_depth() for r, _ in self.repeats), sum(len(blocks) for _, blocks in self.repeats)

    def _report(self, messages: list[str]) -> None:
        """Log each distinct forced-path message once (the rules run after every step)."""
        self.forced_events += len(messages)
        for msg in messages:
            if msg not in self._reported:
                self._reported.add(msg)
                _logger.warning(msg)


def _mask_ids(module: nn.Module) -> set[int]:
    """Ids of every mask inside ``module``."""
    return {id(m) for m in module.modules() if isinstance(m, MaskScores)}


def _bridges(flow: Flow) -> list[FlowEdge]:
    """Edges every path from the input to the output runs through (a chain's blocks): with all others on, the
    output is cut without them."""
    out = []
    for e in flow.edges:
        if not flow.output_reached(flow.reached(lambda other, e=e: other is not e)):
            out.append(e)
    return out
