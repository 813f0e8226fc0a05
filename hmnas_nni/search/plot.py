"""Draw a derived architecture to PNG: each cell as a DAG with its kept ops and weights on the edges, or a chain
space as its blocks with their kept ops.

Cells are NNI ``Cell``s (the document's ``cells``) or groups of ``LayerChoice`` edges labelled ``<cell>/<i>_<j>``
(NAS-Bench-201 style, as in NNI's hub space); any other choice is drawn as a line of text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hmnas_nni.format.architecture import Architecture, ChoiceSpec  # noqa: E402
from hmnas_nni.format.files import atomic_path  # noqa: E402

_EDGE_LABEL = re.compile(r"^(?P<cell>.+)/(?P<src>\d+)_(?P<dst>\d+)$")


@dataclass
class CellDrawing:
    """What one panel shows: nodes, kept edges (src, dst, text), and which nodes are outputs."""

    title: str
    num_inputs: int
    num_nodes: int
    edges: list[tuple[int, int, str]] = field(default_factory=list)
    concat: bool = True


def _ops_text(ops: list[dict]) -> str:
    return "\n".join(f"{o['op']} {o['weight']:.2f}" for o in ops)


def _nni_cells(arch: Architecture, catalogue: dict[str, ChoiceSpec]) -> list[CellDrawing]:
    out = []
    for label, nodes in arch.cells.items():
        spec = catalogue.get(label)
        last = max([int(n) for n in nodes] or [1])
        num_inputs = spec.num_predecessors if spec else 2
        d = CellDrawing(f"cell {label!r}", num_inputs, (spec.num_nodes if spec else last - num_inputs + 1))
        for node, entries in nodes.items():
            for e in entries:
                d.edges.append((int(e["input"]), int(node), f"[edge {e['weight']:.2f}]\n" + _ops_text(e["ops"])))
        out.append(d)
    return out


def _layer_cells(arch: Architecture) -> tuple[list[CellDrawing], list[str]]:
    """Cells made of ``<cell>/<i>_<j>`` LayerChoice edges, and the op labels that are not such edges."""
    groups: dict[str, list[tuple[int, int, list[dict]]]] = {}
    rest = []
    for label, ops in arch.ops.items():
        m = _EDGE_LABEL.match(label)
        if m:
            groups.setdefault(m["cell"], []).append((int(m["src"]), int(m["dst"]), ops))
        else:
            rest.append(label)
    out = []
    for cell, edges in groups.items():
        last = max(dst for _, dst, _ in edges)
        d = CellDrawing(f"cell {cell!r}", 1, last, concat=False)
        d.edges = [(src, dst, _ops_text(ops)) for src, dst, ops in edges if ops]
        out.append(d)
    return out, rest


def _draw_cell(ax, d: CellDrawing) -> None:
    total = d.num_inputs + d.num_nodes
    fed = {dst for _, dst, _ in d.edges}
    names = {n: (f"in{n}" if n < d.num_inputs else f"n{n}") for n in range(total)}
    top = 0.2
    for k, (src, dst, text) in enumerate(d.edges):
        rad = 0.25 + 0.12 * (dst - src - 1)
        ax.annotate("", xy=(dst, 0), xytext=(src, 0),
                    arrowprops=dict(arrowstyle="-|>", color=f"C{k % 10}", connectionstyle=f"arc3,rad={-rad}", lw=1.4))
        height = rad * (dst - src) / 2
        top = max(top, height)
        ax.text((src + dst) / 2, height + 0.05, text, ha="center", va="bottom", fontsize=6.5, color=f"C{k % 10}",
                zorder=5, bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.5))
    for n in range(total):
        alive = n < d.num_inputs or n in fed
        ax.scatter([n], [0], s=700, color="#cfe2ff" if alive else "#eeeeee", edgecolors="black", zorder=3)
        ax.text(n, 0, names[n], ha="center", va="center", fontsize=8, zorder=4, color="black" if alive else "#999999")
    live = [names[n] for n in range(d.num_inputs, total) if n in fed]
    out = f"concat({','.join(live)})" if d.concat else f"out = {names[total - 1]}"
    ops = sum(text.count("\n") + 1 - text.startswith("[edge") for _, _, text in d.edges)
    ax.set_title(f"{d.title}: {len(d.edges)} edges, {ops} ops; {out}", fontsize=9)
    ax.set_xlim(-0.6, total - 0.4)
    ax.set_ylim(-0.35, top + 0.75)
    ax.axis("off")


def _draw_text(ax, arch: Architecture, labels: list[str]) -> None:
    def kept(entries: list[dict], key: str) -> str:
        return ", ".join(f"{e[key]} {e['weight']:.2f}" for e in entries)

    lines = [f"{label}: {kept(arch.ops[label], 'op')}" for label in labels]
    lines += [f"{label}: inputs {kept(v, 'input')}" for label, v in arch.inputs.items()]
    lines += [f"{label} = {value}" for label, value in arch.values.items()]
    for i, line in enumerate(lines):
        ax.text(0.01, 1 - (i + 0.5) / max(1, len(lines)), line, fontsize=8, va="center", family="monospace")
    ax.set_title(f"{len(lines)} choices, {arch.ops_kept()} ops kept", fontsize=9)
    ax.axis("off")


def plot_architecture(arch: Architecture, path: str | os.PathLike,
                      catalogue: dict[str, ChoiceSpec] | None = None) -> Path:
    """Write a PNG of ``arch``'s cells (and any other choices) to ``path``."""
    layer_cells, rest = _layer_cells(arch)
    cells = _nni_cells(arch, catalogue or {}) + layer_cells
    text = bool(rest or arch.inputs or arch.values)
    panels = len(cells) + int(text) or 1
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), squeeze=False)
    for ax, d in zip(axes[:, 0], cells):
        _draw_cell(ax, d)
    if text or not cells:
        _draw_text(axes[-1, 0], arch, rest)
    fig.suptitle(f"HM-NAS derived architecture ({arch.strategy}) on space {arch.space!r}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=130, format="png")
    finally:
        plt.close(fig)
    return path


def describe(arch: Architecture) -> str:
    """A text rendering of the architecture for terminals (``hmnas show``)."""
    lines = [f"space {arch.space} {arch.space_args}  strategy {arch.strategy}",
             f"ops kept {arch.ops_kept()}, edges kept {arch.edges_kept()}"]
    for label, ops in arch.ops.items():
        text = ", ".join(f"{o['op']}:{o['weight']:.3f}" for o in ops) or "(removed)"
        lines.append(f"  {label:<22} {text}")
    for label, inputs in arch.inputs.items():
        text = ", ".join(f"{i['input']}:{i['weight']:.3f}" for i in inputs) or "(node removed)"
        lines.append(f"  {label:<22} inputs {text}")
    for label, nodes in arch.cells.items():
        for node, entries in nodes.items():
            text = "; ".join(f"{e['input']}:{e['weight']:.3f} [" + ", ".join(f"{o['op']}:{o['weight']:.3f}"
                                                                             for o in e["ops"]) + "]" for e in entries)
            lines.append(f"  {label + '/node ' + node:<22} {text}")
    for label, value in arch.values.items():
        lines.append(f"  {label:<22} = {value}")
    return "\n".join(lines)
