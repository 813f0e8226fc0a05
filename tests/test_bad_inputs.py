"""Every user-facing input, given wrong: the real `hmnas` CLI exits non-zero with a message saying what is wrong,
where, and how to fix it, before any long work, and leaves the files already in its output folder untouched.

Each row runs `python -m hmnas_nni.cli ...` in a subprocess (rows run three at a time). The output folder of
every row is filled beforehand with files named like every output the commands write; after the run their
bytes and modification times must be unchanged and no file may have appeared.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from math import nan
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE_ARCH = ROOT / "export" / "archs" / "nb201_digits_smoke.json"
OUTPUT_NAMES = ("arch.json", "metrics.json", "supernet.safetensors", "cells.png", "checkpoints/last.ckpt",
                "model.safetensors", "model.onnx", "parity.json", "config.json")
OLD = 1_000_000_000  # mtime given to the pre-created outputs (2001): any rewrite changes it
SENTINEL = "EVALUATED"  # a file that exists only if some input was run as code


def search(*extra: str) -> list[str]:
    """A tiny search command line with ``extra`` options (later options win)."""
    return ["search", "--space", "nb201", "--space-args", '{"channels": 4}', "--subset", "64", "--epochs", "2",
            "--batch-size", "16", "--no-progress", "--out", "{out}", *extra]


class Evil:
    """Pickles to a call of os.system: loading it as code would create the sentinel file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return (os.system, (f"touch {self.folder / SENTINEL}",))


# ------------------------------------------------------------------------------------------ file builders
def idx_gz(path: Path, array: np.ndarray, truncate: int | None = None) -> None:
    """Write an IDX file (Fashion-MNIST's format), gzipped, optionally cut after ``truncate`` bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    data = gzip.compress(raw)
    path.write_bytes(data[:truncate] if truncate else data)


def fashion(folder: Path, size: int = 28, n: int = 20, labels: int | None = None, truncate: bool = False) -> Path:
    """A Fashion-MNIST folder with ``n`` images of ``size``x``size`` (and ``labels`` labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.zeros((n, size, size))
    y = np.arange(labels if labels is not None else n) % 10
    for split in ("train", "t10k"):
        idx_gz(folder / f"{split}-images-idx3-ubyte.gz", x, truncate=30 if truncate and split == "train" else None)
        idx_gz(folder / f"{split}-labels-idx1-ubyte.gz", y)
    return folder


def cifar(folder: Path, batch: object) -> Path:
    """A cifar-10-batches-py folder whose batches all pickle ``batch``."""
    inner = folder / "cifar-10-batches-py"
    inner.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (inner / name).write_bytes(pickle.dumps(batch))
    return folder


def search_checkpoint(path: Path, epoch: int, **config: object) -> None:
    """A checkpoint as `hmnas search` writes it (what --resume reads of it: epoch, state_dict, config)."""
    from hmnas_nni.search.config import SearchConfig

    cfg = asdict(SearchConfig(**config))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "global_step": 2, "state_dict": {},
                "callbacks": {"hmnas.SearchState": {"config": json.dumps(cfg, sort_keys=True)}}}, path)


def safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``tensors`` as a safetensors file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def derived_state(arch: Path) -> dict[str, torch.Tensor]:
    """The weights a supernet must provide for ``arch``'s derived network."""
    from hmnas_nni.format.architecture import Architecture
    from hmnas_nni.nas.rebuild import network_of

    return {k: v.clone() for k, v in network_of(Architecture.load(arch)).state_dict().items()}


def arch_with(tmp: Path, change: Callable[[dict], None]) -> Path:
    """The shipped smoke architecture with ``change`` applied."""
    doc = json.loads(SMOKE_ARCH.read_text())
    change(doc)
    path = tmp / "arch.json"
    path.write_text(json.dumps(doc))
    return path


