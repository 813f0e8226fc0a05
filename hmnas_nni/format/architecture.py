"""The derived multi-level architecture: a JSON document, validated on load.

One document describes a whole network: the space it came from (a project space name or an
import path such as ``nni.nas.hub.pytorch.DARTS``, with its constructor arguments, so it can be
rebuilt anywhere), the input shape it was searched at, and for every choice of that space what
was kept, each with its learned weight (HM-NAS keeps any number of ops and inputs: no top-k):

- ``ops``: per ``LayerChoice`` label, a list of ``{"op": name, "weight": w}``;
  an empty list means the edge was removed;
- ``inputs``: per ``InputChoice`` label, a list of ``{"input": index, "weight": w}``;
- ``cells``: per NNI ``Cell`` label, per node, its kept input edges
  ``{"input": j, "weight": b, "ops": [{"op": name, "weight": a}]}``; a node with no entry was removed;
- ``values``: per value choice (widths, kernel sizes, depths), the chosen value.

NNI's own strategies export ``{label: value}`` samples; :meth:`Architecture.from_nni_sample` turns them
into the same document (unit weights), so every strategy is evaluated through one path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import write_atomic

FORMAT = "hmnas-architecture/2"
#: Formats this version reads (version 1 had no cells, values or input shape).
READABLE = ("hmnas-architecture/1", FORMAT)
#: A kept entry's weight must lie in (0, MAX_WEIGHT]: HM-NAS's own weights are softmax products (<= 1), NNI's
#: samples give 1 per op slot, and two slots of one node picking the same edge and op add up to a small integer.
MAX_WEIGHT = 100.0
OP_LIST, INPUT_LIST = "op", "input"


class ArchitectureError(ValueError):
    """An architecture document that does not fit its space; the message says what and how to fix it."""


@dataclass(frozen=True)
class ChoiceSpec:
    """What a space offers at one label.

    ``kind`` is ``"op"`` (``LayerChoice``: candidate names), ``"input"`` (``InputChoice``: candidate indices),
    ``"cell"`` (NNI ``Cell``: op names on every edge, ``num_predecessors`` inputs and ``num_nodes`` nodes)
    or ``"value"`` (a value choice: its candidate values).
    """

    kind: str
    candidates: tuple[Any, ...]
    n_chosen: int | None = None
    num_predecessors: int = 0
    num_nodes: int = 0

    def node_ids(self) -> range:
        """A cell's node indices (after its predecessors)."""
        return range(self.num_predecessors, self.num_predecessors + self.num_nodes)


