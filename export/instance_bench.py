"""Measuring the instance-aware model in ONNX Runtime over real test images, and drawing its choices.

:func:`bench_instance` times, per image, the controller call plus the chosen member's call (what serving one image
costs), the controller alone (its overhead) and every member alone on the same images; each with accuracy, mean
and p90 latency. :func:`bench_batched` times batched serving: each batch runs the controller once and each chosen
member once on its group of images (the dispatcher), against every member alone on the same batches. The
figures: the choice per class (``choices.png``), example images per member (``examples.png``), accuracy against
mean latency, the members' front with the instance-aware point (``front.png``), and throughput against batch size
(``batched.png``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from hmnas_nni.format.figures import png_bytes, pyplot

from .bench import environment
from .instance import Dispatcher


def _summary(ms: list[float], correct: np.ndarray | None) -> dict[str, Any]:
    """Mean, p50 and p90 of per-image latencies (ms), with accuracy when ``correct`` is given."""
    a = np.asarray(ms)
    row = {"images": len(a), "mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
           "p90_ms": float(np.percentile(a, 90))}
    if correct is not None:
        row["accuracy"] = float(correct.mean())
    return row


def _timed(fn: Any, x: np.ndarray) -> tuple[Any, float]:
    """``fn(x)`` and how long it took (ms)."""
    t = time.perf_counter()
    out = fn(x)
    return out, (time.perf_counter() - t) * 1e3


def bench_instance(dispatcher: Dispatcher, x: torch.Tensor, y: torch.Tensor, warmup: int = 20) -> dict[str, Any]:
    """Batch-1 latency and accuracy of the instance-aware model, of its controller alone and of each member alone,
    over the images ``x`` (labels ``y``), in ONNX Runtime. Each image runs all of them in turn (interleaved), so a
    burst of load on a shared machine hits every measurement alike rather than one of them."""
    images = [img[None] for img in x.numpy()]
    labels = y.numpy()
    members = range(len(dispatcher.members))
    for img in images[:warmup]:  # every session warm before any timing
        dispatcher.choose(img)
        for k in members:
            dispatcher.run_member(k, img)
    total, ctrl, picks, preds = [], [], [], []
    alone: list[list[tuple[int, float]]] = [[] for _ in members]
    for img in images:
        t = time.perf_counter()
        k = int(dispatcher.choose(img)[0])
        logits = dispatcher.run_member(k, img)
        total.append((time.perf_counter() - t) * 1e3)
        picks.append(k)
        preds.append(int(logits.argmax(1)[0]))
        ctrl.append(_timed(dispatcher.choose, img)[1])
        for j in members:
            out, ms = _timed(lambda a, j=j: dispatcher.run_member(j, a), img)
            alone[j].append((int(out.argmax(1)[0]), ms))
    out = {"instance": {**_summary(total, np.asarray(preds) == labels),
                        "choice_counts": np.bincount(np.asarray(picks), minlength=len(members)).tolist()},
           "controller": _summary(ctrl, None), "members": [], "environment": environment(), "interleaved": True,
           "choices": picks, "predictions": preds}
    for j in members:
        correct = np.asarray([p for p, _ in alone[j]]) == labels
        out["members"].append({"member": j, **_summary([ms for _, ms in alone[j]], correct)})
    return out


def bench_batched(dispatcher: Dispatcher, x: torch.Tensor, y: torch.Tensor, batch_sizes: list[int],
                  warmup: int = 3) -> list[dict[str, Any]]:
    """Per batch size ``B``: the images in batches of ``B`` through the dispatcher (controller, then one call per
    chosen member) and through each member alone, interleaved batch by batch; milliseconds per batch, images per
    second, accuracy and member calls per batch. A last partial batch is left out so every batch has ``B`` images."""
    rows = []
    for b in batch_sizes:
        n = (len(x) // b) * b
        batches = [(x[i:i + b].numpy(), y[i:i + b].numpy()) for i in range(0, n, b)]
        if not batches:
            continue
        for xb, _ in batches[:warmup]:
            dispatcher(xb)
            for k in range(len(dispatcher.members)):
                dispatcher.run_member(k, xb)
        rows.append(_batched_row(dispatcher, batches, b))
    return rows


def _batched_row(dispatcher: Dispatcher, batches: list[tuple[np.ndarray, np.ndarray]], b: int) -> dict[str, Any]:
    """One batch size of :func:`bench_batched`."""
    members = range(len(dispatcher.members))
    inst_ms, inst_ok, calls = [], 0, []
    alone_ms: list[list[float]] = [[] for _ in members]
    alone_ok = [0 for _ in members]
    for xb, yb in batches:
        (logits, pick), ms = _timed(dispatcher, xb)
        inst_ms.append(ms)
        inst_ok += int((logits.argmax(1) == yb).sum())
        calls.append(len(np.unique(pick)))
        for j in members:
            out, ms = _timed(lambda a, j=j: dispatcher.run_member(j, a), xb)
            alone_ms[j].append(ms)
            alone_ok[j] += int((out.argmax(1) == yb).sum())
    images = len(batches) * b

    def row(ms: list[float], ok: int) -> dict[str, Any]:
        mean = float(np.mean(ms))
        return {"mean_ms": mean, "p90_ms": float(np.percentile(ms, 90)), "throughput_ips": b / (mean / 1e3),
                "accuracy": ok / images}

    return {"batch": b, "batches": len(batches), "images": images,
            "instance": {**row(inst_ms, inst_ok), "member_calls_per_batch": float(np.mean(calls))},
            "members": [{"member": j, **row(alone_ms[j], alone_ok[j])} for j in members]}


# --------------------------------------------------------------------------- figures
def plot_choices(picks: list[int], labels: np.ndarray, members: int, classes: list[str] | None = None) -> bytes:
    """Per class, the share of its test images that chose each member (stacked bars)."""
    plt = pyplot()
    picks_a, n_classes = np.asarray(picks), int(labels.max()) + 1
    share = np.zeros((n_classes, members))
    for c in range(n_classes):
        rows = picks_a[labels == c]
        if len(rows):
            share[c] = np.bincount(rows, minlength=members) / len(rows)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bottom = np.zeros(n_classes)
    for k in range(members):
        ax.bar(range(n_classes), share[:, k], bottom=bottom, label=f"member {k}")
        bottom += share[:, k]
    ax.set_xticks(range(n_classes), classes or [str(c) for c in range(n_classes)], rotation=45, fontsize=7)
    ax.set_ylabel("share of the class's test images")
    ax.set_title("member chosen per class (member 0: largest)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return png_bytes(fig)


def plot_examples(x: torch.Tensor, picks: list[int], members: int, per_member: int = 8) -> bytes:
    """Up to ``per_member`` test images that chose each member, one row per member."""
    plt = pyplot()
    picks_a = np.asarray(picks)
    fig, axes = plt.subplots(members, per_member, figsize=(per_member * 0.9, members * 1.0), squeeze=False)
    for k in range(members):
        idx = np.flatnonzero(picks_a == k)[:per_member]
        for j in range(per_member):
            ax = axes[k][j]
            ax.axis("off")
            if j < len(idx):
                ax.imshow(x[idx[j]].mean(0).numpy(), cmap="gray")
        axes[k][0].set_title(f"member {k}: {int((picks_a == k).sum())} images", fontsize=7, loc="left")
    return png_bytes(fig)


def plot_front(bench: dict[str, Any]) -> bytes:
    """Accuracy against mean batch-1 latency: the members (a line) and the instance-aware model (a star)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ms = [m["mean_ms"] for m in bench["members"]]
    acc = [m["accuracy"] for m in bench["members"]]
    ax.plot(ms, acc, "o-", label="family members (alone)")
    for m in bench["members"]:
        ax.annotate(str(m["member"]), (m["mean_ms"], m["accuracy"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    inst = bench["instance"]
    ax.plot([inst["mean_ms"]], [inst["accuracy"]], "r*", markersize=12,
            label=f"instance-aware (controller {bench['controller']['mean_ms']:.3f} ms)")
    ax.set_xlabel("mean latency, batch 1, ONNX Runtime (ms)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def plot_batched(rows: list[dict[str, Any]]) -> bytes:
    """Throughput against batch size: the dispatcher (grouped by chosen member) and every member alone."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    bs = [r["batch"] for r in rows]
    for j in range(len(rows[0]["members"]) if rows else 0):
        ax.plot(bs, [r["members"][j]["throughput_ips"] for r in rows], "o--", label=f"member {j} alone", alpha=0.7)
    ax.plot(bs, [r["instance"]["throughput_ips"] for r in rows], "r*-", markersize=10, label="instance-aware")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images per second, ONNX Runtime")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return png_bytes(fig)