def wrong_shape_supernet(tmp: Path) -> Path:
    """A search folder whose supernet weights have one tensor of the wrong shape."""
    folder = tmp / "searched"
    folder.mkdir()
    shutil.copy(SMOKE_ARCH, folder / "arch.json")
    state = derived_state(SMOKE_ARCH)
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(3, 3, 3, 3)
    safetensors(folder / "supernet.safetensors", state)
    return folder


def export_cmd(*extra: str) -> list[str]:
    """``hmnas export`` of the smoke architecture with the weights ``{tmp}/w.safetensors``."""
    return ["export", str(SMOKE_ARCH), "--weights", "{tmp}/w.safetensors", "--out", "{out}", "--force", *extra]


def smoke_weights(path: Path) -> Path:
    """Weights of the smoke architecture as `hmnas retrain` writes them (random, but a network's)."""
    import timm

    from hmnas_nni.export import save_weights

    save_weights(timm.create_model("hmnas", arch=str(SMOKE_ARCH)), path)
    return path


def supernet_dir(tmp: Path) -> Path:
    """A search folder as `hmnas search` writes it: arch.json and supernet.safetensors (marked as a supernet)."""
    from safetensors.torch import save_file

    from hmnas_nni.format.weights import SUPERNET_FORMAT

    folder = tmp / "searched"
    folder.mkdir()
    shutil.copy(SMOKE_ARCH, folder / "arch.json")
    state = {f"net.{k}": v for k, v in derived_state(SMOKE_ARCH).items()}
    save_file(state, str(folder / "supernet.safetensors"), metadata={"format": SUPERNET_FORMAT})
    return folder


def nan_supernet(tmp: Path) -> Path:
    """A search folder whose supernet weights hold one NaN."""
    folder = tmp / "searched"
    folder.mkdir()
    shutil.copy(SMOKE_ARCH, folder / "arch.json")
    state = derived_state(SMOKE_ARCH)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = float("nan")
    safetensors(folder / "supernet.safetensors", state)
    return folder


def foreign_onnx(path: Path) -> Path:
    """A one-node ONNX model (Identity) that no `hmnas export` wrote: no metadata, other shapes."""
    import onnx
    from onnx import helper

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def truncated_supernet(tmp: Path) -> Path:
    """A search folder whose supernet.safetensors was cut in half."""
    folder = tmp / "searched"
    folder.mkdir()
    shutil.copy(SMOKE_ARCH, folder / "arch.json")
    path = safetensors(folder / "supernet.safetensors", derived_state(SMOKE_ARCH))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return folder


def evil_arch(tmp: Path) -> Path:
    """An architecture whose space is ``os.system``: building it as code would create the sentinel file."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "evil.json"
    path.write_text(json.dumps({"format": "hmnas-architecture/2", "space": "os.system",
                                "space_args": {"command": f"touch {tmp / SENTINEL}"}, "ops": {}}))
    return path


def no_path_arch(tmp: Path) -> Path:
    """The smoke architecture with every edge removed (no path from the input to the output)."""
    tmp.mkdir(parents=True, exist_ok=True)
    return arch_with(tmp, lambda doc: doc.update(ops={label: [] for label in doc["ops"]}))


USER_MODULE = """\
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace


class NeedsWidth(ModelSpace):
    def __init__(self, width: int, num_classes: int = 10):
        super().__init__()
        self.op = LayerChoice([nn.Identity(), nn.Identity()], label="op")


class Asserts(ModelSpace):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        assert num_classes % 3 == 0, "num_classes must be a multiple of 3"
"""


def user_modules(tmp: Path) -> None:
    """A user's space module (in the working folder, so importable) and one that fails as it is imported."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "userspaces.py").write_text(USER_MODULE)
    (tmp / "brokenspaces.py").write_text("import os\nraise RuntimeError('cannot find my config')\n")


