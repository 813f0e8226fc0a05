"""A ranked family of deployable networks from one HM-NAS search, each measured: predicted and measured latency,
parameters, FLOPs and, with data, inherited-weight accuracy; written as ``family.json``, one ``arch.json`` per
member and ``family.png`` (accuracy against measured latency)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.latency_table import LatencyTable
from hmnas_nni.nas.cost import LatencyModel
from hmnas_nni.nas.family import family_members
from hmnas_nni.nas.hierarchy import Hierarchy
from hmnas_nni.nas.rebuild import derived_of
from hmnas_nni.search.evaluation import accuracy, count_parameters, recalibrate_batchnorm

from .latency import Runtime, Timer, runtime_of

_logger = logging.getLogger(__name__)


def flops(net: nn.Module, input_shape: list[int] | tuple[int, ...]) -> int:
    """FLOPs of one image through ``net`` (``torch.utils.flop_counter``: a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops())


def family(supernet: nn.Module, hierarchy: Hierarchy, k: int | None, *, table: LatencyTable | None = None,
           input_shape: list[int] | None = None, val_data: Dataset | None = None, measure: bool = True,
           timer: Timer | None = None, out: str | Path | None = None,
           bn_data: Dataset | None = None) -> list[dict[str, Any]]:
    """``k`` nested networks of a searched supernet, the search's own first, in order of predicted latency (with a
    table; else of entries kept), each with its architecture, predicted and (``measure``, on the table's runtime,
    which must be this machine's, else ONNX Runtime's CPU provider at batch 1) measured milliseconds, parameters,
    FLOPs and, given ``val_data``, accuracy with inherited weights (and, given ``bn_data``, ``val_acc_bn`` after
    re-estimating BatchNorm statistics on 10 of its batches: a smaller member no longer sees the statistics of
    the ops it dropped). With ``out``, the family is written there (:func:`write_family`)."""
    shape = list(table.input_shape) if table is not None else input_shape
    if shape is None:
        raise ValueError("family: pass a latency table or the input_shape (C, H, W) the networks take")
    cost = LatencyModel.of(supernet, hierarchy, table) if table is not None else None
    if measure and timer is None:
        timer = Timer(runtime_of(table) if table is not None else Runtime())
    batch = table.batch if table is not None else 1
    rows, graphs = [], []
    for rank, member in enumerate(family_members(supernet, hierarchy, k, cost, shape)):
        net = derived_of(supernet, member.architecture).eval()
        rows.append({"rank": rank, "level": member.level, "architecture": member.architecture,
                     "predicted_ms": member.predicted_ms, "measured_ms": None, "params": count_parameters(net),
                     "flops": flops(net, shape), "ops_kept": member.architecture.ops_kept(),
                     "entries_kept": member.size(), "kept": member.kept,
                     "val_acc": accuracy(net, val_data) if val_data else None,
                     "val_acc_bn": _accuracy_bn(net, bn_data, val_data)})
        if timer is not None:
            graphs.append(timer.graph(net, (batch, *shape), f"family member {rank}", fresh=True))
    if timer is not None:
        timer.time_all()
        for row, graph in zip(rows, graphs):
            row["measured_ms"] = timer.ms(graph)
    if k is not None and len(rows) < k:
        _logger.warning("family: %d networks asked for; the learned scores give %d distinct nested networks, all "
                        "of them returned", k, len(rows))
    if out is not None:
        write_family(out, rows, table)
    return rows


def _accuracy_bn(net: nn.Module, bn_data: Dataset | None, val_data: Dataset | None) -> float | None:
    """Accuracy after BatchNorm statistics are re-estimated on ``bn_data`` (on a copy: ``net`` is unchanged)."""
    if bn_data is None or val_data is None:
        return None
    return accuracy(recalibrate_batchnorm(copy.deepcopy(net), bn_data), val_data)


def write_family(out: str | Path, rows: list[dict[str, Any]], table: LatencyTable | None = None) -> Path:
    """``family.json``, ``member_<rank>/arch.json`` and ``family.png`` in ``out`` (atomic writes)."""
    out = Path(out)
    members = []
    for row in rows:
        arch_file = f"member_{row['rank']}/arch.json"
        row["architecture"].save(out / arch_file)
        members.append({**{k: v for k, v in row.items() if k != "architecture"}, "arch": arch_file})
    doc = {"members": members, "order": "largest (the search's own network) first; nested: each member keeps a "
                                        "subset of the one before",
           "latency": None if table is None else {"runtime": table.runtime, "device": table.device,
                                                  "batch": table.batch, "input_shape": table.input_shape}}
    write_json(out / "family.json", doc)
    write_atomic(out / "family.png", plot_family(members))
    return out


def plot_family(members: list[dict[str, Any]]) -> bytes:
    """Accuracy (else parameters) against measured (else predicted) latency, one point per member."""
    plt = pyplot()

    x_key = "measured_ms" if all(m["measured_ms"] is not None for m in members) else "predicted_ms"
    if any(m[x_key] is None for m in members):
        x_key = "entries_kept"
    y_key = next((k for k in ("val_acc_bn", "val_acc") if all(m.get(k) is not None for m in members)), "params")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    xs, ys = [m[x_key] for m in members], [m[y_key] for m in members]
    ax.plot(xs, ys, "o-")
    for m, x, y in zip(members, xs, ys):
        ax.annotate(str(m["rank"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    labels = {"measured_ms": "measured latency (ms)", "predicted_ms": "predicted latency (ms)",
              "entries_kept": "mask entries kept", "val_acc": "validation accuracy (inherited weights)",
              "val_acc_bn": "validation accuracy (inherited weights, BN re-estimated)",
              "params": "parameters"}
    ax.set_xlabel(labels[x_key])
    ax.set_ylabel(labels[y_key])
    ax.set_title("HM-NAS family from one search", fontsize=9)
    return png_bytes(fig)
