"""Hierarchical masking rules, applied after every mask update.

1. An edge whose mask is 0 (or whose ops are all masked) removes all its operations.
2. A node with no live input edge is removed, and so are the edges leaving it.
3. A cell keeps at least one path from its inputs to its output: if masking would cut every
   path, the highest-scoring edge is kept (and its best op), and the log says so.
Choices outside any declared cell graph (chain blocks) always keep at least their best op.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hmnas_nni.format.graph import CellGraph, Edge, liveness

from .masks import MaskScores

_logger = logging.getLogger(__name__)


class Hierarchy:
    """Owns every mask of a supernet and keeps their ``forced`` / ``alive`` / ``live`` state consistent."""

    def __init__(self, graphs: Iterable[CellGraph], op_masks: dict[str, MaskScores],
                 input_masks: dict[str, MaskScores], edge_masks: dict[str, MaskScores]) -> None:
        self.graphs = list(graphs)
        self.op_masks = op_masks
        self.input_masks = input_masks
        self.edge_masks = edge_masks
        in_graph = {e.op_label for g in self.graphs for e in g.edges}
        self.chain_labels = [label for label in op_masks if label not in in_graph]
        self.events: list[str] = []

    def all_masks(self) -> list[MaskScores]:
        return [*self.op_masks.values(), *self.input_masks.values(), *self.edge_masks.values()]

    def apply(self) -> list[str]:
        """Recompute what is live from the current scores; return messages for any path kept by force."""
        messages: list[str] = []
        for m in self.all_masks():
            m.forced.zero_()
            m.alive.fill_(True)
        on = {id(m): m.switched_on() for m in self.all_masks()}

        for label in self.chain_labels:
            mask = self.op_masks[label]
            if not any(on[id(mask)]):
                best = int(mask.scores.detach().argmax())
                mask.forced[best] = True
                on[id(mask)][best] = True
                messages.append(f"choice {label!r}: every op was masked; kept its best op #{best} to keep the path")

        for graph in self.graphs:
            messages += self._apply_cell(graph, on)

        for m in self.all_masks():
            state = on[id(m)]
            alive = m.alive.tolist()
            m.live = [i for i, (o, f, a) in enumerate(zip(state, m.forced.tolist(), alive)) if (o or f) and a]
        for msg in messages:
            _logger.warning(msg)
        self.events += messages
        return messages

    def _edge_on(self, e: Edge, on: dict[int, list[bool]]) -> bool:
        ok = any(on[id(self.op_masks[e.op_label])])
        if e.input_label is not None:
            ok = ok and on[id(self.input_masks[e.input_label])][e.input_index]
        if e.op_label in self.edge_masks:
            ok = ok and on[id(self.edge_masks[e.op_label])][0]
        return ok

    def _edge_score(self, e: Edge) -> float:
        if e.input_label is not None:
            return float(self.input_masks[e.input_label].scores.detach()[e.input_index])
        if e.op_label in self.edge_masks:
            return float(self.edge_masks[e.op_label].scores.detach()[0])
        return float(self.op_masks[e.op_label].scores.detach().max())

    def _force(self, e: Edge, on: dict[int, list[bool]]) -> None:
        ops = self.op_masks[e.op_label]
        if not any(on[id(ops)]):
            best = int(ops.scores.detach().argmax())
            ops.forced[best] = True
            on[id(ops)][best] = True
        if e.input_label is not None:
            self.input_masks[e.input_label].forced[e.input_index] = True
            on[id(self.input_masks[e.input_label])][e.input_index] = True
        if e.op_label in self.edge_masks:
            self.edge_masks[e.op_label].forced[0] = True
            on[id(self.edge_masks[e.op_label])][0] = True

    def _apply_cell(self, graph: CellGraph, on: dict[int, list[bool]]) -> list[str]:
        messages = []
        live = liveness(graph, {e: self._edge_on(e, on) for e in graph.edges})
        while not live.output_reached:
            candidates = [e for e in graph.edges if e.src in live.reached and not self._edge_on(e, on)]
            if not candidates:
                raise RuntimeError(f"cell {graph.kind!r}: no edge can reconnect its output; is the graph connected?")
            best = max(candidates, key=self._edge_score)
            self._force(best, on)
            messages.append(f"cell {graph.kind!r}: masking cut every path from inputs to output; "
                            f"kept edge {best.src}->{best.dst} ({best.op_label}), its highest-scoring edge")
            live = liveness(graph, {e: self._edge_on(e, on) for e in graph.edges})
        live_set = set(live.live_edges)
        for e in graph.edges:
            if e in live_set:
                continue
            self.op_masks[e.op_label].alive.fill_(False)
            if e.input_label is not None:
                self.input_masks[e.input_label].alive[e.input_index] = False
            if e.op_label in self.edge_masks:
                self.edge_masks[e.op_label].alive.fill_(False)
        return messages