def other_machine_table(tmp: Path) -> Path:
    """A latency table of nb201 measured on another machine (another CPU): fine to read, not to measure on."""
    from hmnas_nni.export.latency import Runtime
    from hmnas_nni.format.latency_table import LatencyTable

    runtime = Runtime()
    table = LatencyTable(space="nb201", space_args={"channels": 4}, input_shape=[1, 8, 8], batch=1,
                         runtime=runtime.describe(), device={**runtime.device(), "name": "another CPU"}, costs={},
                         base_ms=0.1, full_ms=0.2)
    tmp.mkdir(parents=True, exist_ok=True)
    return table.save(tmp / "table.json")


def user_folders(out: Path) -> None:
    """The user's own runs/ and logs/ in the folder given as --out."""
    for name in ("runs/old/notes.txt", "logs/today.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("the user's own file")


def weights_of_other_arch(tmp: Path) -> None:
    """Weights of the smoke architecture, beside the same architecture with one op weight changed."""
    smoke_weights(tmp / "w.safetensors")

    def change(doc: dict) -> None:
        label = next(k for k, v in doc["ops"].items() if v)
        doc["ops"][label][0]["weight"] = 0.25

    arch_with(tmp, change)


# ------------------------------------------------------------------------------------------------ table
@dataclass
class Case:
    """One bad input: the command (``{out}``/``{tmp}`` filled in), a setup, and the message it must print."""

    id: str
    argv: list[str]
    message: str
    setup: Callable[[Path, Path], None] | None = None
    code: int = 2
    without_gpu: bool = False  # the input is bad only on a machine without a GPU


def _resume_ckpt(**config: object) -> Callable[[Path, Path], None]:
    epoch = config.pop("epoch")
    return lambda tmp, out: search_checkpoint(out / "checkpoints" / "last.ckpt", epoch, **config)


CASES = [
    # -- search options
    Case("epochs-zero", search("--epochs", "0"), "epochs must be a positive integer, got 0"),
    Case("subset-too-small", search("--subset", "2"), "subset must be an integer >= 4 (images), got 2"),
    Case("batch-larger-than-data", search("--batch-size", "500"),
         "the training half of the data has 32 images, fewer than one batch (--batch-size 500)"),
    Case("lr-nan", search("--lr", "nan"), "learning_rate must be a finite number > 0, got nan"),
    Case("arc-lr-overflows-float32", search("--arc-lr", "1e39"), "arc_lr=1e+39 does not fit a float32"),
    Case("distributed-unknown", search("--distributed", "horovod"),
         "argument --distributed: invalid choice: 'horovod'"),
    Case("out-is-a-file", search("--out", "{tmp}/a-file"), "is a file, not a folder; pass a folder path",
         setup=lambda tmp, out: (tmp / "a-file").write_text("keep me")),
    # -- --space-args: JSON data only, checked against the space and the data
    Case("space-args-not-json", search("--space-args", "{channels: 4}"),
         "argument --space-args: not valid JSON (Expecting property name enclosed in double quotes"),
    Case("space-args-python-code", search("--space-args", f"__import__('os').system('touch {{tmp}}/{SENTINEL}')"),
         "argument --space-args: not valid JSON"),
    Case("space-args-unknown-key", search("--space-args", '{"chanels": 4}'),
         "space 'nb201' has no argument(s) ['chanels']; it takes"),
    Case("space-args-bad-value", search("--space-args", '{"channels": -3}'),
         "space 'nb201': argument channels=-3 must be a positive integer"),
    Case("space-args-wrong-image-size", search("--space-args", '{"channels": 4, "input_size": 28}'),
         "space_args input_size=28 does not fit digits (input_size=8); leave input_size out of --space-args"),
    # -- data folders
    Case("data-root-missing", search("--dataset", "fashion-mnist", "--data-root", "{tmp}/nowhere"),
         "--data-root {tmp}/nowhere does not exist; pass the folder that holds the dataset files"),
    Case("data-root-empty", search("--dataset", "fashion-mnist", "--data-root", "{tmp}/fm"),
         "Fashion-MNIST not found; looked for train-images-idx3-ubyte.gz",
         setup=lambda tmp, out: (tmp / "fm").mkdir()),
    Case("data-truncated-gzip", search("--dataset", "fashion-mnist", "--data-root", "{tmp}/fm"),
         "train-images-idx3-ubyte.gz is not a readable gzip file",
         setup=lambda tmp, out: fashion(tmp / "fm", truncate=True)),
    Case("data-wrong-image-size", search("--dataset", "fashion-mnist", "--data-root", "{tmp}/fm"),
         "images are 10x10, Fashion-MNIST images are 28x28", setup=lambda tmp, out: fashion(tmp / "fm", size=10)),
    Case("data-cifar-pickle-runs-code", search("--dataset", "cifar10", "--data-root", "{tmp}/c10"),
         "CIFAR-10 batch refers to posix.system; refusing to load anything but arrays",
         setup=lambda tmp, out: cifar(tmp / "c10", Evil(tmp))),
    Case("data-cifar-wrong-image-size", search("--dataset", "cifar10", "--data-root", "{tmp}/c10"),
         "CIFAR-10 images are 3x32x32 = 3072 values",
         setup=lambda tmp, out: cifar(tmp / "c10", {"data": np.zeros((4, 768), np.uint8), "labels": [0, 1, 2, 3]})),
    # -- --resume
    Case("resume-no-checkpoint", ["search", "--resume", "{out}", "--epochs", "3"], "no checkpoint at {out}/checkpoints/"
         "last.ckpt", setup=lambda tmp, out: (out / "checkpoints" / "last.ckpt").unlink()),
    Case("resume-truncated-checkpoint", ["search", "--resume", "{out}"], "cannot read checkpoint {out}/checkpoints/"
         "last.ckpt"),  # the pre-created last.ckpt is random bytes
    Case("resume-checkpoint-runs-code", ["search", "--resume", "{out}"], "cannot read checkpoint",
         setup=lambda tmp, out: torch.save(Evil(tmp), out / "checkpoints" / "last.ckpt")),
    Case("resume-other-search", ["search", "--resume", "{out}", "--space", "nb201"],
         "that search ran with space='darts' (now 'nb201'); pass the same options as the original run",
         setup=_resume_ckpt(epoch=0, space="darts", epochs=4)),
    Case("resume-finished", ["search", "--resume", "{out}"],
         "the search already finished its 2 epoch(s); pass --epochs N with N > 2",
         setup=_resume_ckpt(epoch=1, epochs=2)),
    # -- architecture JSON
    Case("arch-not-json", ["show", "{tmp}/arch.json"], "{tmp}/arch.json: not valid JSON (Expecting property name",
         setup=lambda tmp, out: (tmp / "arch.json").write_text("{ops: [")),
    Case("arch-unknown-op", ["show", "{tmp}/arch.json"],
         "choice 'cell/0_1' names unknown op 'conv_9x9'; candidates are ['none', 'skip_connect',",
         setup=lambda tmp, out: arch_with(tmp, lambda d: d["ops"]["cell/0_1"][1].update(op="conv_9x9"))),
    # -- weights files
    Case("weights-truncated", ["export", str(SMOKE_ARCH), "--weights", "{tmp}/w.safetensors", "--out", "{out}",
                               "--force"], "is not a readable safetensors file",
         setup=lambda tmp, out: (tmp / "w.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":")),
    Case("weights-pickle-not-safetensors", ["export", str(SMOKE_ARCH), "--weights", "{tmp}/w.pt", "--out", "{out}",
                                            "--force"], "is not a readable safetensors file",
         setup=lambda tmp, out: torch.save(Evil(tmp), tmp / "w.pt")),
    Case("weights-other-architecture", ["export", str(SMOKE_ARCH), "--weights", "{tmp}/w.safetensors", "--out",
                                        "{out}", "--force"], "belong to another architecture",
         setup=lambda tmp, out: safetensors(tmp / "w.safetensors", {"stem.0.weight": torch.zeros(2, 2)})),
    Case("supernet-truncated", ["retrain", str(SMOKE_ARCH), "--dataset", "digits", "--epochs", "0", "--out", "{out}",
                                "--from-supernet", "{tmp}/searched", "--force"], "cannot read supernet weights",
         setup=lambda tmp, out: truncated_supernet(tmp)),
    Case("supernet-wrong-shapes", ["retrain", str(SMOKE_ARCH), "--dataset", "digits", "--epochs", "0", "--out",
                                   "{out}", "--from-supernet", "{tmp}/searched", "--force"],
         "does not fit the architecture", setup=lambda tmp, out: wrong_shape_supernet(tmp)),
    # -- NNI trial parameters (the search-space JSON fields a trial reads)
    Case("trial-param-wrong-type", ["trial", "--params", '{"tau": "small"}', "--out", "{out}"],
         "parameter tau='small' must be a float"),
    # -- output folders, numeric ranges and resources (each checked before the work starts)
    Case("out-holds-a-finished-run", search(), "already holds another run's results (arch.json, cells.png, "
         "checkpoints, config.json, metrics.json, model.onnx, model.safetensors, parity.json, supernet.safetensors); "
         "pass a new folder as out (--out), or force=True (--force) to replace those results as a whole"),
    Case("out-empty", search("--out", ""), "out (--out) is empty; pass the folder the results go to"),
    Case("sparsity-infinite", search("--sparsity", "inf"), "sparsity must be a finite number >= 0, got inf"),
    Case("seed-negative", search("--seed", "-1"), "seed must be an integer in 0 .. 2**32-1, got -1"),
    Case("subset-larger-than-data", search("--subset", "100000", "--force"),
         "subset 100000 is more than the 1,437 training images of digits; pass --subset 1437 or less"),
    Case("space-too-big-for-memory", search("--space-args", '{"channels": 4096}', "--force"),
         "has 25,837,940,746 parameters: training it needs at least 385.0 GiB", code=4),
    Case("accelerator-gpu-without-gpu", search("--accelerator", "gpu"), "--accelerator gpu: no GPU is visible here",
         without_gpu=True),
    Case("compare-epochs-zero", ["compare", "--epochs", "0", "--out", "{out}"],
         "epochs must be a positive integer, got 0"),
    Case("retrain-limit-larger-than-data", ["retrain", str(SMOKE_ARCH), "--dataset", "digits", "--epochs", "1",
                                            "--limit-train", "100000", "--out", "{out}", "--force"],
         "--limit-train 100000 is more than the 1,437 training images of digits"),
    Case("retrain-supernet-non-finite", ["retrain", str(SMOKE_ARCH), "--dataset", "digits", "--epochs", "0", "--out",
                                         "{out}", "--from-supernet", "{tmp}/searched", "--force"],
         "holds 1 non-finite value(s) (NaN or inf)", setup=lambda tmp, out: nan_supernet(tmp)),
    Case("export-opset-older-than-the-exporter", export_cmd("--opset", "17"),
         "--opset 17 cannot be written: torch's ONNX exporter writes opsets 18 to"),
    Case("export-opset-unknown", export_cmd("--opset", "99"), "--opset 99 cannot be written"),
    Case("export-weights-non-finite", export_cmd(), "holds 1 non-finite value(s) (NaN or inf)",
         setup=lambda tmp, out: safetensors(tmp / "w.safetensors", {"body.stem.0.weight": torch.tensor([1.0, nan])})),
    Case("export-weights-integer", export_cmd(), "tensor body.stem.0.weight is torch.int64, not floating point",
         setup=lambda tmp, out: safetensors(tmp / "w.safetensors", {"body.stem.0.weight": torch.arange(4)})),
    Case("export-a-search-supernet", ["export", "{tmp}/searched/arch.json", "--weights",
                                      "{tmp}/searched/supernet.safetensors", "--out", "{out}", "--force"],
         "is a search's supernet (every candidate op), not a network's weights; make them first: hmnas retrain "
         "{tmp}/searched/arch.json --from-supernet {tmp}/searched --epochs 0",
         setup=lambda tmp, out: supernet_dir(tmp)),
    Case("bench-foreign-onnx", ["bench", str(SMOKE_ARCH), "--onnx", "{tmp}/foreign.onnx", "--out", "{out}",
                                "--backends", "ort-cpu", "--quick"], "was not written by `hmnas export`",
         setup=lambda tmp, out: foreign_onnx(tmp / "foreign.onnx")),
    Case("bench-iters-zero", ["bench", str(SMOKE_ARCH), "--out", "{out}", "--iters", "0", "--min-seconds", "0"],
         "--iters must be an integer >= 1, got 0"),
    Case("bench-threads-negative", ["bench", str(SMOKE_ARCH), "--out", "{out}", "--threads", "-1"],
         "--threads must be a positive integer, got -1"),
    Case("bench-batch-too-large", ["bench", str(SMOKE_ARCH), "--out", "{out}", "--batch-sizes", "4000000"],
         "batch sizes must be integers in 1..65536, got [4000000]"),
    # -- every command that writes results refuses a folder holding another run's (without --force)
    Case("trial-into-results", ["trial", "--space-args", '{"channels": 4}', "--subset", "64", "--batch-size", "16",
                                "--epochs", "2", "--out", "{out}"], "already holds another run's results"),
    Case("export-into-results", ["export", str(SMOKE_ARCH), "--weights", "{tmp}/w.safetensors", "--out", "{out}"],
         "already holds another run's results", setup=lambda tmp, out: smoke_weights(tmp / "w.safetensors")),
    Case("bench-into-results", ["bench", str(SMOKE_ARCH), "--out", "{out}", "--quick"],
         "already holds another run's results"),
    Case("compare-into-results", ["compare", "--out", "{out}"], "already holds another run's results"),
    # -- no file runs code, nothing of the user's is deleted or overwritten, everything checked before the work
    *[Case(f"{cmd}-arch-names-code", [cmd, "{tmp}/evil.json", *rest], "which is not an allowed space",
           setup=lambda tmp, out: evil_arch(tmp))
      for cmd, rest in (("show", []),
                        ("retrain", ["--dataset", "digits", "--epochs", "0", "--out", "{out}", "--force"]),
                        ("export", ["--weights", "{tmp}/w.safetensors", "--out", "{out}", "--force"]),
                        ("bench", ["--out", "{out}", "--quick", "--force"]))],
    Case("show-png-over-an-architecture", ["show", str(SMOKE_ARCH), "--png", "{out}/arch.json"],
         "exists and is not a PNG image; nothing was overwritten"),
    Case("show-png-unwritable", ["show", str(SMOKE_ARCH), "--png", "{out}/arch.json/cells.png"],
         "choose an output path you can write to"),
    Case("force-keeps-the-users-folders", search("--force"), "which no hmnas command wrote there",
         setup=lambda tmp, out: user_folders(out)),
    Case("table-of-another-machine-with-target", search("--latency-table", "{tmp}/table.json", "--latency-target", "1",
                                                        "--out", "{tmp}/fresh"),
         "cannot measure on the table's runtime", setup=lambda tmp, out: other_machine_table(tmp)),
    Case("latency-out-a-folder", ["latency", "--space-args", '{"channels": 4}', "--out", "{out}"],
         "is a folder; pass the table's file path"),
    Case("latency-out-unwritable", ["latency", "--space-args", '{"channels": 4}', "--out", "/sys/hmnas-table.json"],
         "cannot write /sys/hmnas-table.json"),
    Case("show-arch-without-a-path", ["show", "{tmp}/arch.json"], "removes every path from the input to the output",
         setup=lambda tmp, out: no_path_arch(tmp)),
    Case("retrain-arch-without-a-path", ["retrain", "{tmp}/arch.json", "--dataset", "digits", "--epochs", "1",
                                         "--out", "{out}", "--force"],
         "removes every path from the input to the output", setup=lambda tmp, out: no_path_arch(tmp)),
    Case("space-needs-an-argument", search("--space", "userspaces.NeedsWidth", "--space-args", "{}"),
         "space 'userspaces.NeedsWidth' needs argument(s) ['width']", setup=lambda tmp, out: user_modules(tmp)),
    Case("space-constructor-fails", search("--space", "userspaces.Asserts", "--space-args", "{}"),
         "userspaces.py:14: AssertionError: num_classes must be a multiple of 3",
         setup=lambda tmp, out: user_modules(tmp)),
    Case("space-module-fails-to-import", search("--space", "brokenspaces.Space", "--space-args", "{}"),
         "importing your module 'brokenspaces' failed at", setup=lambda tmp, out: user_modules(tmp)),
    Case("export-weights-of-another-arch", ["export", "{tmp}/arch.json", "--weights", "{tmp}/w.safetensors",
                                            "--out", "{out}", "--force"],
         "written for another architecture than the one given (at 'cell/",
         setup=lambda tmp, out: weights_of_other_arch(tmp)),
    Case("budget-not-a-duration", search("--budget", "4x"), "budget '4x' is not a duration or a number of epochs"),
    Case("budget-too-short", search("--budget", "1s"), "must be a finite duration of at least 5 s"),
    Case("nasib-without-budget", search("--strategy", "nasib"), "--strategy nasib plans its search from a budget"),
    Case("gpu-hours-on-cpu", search("--budget", "1gpuh", "--accelerator", "cpu"),
         "--budget 1gpuh is in GPU-hours but this search runs on the CPU"),
    Case("budget-part-of-an-epoch", search("--budget", "2.5ep"), "must be a whole number of epochs, at least 1"),
]


def _fill(argv: list[str], tmp: Path, out: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)).replace("{out}", str(out)) for a in argv]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _prepare(case: Case, root: Path) -> tuple[Path, Path]:
    """Pre-create the outputs a run must not touch, and the case's own files (main thread: NNI's label
    scopes are process-global, so model spaces must not be built from worker threads)."""
    tmp = root / case.id
    out = tmp / "out"
    rng = np.random.default_rng(len(case.id))
    for name in OUTPUT_NAMES:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(64))
        os.utime(path, ns=(OLD * 10**9, OLD * 10**9))
    if case.setup is not None:
        case.setup(tmp, out)
    return tmp, out


