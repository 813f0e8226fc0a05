"""Cell graphs: which choice labels form which edges of a cell.

HM-NAS's hierarchy rules (dead nodes, last path kept) and the derived cells both need to
know the DAG behind a cell; NNI's primitives alone do not say it. Each cell space declares
one :class:`CellGraph` per kind of cell (cells of one kind share their labels).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edge:
    """One edge ``src -> dst``: its ops are the ``LayerChoice`` ``op_label``; where a node picks its inputs
    with an ``InputChoice``, the edge is candidate ``input_index`` of ``input_label``."""

    src: int
    dst: int
    op_label: str
    input_label: str | None = None
    input_index: int | None = None

    @property
    def key(self) -> str:
        """Name of the edge module inside a cell's ``edges`` ModuleDict."""
        return f"{self.src}_{self.dst}"


@dataclass(frozen=True)
class CellGraph:
    """A cell: ``num_inputs`` input states (ids 0..num_inputs-1), intermediate nodes after them.

    ``output`` is ``"last"`` (the last node is the cell's output, NAS-Bench-201) or ``"concat"``
    (every intermediate node is concatenated, DARTS).
    """

    kind: str
    num_inputs: int
    num_nodes: int
    edges: tuple[Edge, ...]
    output: str

    @property
    def node_ids(self) -> range:
        return range(self.num_inputs, self.num_inputs + self.num_nodes)

    def output_nodes(self) -> list[int]:
        return [self.node_ids[-1]] if self.output == "last" else list(self.node_ids)


@dataclass(frozen=True)
class Liveness:
    """Which nodes and edges of a cell survive: reached from the inputs and feeding the output."""

    reached: frozenset[int]  # reached from the inputs over switched-on edges
    alive: frozenset[int]  # reached and feeding the output
    live_edges: tuple[Edge, ...]
    output_reached: bool

    def node_alive(self, node: int) -> bool:
        return node in self.alive


def liveness(graph: CellGraph, edge_on: dict[Edge, bool]) -> Liveness:
    """Apply HM-NAS's hierarchy rules to the edges switched on.

    A node with no live input edge is removed, and so is every edge leaving it; a node that no
    longer feeds the cell's output (``output="last"``) is removed with its input edges.
    """
    edges = sorted(graph.edges, key=lambda e: (e.dst, e.src))
    reached = set(range(graph.num_inputs))
    for e in edges:
        if edge_on.get(e, False) and e.src in reached:
            reached.add(e.dst)
    useful = {n for n in graph.output_nodes() if n in reached}
    for e in reversed(edges):
        if e.dst in useful and e.src in reached and edge_on.get(e, False):
            useful.add(e.src)
    live = tuple(e for e in edges if edge_on.get(e, False) and e.src in reached and e.dst in useful)
    alive = frozenset(n for n in reached if n < graph.num_inputs or n in useful)
    return Liveness(frozenset(reached), alive, live, any(n in reached for n in graph.output_nodes()))
