"""Draw a derived architecture to PNG: each cell as a DAG with its kept ops and weights on the edges,
or a chain space as its blocks with their kept ops."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hmnas_nni.format.architecture import Architecture  # noqa: E402
from hmnas_nni.format.files import atomic_path  # noqa: E402
from hmnas_nni.spaces import CellGraph, Edge, build_space, liveness  # noqa: E402
from hmnas_nni.spaces.derived import kept_edges  # noqa: E402


def _edge_text(arch: Architecture, e: Edge) -> str:
    """The label of one edge: its gate weight and its kept ops with their weights."""
    ops = arch.ops.get(e.op_label, [])
    lines = [f"{o['op']} {o['weight']:.2f}" for o in ops]
    if e.input_label is not None:
        w = arch.input_weights(e.input_label).get(e.input_index)
        lines.insert(0, f"[edge {w:.2f}]" if w is not None else "")
    return "\n".join(lines)


def _draw_cell(ax, arch: Architecture, graph: CellGraph) -> None:
    live = liveness(graph, kept_edges(graph, arch))
    n_total = graph.num_inputs + graph.num_nodes
    xs = {n: n for n in range(n_total)}
    names = {n: (f"in{n}" if n < graph.num_inputs else f"n{n}") for n in range(n_total)}
    for k, e in enumerate(live.live_edges):
        x0, x1 = xs[e.src], xs[e.dst]
        rad = 0.25 + 0.12 * (e.dst - e.src - 1)
        ax.annotate("", xy=(x1, 0), xytext=(x0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=f"C{k % 10}", connectionstyle=f"arc3,rad={-rad}", lw=1.4))
        height = rad * (x1 - x0) / 2
        ax.text((x0 + x1) / 2, height + 0.05, _edge_text(arch, e), ha="center", va="bottom",
                fontsize=6.5, color=f"C{k % 10}", zorder=5,  # arcs bend in display space: keep labels readable
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.5))
    for n in range(n_total):
        alive = live.node_alive(n)
        ax.scatter([xs[n]], [0], s=700, color="#cfe2ff" if alive else "#eeeeee", edgecolors="black", zorder=3)
        ax.text(xs[n], 0, names[n], ha="center", va="center", fontsize=8, zorder=4,
                color="black" if alive else "#999999")
    out = "concat(" + ",".join(names[n] for n in graph.node_ids if live.node_alive(n)) + ")" \
        if graph.output == "concat" else f"out = {names[graph.output_nodes()[0]]}"
    ax.set_title(f"cell {graph.kind!r}: {len(live.live_edges)} edges, "
                 f"{sum(len(arch.ops.get(e.op_label, [])) for e in live.live_edges)} ops; {out}", fontsize=9)
    top = max([(0.25 + 0.12 * (e.dst - e.src - 1)) * (e.dst - e.src) / 2 for e in live.live_edges] or [0.2])
    ax.set_xlim(-0.6, n_total - 0.4)
    ax.set_ylim(-0.35, top + 0.75)
    ax.axis("off")


def _draw_chain(ax, arch: Architecture) -> None:
    labels = list(arch.ops)
    for i, label in enumerate(labels):
        ops = ", ".join(f"{o['op']} {o['weight']:.2f}" for o in arch.ops[label])
        ax.text(0.01, 1 - (i + 0.5) / len(labels), f"{label}: {ops}", fontsize=8, va="center", family="monospace")
    ax.set_title(f"{arch.space} chain: {arch.ops_kept()} ops kept over {len(labels)} blocks", fontsize=9)
    ax.axis("off")


def plot_architecture(arch: Architecture, path: str | os.PathLike) -> Path:
    """Write a PNG of ``arch``'s cells (or chain) to ``path``."""
    graphs = build_space(arch.space, **arch.space_args).cell_graphs()
    panels = max(1, len(graphs))
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), squeeze=False)
    if graphs:
        for ax, graph in zip(axes[:, 0], graphs):
            _draw_cell(ax, arch, graph)
    else:
        _draw_chain(axes[0, 0], arch)
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
    return "\n".join(lines)