def _run(case: Case, tmp: Path, out: Path) -> dict:
    before = _snapshot(out)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    env.pop("NNI_PLATFORM", None)
    done = subprocess.run([sys.executable, "-m", "hmnas_nni.cli", *_fill(case.argv, tmp, out)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)
    return {"tmp": tmp, "out": out, "code": done.returncode, "stderr": done.stderr, "stdout": done.stdout,
            "before": before, "after": _snapshot(out)}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every case run once, three subprocesses at a time."""
    root = tmp_path_factory.mktemp("bad-inputs")
    prepared = [_prepare(c, root) for c in CASES]
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = pool.map(lambda args: _run(*args), [(c, *p) for c, p in zip(CASES, prepared)])
        return dict(zip([c.id for c in CASES], runs))


def test_table_has_at_least_25_bad_inputs() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_clearly_and_touches_nothing(case: Case, results: dict[str, dict]) -> None:
    if case.without_gpu and torch.cuda.is_available():
        pytest.skip("a GPU is visible here, so --accelerator gpu is good input")
    r = results[case.id]
    message = case.message.replace("{tmp}", str(r["tmp"])).replace("{out}", str(r["out"]))
    assert r["code"] == case.code, f"exit {r['code']}\n{r['stderr'][-3000:]}"
    assert message in r["stderr"], f"expected {message!r} in:\n{r['stderr'][-3000:]}"
    assert "Traceback" not in r["stderr"], r["stderr"][-3000:]
    assert r["after"].keys() == r["before"].keys(), "files appeared in or vanished from the output folder"
    for name, (data, mtime) in r["before"].items():
        assert r["after"][name] == (data, mtime), f"{name} was rewritten"
    assert not (r["tmp"] / SENTINEL).exists(), "an input was run as code"