@dataclass
class Architecture:
    space: str
    space_args: dict[str, Any]
    ops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    inputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    strategy: str = "hmnas"
    cells: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    input_shape: list[int] | None = None
    #: Removed op choice label -> [input shape, output shape] of its edge (no batch dimension), so a network is
    #: built with the edge's zeros without running the supernet.
    edge_shapes: dict[str, list[list[int]]] = field(default_factory=dict)

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT, "space": self.space, "space_args": self.space_args,
                               "strategy": self.strategy}
        if self.input_shape is not None:
            doc["input_shape"] = list(self.input_shape)
        doc["ops"] = self.ops
        doc["inputs"] = self.inputs
        if self.cells:
            doc["cells"] = self.cells
        if self.values:
            doc["values"] = self.values
        if self.edge_shapes:
            doc["edge_shapes"] = self.edge_shapes
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a crash never leaves a half-written file behind."""
        return write_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, doc: Any, where: str = "architecture") -> Architecture:
        if not isinstance(doc, dict):
            raise ArchitectureError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        fmt = doc.get("format", FORMAT)
        if fmt not in READABLE:
            raise ArchitectureError(f"{where}: unknown format {fmt!r}; this version reads {list(READABLE)}")
        for key in ("space", "ops"):
            if key not in doc:
                raise ArchitectureError(f"{where}: missing field {key!r}; export the architecture with "
                                        "hmnas_nni.search.run.run_search (`hmnas search`)")
        if not isinstance(doc["space"], str) or not doc["space"]:
            raise ArchitectureError(f"{where}: field 'space' must be a non-empty string, got {doc['space']!r}")
        space_args = doc.get("space_args", {})
        if not isinstance(space_args, dict):
            raise ArchitectureError(f"{where}: field 'space_args' must be an object, got {space_args!r}")
        values = doc.get("values", {})
        if not isinstance(values, dict):
            raise ArchitectureError(f"{where}: field 'values' must be an object of label -> value")
        return cls(
            space=doc["space"], space_args=dict(space_args),
            ops=_entry_lists(doc.get("ops", {}), OP_LIST, where),
            inputs=_entry_lists(doc.get("inputs", {}), INPUT_LIST, where),
            strategy=str(doc.get("strategy", "unknown")),
            cells=_cells(doc.get("cells", {}), where),
            values={str(k): v for k, v in values.items()},
            input_shape=_shape(doc.get("input_shape"), where),
            edge_shapes=_edge_shapes(doc.get("edge_shapes", {}), where),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Architecture:
        path = Path(path)
        if not path.is_file():
            raise ArchitectureError(
                f"architecture file {path} does not exist; pass the arch.json written by "
                "hmnas_nni.search.run.run_search (`hmnas search`)"
            )
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            where = f" at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            raise ArchitectureError(f"{path}: not valid JSON ({msg}{where})") from None
        return cls.from_dict(doc, where=str(path))

    # ------------------------------------------------------------ conversion
    @classmethod
    def from_nni_sample(cls, sample: dict[str, Any], space: str, space_args: dict[str, Any], strategy: str,
                        catalogue: dict[str, ChoiceSpec], input_shape: list[int] | None = None) -> Architecture:
        """Turn an NNI sample (``{label: op}``, ``{label: [indices]}``, ``{cell/op_i_k: op, cell/input_i_k: [j]}``,
        ``{label: value}``) into a document with unit weights."""
        arch = cls(space=space, space_args=dict(space_args), strategy=strategy, input_shape=input_shape)
        cell_slots: dict[str, dict[str, Any]] = {}
        for label, value in sample.items():
            spec = catalogue.get(label)
            if spec is None:
                cell = _cell_of(label, catalogue)
                if cell is None:
                    raise ArchitectureError(f"NNI sample has label {label!r}, which the space {space!r} does not "
                                            "define")
                cell_slots.setdefault(cell, {})[label[len(cell) + 1:]] = value
            elif spec.kind == "op":
                arch.ops[label] = [{"op": value, "weight": 1.0}]
            elif spec.kind == "input":
                chosen = value if isinstance(value, (list, tuple)) else [value]
                arch.inputs[label] = [{"input": int(i), "weight": 1.0} for i in chosen]
            else:
                arch.values[label] = value
        for cell, slots in cell_slots.items():
            arch.cells[cell] = _cell_from_slots(cell, slots, catalogue[cell])
        return arch.validate(catalogue)

    # ------------------------------------------------------------ validation
    def validate(self, catalogue: dict[str, ChoiceSpec]) -> Architecture:
        """Check every label, op name, input index, value and weight against the space's choices."""
        where = f"architecture for space {self.space!r}"
        for label, entries in self.ops.items():
            spec = _spec(catalogue, label, "op", where)
            _check_entries(entries, OP_LIST, spec.candidates, f"{where}: choice {label!r}")
        for label, entries in self.inputs.items():
            spec = _spec(catalogue, label, "input", where)
            _check_entries(entries, INPUT_LIST, tuple(range(len(spec.candidates))), f"{where}: choice {label!r}")
        for label, nodes in self.cells.items():
            _check_cell(nodes, _spec(catalogue, label, "cell", where), f"{where}: cell {label!r}")
        for label, value in self.values.items():
            spec = _spec(catalogue, label, "value", where)
            if value not in spec.candidates:
                raise ArchitectureError(f"{where}: value choice {label!r} = {value!r} is not one of its candidates "
                                        f"{list(spec.candidates)}")
        for label in self.edge_shapes:
            _spec(catalogue, label, "op", where)
            if self.ops.get(label):
                raise ArchitectureError(f"{where}: edge_shapes names {label!r}, whose edge keeps ops; only a removed "
                                        "edge (an empty op list) has a recorded shape")
        decided = {"op": self.ops, "input": self.inputs, "cell": self.cells, "value": self.values}
        missing = [label for label, spec in catalogue.items() if label not in decided[spec.kind]]
        if missing:
            raise ArchitectureError(f"{where}: no decision for choices {missing}; every choice of the space needs one")
        return self

    # ------------------------------------------------------------ summaries
    def ops_kept(self) -> int:
        """Operations kept, over every op choice and every cell edge."""
        in_cells = sum(len(e["ops"]) for nodes in self.cells.values() for entries in nodes.values() for e in entries)
        return sum(len(v) for v in self.ops.values()) + in_cells

    def edges_kept(self) -> int:
        """Edges kept: InputChoice entries and cell edges, else (cells that sum their edges) non-empty op lists."""
        cell_edges = sum(len(entries) for nodes in self.cells.values() for entries in nodes.values())
        if self.inputs or self.cells:
            return sum(len(v) for v in self.inputs.values()) + cell_edges
        return sum(1 for v in self.ops.values() if v)

    def op_weights(self, label: str) -> dict[str, float]:
        return {e["op"]: float(e["weight"]) for e in self.ops.get(label, [])}

    def input_weights(self, label: str) -> dict[int, float]:
        return {int(e["input"]): float(e["weight"]) for e in self.inputs.get(label, [])}


