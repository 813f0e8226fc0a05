"""``hmnas bench``: latency and throughput of one derived network across runtimes and batch sizes.

Backends: ONNX Runtime with each usable provider (TensorRT, CUDA with I/O binding and optionally
CUDA graphs, CPU) and PyTorch eager and ``torch.compile``, all on the same weights and the same
input. GPU providers are asked for only when ``torch.cuda.is_available()``. Every backend warms up
before timing; first-run costs (session creation, engine build, compilation) are reported apart
from steady-state latency. Results go to ``bench.json``, ``bench.csv`` and ``bench.png``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmnas_nni.format.errors import CheckFailed, Interrupted, UsageError
from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.outputs import OutputFolder

from .derived_model import derived_model
from .hmnas_timm import load_weights, resolve_architecture
from .onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, load_onnx, metadata_of, ort_session, refuse_supernet

DEFAULT_BATCHES = (1, 8, 64, 256)
QUICK_BATCHES = (1, 8)
ALL_BACKENDS = ("ort-tensorrt", "ort-cuda", "ort-cuda-graph", "ort-cpu", "torch-eager", "torch-compile")
OUTPUTS = ("bench.json", "bench.csv", "bench.png")
#: The largest batch the exported ONNX file's dynamic axis takes.
MAX_BATCH = 65536


class BenchError(UsageError):
    """A benchmark request that cannot run as given."""


class NothingMeasured(CheckFailed):
    """Every backend failed: there is no measurement to write."""


# --------------------------------------------------------------------------- environment
def environment() -> dict[str, Any]:
    """Device, library versions and ONNX Runtime providers of this machine."""
    import onnx
    import onnxruntime as ort
    import timm

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "device": {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "timm": timm.__version__,
                     "cuda": torch.version.cuda if torch.cuda.is_available() else None},
        "ort_providers_available": ort.get_available_providers(),
        "ort_device": ort.get_device(),
    }


def default_backends() -> list[str]:
    """Backends worth trying here: GPU ones only when a GPU is present and ORT lists the provider."""
    import onnxruntime as ort

    avail = set(ort.get_available_providers())
    out = []
    if torch.cuda.is_available():
        if "TensorrtExecutionProvider" in avail:
            out.append("ort-tensorrt")
        if "CUDAExecutionProvider" in avail:
            out += ["ort-cuda", "ort-cuda-graph"]
    return out + ["ort-cpu", "torch-eager", "torch-compile"]


# --------------------------------------------------------------------------- timing
def time_runs(fn: Callable[[], Any], warmup: int, iters: int, sync: Callable[[], None] | None = None,
              min_seconds: float = 0.0) -> dict[str, float]:
    """Warm up, then time ``iters`` calls (more if ``min_seconds`` is not reached); percentiles in milliseconds."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    lat: list[float] = []
    start = time.perf_counter()
    while len(lat) < iters or (time.perf_counter() - start < min_seconds and len(lat) < 100 * iters):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        lat.append((time.perf_counter() - t) * 1e3)
    a = np.asarray(lat)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min()),
            "iters": len(lat)}


