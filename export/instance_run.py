"""``train_instance_aware``: InstaNAS on an HM-NAS search, start to finish, into a guarded output folder.

It restores the search's supernet and family, trains the controller and fine-tunes the shared weights (a
checkpoint after every epoch: ``checkpoints/last.pt``, which ``resume=True`` continues from), then writes
together: ``model/`` (PyTorch weights, ONNX files and the dispatcher's manifest), ``parity.json``, ``bench.json``
(batch 1 over the real test set), ``choices.png``, ``examples.png``, ``front.png`` and the record
``instance.json``. :func:`bench_instance_model` measures a model folder again on its own (``hmnas bench FOLDER``):
batch 1 over the real test set and batched serving at the batch sizes asked for.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.outputs import OutputFolder
from hmnas_nni.search.data import load_dataset
from hmnas_nni.search.instance import InstaNAS, InstaNASSettings, load_searched_family

from .bench import check_settings
from .instance import MANIFEST, Dispatcher, check_parity, instance_model, save_instance
from .instance_bench import bench_batched, bench_instance, plot_batched, plot_choices, plot_examples, plot_front

_logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoints/last.pt"
BATCHES = (1, 8, 64, 256)
PROVIDERS = {"ort-cpu": ["CPUExecutionProvider"], "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def train_instance_aware(search: str | Path, out: str | Path, *, epochs: int = 3, latency_weight: float = 0.5,
                         seed: int = 0, resume: bool = False, force: bool = False, data_root: str | None = None,
                         bench_images: int | None = None, parity_images: int = 256,
                         log: Callable[[str], None] = _logger.info, **settings: Any) -> dict[str, Any]:
    """Train the instance-aware model of the search in ``search`` for ``epochs`` epochs, export, check and measure
    it into ``out``; the record written as ``out/instance.json``. ``settings`` are :class:`InstaNASSettings`."""
    if not isinstance(epochs, int) or epochs < 1:
        raise UsageError(f"--epochs {epochs!r}: pass a whole number >= 1")
    if bench_images is not None and bench_images < 1:
        raise UsageError(f"--bench-images {bench_images!r}: pass a number >= 1, or leave it out for the whole test set")
    InstaNASSettings(latency_weight=latency_weight, seed=seed, **settings).validate()  # before any loading
    checkpoint = Path(out) / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise UsageError(f"--resume: no checkpoint at {checkpoint}; start afresh without --resume")
    family = load_searched_family(search, data_root)
    with OutputFolder(out, "hmnas instance", force=force, resume=resume) as folder:
        folder.clear_previous(writes=("checkpoints",))
        insta = InstaNAS(family, latency_weight=latency_weight, seed=seed, **settings)
        if resume:
            insta.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
            log(f"resuming after {insta.epoch} finished epoch(s)")
        insta.train(epochs, on_epoch=lambda row, ins: _save_epoch(row, ins, checkpoint, log))
        record = _finish(insta, folder, data_root, bench_images, parity_images, epochs)
        folder.commit("instance.json")
    log(f"wrote {Path(out) / 'instance.json'}, model/, bench.json, parity.json, choices.png, examples.png, front.png")
    return record


def _save_epoch(row: dict[str, Any], insta: InstaNAS, path: Path, log: Callable[[str], None]) -> None:
    """Checkpoint after an epoch and one log line."""
    buffer = io.BytesIO()
    torch.save(insta.state_dict(), buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())
    log(f"epoch {row['epoch']}: val acc {row['val_acc']:.4f} at {row['val_mean_ms']:.3f} ms (members "
        f"{', '.join(f'{a:.3f}' for a in row['member_val_acc'])}), choices {row['choice_counts']}, "
        f"reward {row['reward']:.3f}, entropy {row['entropy']:.3f}")


def _finish(insta: InstaNAS, folder: OutputFolder, data_root: str | None, bench_images: int | None,
            parity_images: int, epochs: int) -> dict[str, Any]:
    """Export, parity, bench and figures staged in ``folder``; the record."""
    fam = insta.family
    model = instance_model(insta)
    save_instance(model, folder.staged("model"), fam.input_shape,
                  {"dataset": fam.config.dataset, "search": str(fam.folder)})
    dispatcher = Dispatcher(folder.staged("model"))
    _, test, info = load_dataset(fam.config.dataset, data_root)
    x, y = test.tensors
    parity = check_parity(model, dispatcher, x[:parity_images])
    write_json(folder.staged("parity.json"), parity)
    n = len(x) if bench_images is None else min(bench_images, len(x))
    bench = bench_instance(dispatcher, x[:n], y[:n])
    write_json(folder.staged("bench.json"), bench)
    members = len(fam.members)
    write_atomic(folder.staged("choices.png"), plot_choices(bench["choices"], y[:n].numpy(), members))
    write_atomic(folder.staged("examples.png"), plot_examples(x[:n], bench["choices"], members))
    write_atomic(folder.staged("front.png"), plot_front(bench))
    record = {"search": str(fam.folder), "dataset": fam.config.dataset, "epochs": epochs,
              "settings": asdict(insta.settings), "controller_size": insta.size,
              "family_latency_ms": fam.latency_ms, "history": insta.history,
              "parity": parity, "test": _headline(bench), "status": "finished"}
    write_json(folder.staged("instance.json"), record)
    return record


def _headline(bench: dict[str, Any]) -> dict[str, Any]:
    """The bench's figures without the per-image lists: the instance-aware model, its controller, each member, and
    the goal check against the most accurate member."""
    inst, members = bench["instance"], bench["members"]
    best = max(members, key=lambda m: (m["accuracy"], -m["mean_ms"]))
    return {"instance": inst, "controller": bench["controller"], "members": members,
            "best_member": best["member"], "accuracy_drop_points": 100 * (best["accuracy"] - inst["accuracy"]),
            "latency_ratio": inst["mean_ms"] / best["mean_ms"],
            "goal_met": bool(100 * (best["accuracy"] - inst["accuracy"]) <= 0.5
                             and inst["mean_ms"] <= 0.5 * best["mean_ms"])}


# --------------------------------------------------------------------------- a model folder on its own
def model_folder(path: str | Path) -> Path:
    """The model folder of ``path``: the folder itself, or the ``model/`` inside an `hmnas instance` output."""
    path = Path(path)
    return path / "model" if (path / "model" / MANIFEST).is_file() else path


def bench_instance_model(model: str | Path, out: str | Path, *, batch_sizes: list[int] | None = None,
                         images: int | None = None, threads: int | None = 1, backend: str = "ort-cpu",
                         data_root: str | None = None, force: bool = False) -> dict[str, Any]:
    """Measure an instance-aware model folder in ONNX Runtime on its dataset's test set: batch 1 per image (the
    instance-aware model, its controller, every member) and batched serving at ``batch_sizes``; writes
    ``bench.json``, ``batched.png``, ``front.png``, ``choices.png`` and ``examples.png`` into ``out``."""
    batch_sizes = list(batch_sizes or BATCHES)
    check_settings(batch_sizes, 0, 1, 0.0, threads)
    if backend not in PROVIDERS:
        raise UsageError(f"backend {backend!r} does not serve an instance-aware model; choose from {list(PROVIDERS)}")
    if images is not None and (not isinstance(images, int) or images < 1):
        raise UsageError(f"images={images!r}: pass a number >= 1, or None for the whole test set")
    dispatcher = Dispatcher(model_folder(model), threads=threads or 0, providers=PROVIDERS[backend])
    dataset = dispatcher.manifest.get("dataset")
    if not dataset:
        raise UsageError(f"{model_folder(model) / MANIFEST} names no dataset to measure on; pass a folder "
                         "`hmnas instance` wrote")
    _, test, _ = load_dataset(dataset, data_root)
    x, y = test.tensors
    n = len(x) if images is None else min(images, len(x))
    with OutputFolder(out, "hmnas bench", force=force) as folder:
        single = bench_instance(dispatcher, x[:n], y[:n])
        batched = bench_batched(dispatcher, x[:n], y[:n], batch_sizes)
        members = len(dispatcher.members)
        write_atomic(folder.staged("choices.png"), plot_choices(single["choices"], y[:n].numpy(), members))
        write_atomic(folder.staged("examples.png"), plot_examples(x[:n], single["choices"], members))
        write_atomic(folder.staged("front.png"), plot_front(single))
        write_atomic(folder.staged("batched.png"), plot_batched(batched))
        doc = {"model": str(model_folder(model)), "dataset": dataset, "backend": backend, "threads": threads,
               "batch_1": _headline(single), "batched": batched, "environment": single["environment"],
               "choices": single["choices"], "predictions": single["predictions"]}
        write_json(folder.staged("bench.json"), doc)
        folder.commit("bench.json")
    return doc