# ---------------------------------------------------------------------------- parsing helpers
def _shape(raw: Any, where: str) -> list[int] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                        for d in raw):
        raise ArchitectureError(f"{where}: 'input_shape' must be a list of positive integers (C, H, W), got {raw!r}")
    return list(raw)


def _edge_shapes(raw: Any, where: str) -> dict[str, list[list[int]]]:
    """``{label: [input shape, output shape]}`` of removed edges, each shape a list of positive integers."""
    if not isinstance(raw, dict):
        raise ArchitectureError(f"{where}: field 'edge_shapes' must be an object of label -> [input shape, output "
                                f"shape], got {type(raw).__name__}")
    out = {}
    for label, pair in raw.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(s, list) and s and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s)
                and len(s) == len(pair[0]) for s in pair)):
            raise ArchitectureError(f"{where}: edge_shapes[{label!r}] must be [input shape, output shape], two lists "
                                    f"of positive integers of one length (C, H, W), got {pair!r}")
        out[str(label)] = [list(pair[0]), list(pair[1])]
    return out


def _weight(w: Any, what: str) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise ArchitectureError(f"{what} has non-numeric weight {w!r}")
    if not math.isfinite(w):
        raise ArchitectureError(f"{what} has non-finite weight {w!r}")
    if not 0 < w <= MAX_WEIGHT:
        raise ArchitectureError(f"{what} has weight {w!r}; a kept entry's weight must be in (0, {MAX_WEIGHT:g}] "
                                "(drop the entry to remove it)")
    return float(w)


def _entry(e: Any, key: str, what: str) -> dict[str, Any]:
    if not isinstance(e, dict) or key not in e or "weight" not in e:
        raise ArchitectureError(f"{what} entry {e!r} needs keys {key!r} and 'weight'")
    value = e[key]
    if key == INPUT_LIST and (isinstance(value, bool) or not isinstance(value, int)):
        raise ArchitectureError(f"{what} input index {value!r} must be an integer")
    if key == OP_LIST and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ArchitectureError(f"{what} op {value!r} must be a candidate name (a string, or an index for a "
                                "LayerChoice of a list)")
    return {key: value, "weight": _weight(e["weight"], what)}


def _entry_list(entries: Any, key: str, what: str, parse: Callable[[Any, str, str], dict[str, Any]] = _entry
                ) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise ArchitectureError(f"{what} must be a list of {{{key!r}, 'weight'}} objects")
    clean = [parse(e, key, what) for e in entries]
    seen = [e[key] for e in clean]
    duplicates = sorted({repr(v) for v in seen if seen.count(v) > 1})
    if duplicates:
        raise ArchitectureError(f"{what} lists {', '.join(duplicates)} more than once; keep each {key} once "
                                "(add the weights)")
    return clean


def _entry_lists(raw: Any, key: str, where: str) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(raw, dict):
        raise ArchitectureError(f"{where}: field '{key}s' must be an object of label -> list, got {type(raw).__name__}")
    return {str(label): _entry_list(entries, key, f"{where}: {key}s[{label!r}]") for label, entries in raw.items()}


def _cell_edge(e: Any, key: str, what: str) -> dict[str, Any]:
    """One kept input edge of a cell node: its input, its edge weight and its kept ops."""
    if not isinstance(e, dict) or "ops" not in e:
        raise ArchitectureError(f"{what} entry {e!r} needs keys 'input', 'weight' and 'ops'")
    edge = _entry({k: v for k, v in e.items() if k != "ops"}, key, what)
    edge["ops"] = _entry_list(e["ops"], OP_LIST, f"{what} edge from {edge['input']}")
    if not edge["ops"]:
        raise ArchitectureError(f"{what}: edge from {edge['input']} keeps no op; drop the edge instead")
    return edge