def _ort_providers(backend: str) -> list[Any]:
    """Provider list for an ORT backend (CPU always last as ORT's own fallback)."""
    if backend == "ort-cpu":
        return ["CPUExecutionProvider"]
    if backend == "ort-tensorrt":
        return [("TensorrtExecutionProvider", {"trt_fp16_enable": False}), "CUDAExecutionProvider",
                "CPUExecutionProvider"]
    if backend == "ort-cuda-graph":
        return [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def bench_ort(backend: str, onnx_path: Path, x: np.ndarray, warmup: int, iters: int,
              min_seconds: float, threads: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Time one ORT provider at one batch; first-run cost = session creation (+ engine build) + first run."""
    import onnxruntime as ort

    wanted = _ort_providers(backend)
    t0 = time.perf_counter()
    session = ort_session(onnx_path, wanted, threads=threads)
    created = time.perf_counter() - t0
    used = session.get_providers()
    want = wanted[0][0] if isinstance(wanted[0], tuple) else wanted[0]
    if used[0] != want:
        raise BenchError(f"ONNX Runtime fell back to {used[0]} instead of {want}")
    name = session.get_inputs()[0].name
    out_name = session.get_outputs()[0].name
    if backend == "ort-cpu":
        def run() -> Any:
            return session.run(None, {name: x})
        sync = None
    else:
        # I/O binding: input and output stay on the GPU, so timing covers the network, not host copies.
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, x_dev)
        if backend == "ort-cuda-graph":
            y_dev = ort.OrtValue.ortvalue_from_shape_and_type(
                [x.shape[0], *session.get_outputs()[0].shape[1:]], np.float32, "cuda", 0)
            binding.bind_ortvalue_output(out_name, y_dev)
        else:
            binding.bind_output(out_name, "cuda")

        def run() -> Any:
            session.run_with_iobinding(binding)
        sync = binding.synchronize_outputs
    t1 = time.perf_counter()
    run()
    if sync:
        sync()
    first = time.perf_counter() - t1
    stats = time_runs(run, warmup, iters, sync, min_seconds)
    return stats, {"session_seconds": created, "first_run_seconds": first, "providers_used": used}


def bench_torch(backend: str, model: torch.nn.Module, x: torch.Tensor, warmup: int, iters: int,
                min_seconds: float, compiled: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Time PyTorch eager or ``torch.compile`` at one batch; first-run cost = (re)compilation + first run."""
    dev = x.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    if backend == "torch-compile":
        if "fn" not in compiled:
            compiled["fn"] = torch.compile(model)
        fn = compiled["fn"]
    else:
        fn = model

    def run() -> Any:
        with torch.inference_mode():
            return fn(x)
    t0 = time.perf_counter()
    run()
    if sync:
        sync()
    first = time.perf_counter() - t0
    stats = time_runs(run, warmup, iters, sync, min_seconds)
    return stats, {"first_run_seconds": first, "device": str(dev)}


# --------------------------------------------------------------------------- command
def check_settings(batch_sizes: list[int], warmup: int, iters: int, min_seconds: float, threads: int | None) -> None:
    """Refuse any setting out of range before a model is built."""
    for b in batch_sizes:
        if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= MAX_BATCH:
            raise BenchError(f"batch sizes must be integers in 1..{MAX_BATCH}, got {batch_sizes}")
    for name, value, low in (("warmup", warmup, 0), ("iters", iters, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise BenchError(f"--{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(min_seconds, (int, float)) and 0 <= min_seconds < float("inf")):
        raise BenchError(f"--min-seconds must be a finite number >= 0, got {min_seconds!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise BenchError(f"--threads must be a positive integer, got {threads!r}; leave it out to use every core")


def bench(arch_path: str | Path, out: str | Path, weights: str | Path | None = None,
          onnx_path: str | Path | None = None, batch_sizes: list[int] | None = None,
          backends: list[str] | None = None, warmup: int | None = None,
          iters: int | None = None, min_seconds: float | None = None, threads: int | None = None,
          quick: bool = False, force: bool = False, seed: int = 0) -> dict[str, Any]:
    """Measure every backend at every batch size on one model and one input; write JSON, CSV and PNG together."""
    batch_sizes = batch_sizes or list(QUICK_BATCHES if quick else DEFAULT_BATCHES)
    warmup = warmup if warmup is not None else (3 if quick else 10)
    iters = iters if iters is not None else (10 if quick else 50)
    min_seconds = min_seconds if min_seconds is not None else (0.0 if quick else 1.0)
    check_settings(batch_sizes, warmup, iters, min_seconds, threads)
    arch, extras = resolve_architecture(arch_path)
    backends, skipped = _backends(backends, quick)
    model = derived_model(arch.to_dict() | extras).eval()
    if weights is not None:
        refuse_supernet(weights, arch_path)
        load_weights(model, weights)
    if onnx_path is not None:
        check_onnx(onnx_path, model, arch_path, weights, backends)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with OutputFolder(out, "hmnas bench", force=force) as folder:
            doc = _bench(model, arch, arch_path, folder, weights, onnx_path, batch_sizes, backends,
                         (warmup, iters, min_seconds), threads, quick, seed, skipped)
            folder.commit("bench.json")
        return doc
    finally:
        torch.set_num_threads(saved_threads)


def _backends(backends: list[str] | None, quick: bool) -> tuple[list[str], dict[str, str]]:
    """The backends to time (default: every usable one) and why any default was left out."""
    skipped: dict[str, str] = {}
    if backends is None:
        backends = default_backends()
        if not torch.cuda.is_available():
            for b in ("ort-tensorrt", "ort-cuda", "ort-cuda-graph"):
                skipped[b] = "no GPU here (torch.cuda.is_available() is False): GPU providers not requested"
        if quick:
            backends.remove("torch-compile")
            skipped["torch-compile"] = "left out by --quick (compiling costs tens of seconds per shape on a CPU); " \
                                       "name it in --backends to include it"
    unknown = sorted(set(backends) - set(ALL_BACKENDS))
    if unknown or not backends:
        raise BenchError(f"unknown backend(s) {unknown}; choose from {list(ALL_BACKENDS)}")
    return backends, skipped


def check_onnx(onnx_path: str | Path, model: torch.nn.Module, arch_path: Any, weights: Any,
               backends: list[str]) -> None:
    """Refuse an ONNX file that is not the derived network of ``arch_path`` (with ``weights``) it is to time."""
    if weights is None and any(b.startswith("torch-") for b in backends):
        raise BenchError("--onnx needs --weights too, so PyTorch runs the weights the ONNX file holds; "
                         "pass the model.safetensors it was exported from")
    proto = load_onnx(onnx_path)
    meta = metadata_of(proto)
    if "hmnas.architecture" not in meta:
        raise BenchError(f"{onnx_path} was not written by `hmnas export` (it has no hmnas.architecture metadata), so "
                         f"it may not be the network of {arch_path}; export that network with `hmnas export`")
    if json.loads(meta["hmnas.architecture"]) != model.arch.to_dict():
        raise BenchError(f"{onnx_path} was exported from another architecture than {arch_path}; "
                         "pass the arch.json it was exported from")
    if weights is not None and meta.get("hmnas.weights_sha256") not in (None, _sha(weights)):
        raise BenchError(f"{onnx_path} holds other weights than {weights}; pass the weights it was exported from")
    c, h, w = model.pretrained_cfg["input_size"]
    ins, outs = proto.graph.input, proto.graph.output
    shape_in = [d.dim_value for d in ins[0].type.tensor_type.shape.dim][1:] if len(ins) == 1 else None
    shape_out = [d.dim_value for d in outs[0].type.tensor_type.shape.dim][1:] if len(outs) == 1 else None
    if (len(ins), len(outs)) != (1, 1) or ins[0].name != INPUT_NAME or outs[0].name != OUTPUT_NAME or \
            shape_in != [c, h, w] or shape_out != [model.num_classes]:
        raise BenchError(f"{onnx_path} takes {shape_in} and gives {shape_out}, the network of {arch_path} takes "
                         f"{[c, h, w]} and gives {[model.num_classes]}; export it again with `hmnas export`")


def _sha(path: str | Path) -> str:
    from hmnas_nni.format.files import sha256

    return sha256(path)


def _bench(model: torch.nn.Module, arch: Any, arch_path: str | Path, folder: OutputFolder, weights: str | Path | None,
           onnx_path: str | Path | None, batch_sizes: list[int], backends: list[str],
           timing: tuple[int, int, float], threads: int | None, quick: bool, seed: int,
           skipped: dict[str, str]) -> dict[str, Any]:
    """The measuring part of :func:`bench`, run with the requested thread count; stages the three files."""
    c, h, w = model.pretrained_cfg["input_size"]
    base = torch.randn(max(batch_sizes), c, h, w, generator=torch.Generator().manual_seed(seed))
    first_run: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hmnas-bench-") as tmp:
        onnx_file = Path(onnx_path) if onnx_path is not None else None
        if onnx_file is None and any(b.startswith("ort-") for b in backends):
            onnx_file = Path(tmp) / "model.onnx"
            t0 = time.perf_counter()
            export_onnx(model, onnx_file, (c, h, w))
            first_run["onnx-export"] = {"seconds": time.perf_counter() - t0}
        results, errors = _run_all(model, onnx_file, base, backends, batch_sizes, *timing, threads, first_run)
    if not results:
        raise NothingMeasured("nothing was measured: every backend failed (" + "; ".join(
            f"{b}: {e}" for b, e in errors.items()) + "); see the errors above, e.g. lower --batch-sizes")
    env = environment()
    doc = {
        "model": {"arch": str(arch_path), "space": arch.space, "weights": str(weights) if weights else "random init",
                  "params": sum(p.numel() for p in model.parameters()), "input_size": [c, h, w],
                  "onnx": str(onnx_path) if onnx_path else "exported for this run (opset default)"},
        "settings": {"batch_sizes": batch_sizes, "backends": backends, "warmup": timing[0], "iters": timing[1],
                     "min_seconds": timing[2], "threads": threads or torch.get_num_threads(), "quick": quick,
                     "input": f"standard-normal tensor, seed {seed}, same for every backend"},
        **env,
        "providers_used": sorted({p for r in results for p in r.get("providers_used", [])}),
        "results": results, "first_run": first_run, "errors": errors, "skipped": skipped,
        "note": "latencies are steady-state after warm-up; first_run holds session creation, engine build "
                "and compilation costs, measured apart",
    }
    write_atomic(folder.staged("bench.csv"), _csv(results))
    write_atomic(folder.staged("bench.png"), _plot(results, env))
    write_json(folder.staged("bench.json"), doc)
    return doc


def _run_all(model: torch.nn.Module, onnx_file: Path | None, base: torch.Tensor, backends: list[str],
             batch_sizes: list[int], warmup: int, iters: int, min_seconds: float, threads: int | None,
             first_run: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every backend at every batch size; a failing backend is recorded with its error and skipped."""
    results: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    gpu = torch.cuda.is_available()
    for backend in backends:
        if backend.startswith("ort-") and backend != "ort-cpu" and not gpu:
            errors[backend] = "no GPU here (torch.cuda.is_available() is False); GPU providers not requested"
            continue
        compiled: dict[str, Any] = {}
        dev = torch.device("cuda" if gpu and backend.startswith("torch-") else "cpu")
        net = model.to(dev)
        for b in batch_sizes:
            x = base[:b]
            try:
                if backend.startswith("ort-"):
                    stats, extra = bench_ort(backend, onnx_file, x.numpy(), warmup, iters, min_seconds, threads)
                else:
                    stats, extra = bench_torch(backend, net, x.to(dev), warmup, iters, min_seconds, compiled)
            except (Interrupted, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - record any backend failure and go on
                msg = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
                errors[backend] = f"batch {b}: {type(e).__name__}: {msg}"
                break
            first_run.setdefault(backend, {})[str(b)] = {k: v for k, v in extra.items() if k.endswith("seconds")}
            results.append({"backend": backend, "batch": b, **stats,
                            "throughput_ips": b / (stats["mean_ms"] / 1e3),
                            "providers_used": extra.get("providers_used", []), "device": extra.get("device", "")})
        model.to("cpu")
    return results, errors


def _csv(results: list[dict[str, Any]]) -> str:
    """One row per backend and batch size."""
    buf = io.StringIO()
    cols = ["backend", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "throughput_ips", "iters"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in results:
        w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in cols})
    return buf.getvalue()


def _plot(results: list[dict[str, Any]], env: dict[str, Any]) -> bytes:
    """PNG: p50 latency and throughput against batch size, one line per backend."""
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for backend in dict.fromkeys(r["backend"] for r in results):
        rows = [r for r in results if r["backend"] == backend]
        bs = [r["batch"] for r in rows]
        ax1.plot(bs, [r["p50_ms"] for r in rows], marker="o", label=backend)
        ax2.plot(bs, [r["throughput_ips"] for r in rows], marker="o", label=backend)
    for ax, label in ((ax1, "p50 latency (ms)"), (ax2, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    dev = env["device"]
    fig.suptitle(f"{dev['gpu'] or dev['cpu']} ({dev['cpu_cores']} cores); torch {env['versions']['torch']}, "
                 f"onnxruntime {env['versions']['onnxruntime']}", fontsize=9)
    return png_bytes(fig)