def _cells(raw: Any, where: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    if not isinstance(raw, dict):
        raise ArchitectureError(f"{where}: field 'cells' must be an object of cell label -> nodes")
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for label, nodes in raw.items():
        if not isinstance(nodes, dict):
            raise ArchitectureError(f"{where}: cells[{label!r}] must be an object of node -> kept input edges")
        out[str(label)] = {}
        for node, edges in nodes.items():
            what = f"{where}: cells[{label!r}] node {node}"
            if not str(node).isdigit():
                raise ArchitectureError(f"{what}: node keys must be node indices such as \"2\"")
            out[str(label)][str(int(node))] = _entry_list(edges, INPUT_LIST, what, parse=_cell_edge)
    return out


# ---------------------------------------------------------------------------- validation helpers
def _spec(catalogue: dict[str, ChoiceSpec], label: str, kind: str, where: str) -> ChoiceSpec:
    spec = catalogue.get(label)
    if spec is None or spec.kind != kind:
        names = {"op": "operation choice", "input": "input choice", "cell": "cell", "value": "value choice"}
        raise ArchitectureError(f"{where}: unknown {names[kind]} {label!r}; the space defines "
                                f"{_labels(catalogue, kind)}. Was this architecture searched on another space or "
                                "with other space_args?")
    return spec


def _check_entries(entries: list[dict[str, Any]], key: str, allowed: tuple[Any, ...], what: str) -> None:
    for e in entries:
        if e[key] not in allowed:
            if key == OP_LIST:
                raise ArchitectureError(f"{what} names unknown op {e[key]!r}; candidates are {list(allowed)}")
            raise ArchitectureError(f"{what} keeps input {e[key]}, out of range 0..{len(allowed) - 1}")


def _check_cell(nodes: dict[str, list[dict[str, Any]]], spec: ChoiceSpec, what: str) -> None:
    for node, edges in nodes.items():
        i = int(node)
        if i not in spec.node_ids():
            raise ArchitectureError(f"{what} has no node {i}; its nodes are {list(spec.node_ids())}")
        for e in edges:
            _check_entries([e], INPUT_LIST, tuple(range(i)), f"{what} node {i}")
            _check_entries(e["ops"], OP_LIST, spec.candidates, f"{what} node {i} edge from {e['input']}")
    if not any(nodes.values()):
        raise ArchitectureError(f"{what} keeps no node; a cell needs at least one path from its inputs")


def _labels(catalogue: dict[str, ChoiceSpec], kind: str) -> list[str]:
    labels = [k for k, v in catalogue.items() if v.kind == kind]
    return labels if len(labels) <= 8 else labels[:8] + [f"... ({len(labels)} in all)"]


def _cell_of(label: str, catalogue: dict[str, ChoiceSpec]) -> str | None:
    """The cell label owning an NNI cell label such as ``normal/op_2_0``, if any."""
    for name, spec in catalogue.items():
        if spec.kind == "cell" and label.startswith(name + "/"):
            return name
    return None


def _cell_from_slots(cell: str, slots: dict[str, Any], spec: ChoiceSpec) -> dict[str, list[dict[str, Any]]]:
    """NNI's cell sample (``op_i_k`` and ``input_i_k`` per op slot k) as kept edges with unit weights."""
    nodes: dict[str, list[dict[str, Any]]] = {}
    for key, op in sorted(slots.items()):
        if not key.startswith("op_"):
            continue
        _, i, k = key.split("_")
        chosen = slots.get(f"input_{i}_{k}")
        if chosen is None:
            raise ArchitectureError(f"NNI sample of cell {cell!r} has {key} but no input_{i}_{k}")
        j = int(chosen[0] if isinstance(chosen, (list, tuple)) else chosen)
        edges = nodes.setdefault(str(int(i)), [])
        edge = next((e for e in edges if e["input"] == j), None)
        if edge is None:
            edge = {"input": j, "weight": 1.0, "ops": []}
            edges.append(edge)
        same = next((o for o in edge["ops"] if o["op"] == op), None)
        if same is None:
            edge["ops"].append({"op": op, "weight": 1.0})
        else:
            same["weight"] += 1.0  # two slots with one input and one op: that op counts twice
    return {n: sorted(edges, key=lambda e: e["input"]) for n, edges in sorted(nodes.items(), key=lambda x: int(x[0]))}
