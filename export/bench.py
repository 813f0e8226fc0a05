"""``hmnas bench``: latency and throughput of one derived network across runtimes and batch sizes.

Backends: ONNX Runtime with each usable provider (TensorRT, CUDA with I/O binding and optionally
CUDA graphs, CPU) and PyTorch eager and ``torch.compile``, all on the same weights and the same
input. GPU providers are asked for only when ``torch.cuda.is_available()``. Every backend warms up
before timing; first-run costs (session creation, engine build, compilation) are reported apart
from steady-state latency. Results go to ``bench.json``, ``bench.csv`` and ``bench.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmnas_nni.format.architecture import ArchitectureError
from hmnas_nni.format.files import OutputExists, guard_outputs, write_atomic, write_json

from .hmnas_timm import HmnasNet, WeightsError, load_weights, resolve_architecture
from .onnx_export import ExportError, export_onnx, load_onnx, metadata_of, ort_session

DEFAULT_BATCHES = (1, 8, 64, 256)
QUICK_BATCHES = (1, 8)
ALL_BACKENDS = ("ort-tensorrt", "ort-cuda", "ort-cuda-graph", "ort-cpu", "torch-eager", "torch-compile")
OUTPUTS = ("bench.json", "bench.csv", "bench.png")


class BenchError(RuntimeError):
    """A benchmark request that cannot run as given."""


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
def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hmnas bench`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench", help="latency/throughput across ONNX Runtime providers, PyTorch eager and torch.compile",
        description="Benchmark one architecture (random or trained weights) on every usable runtime; "
                    "write bench.json, bench.csv and bench.png.",
    )
    p.add_argument("arch", help="architecture JSON")
    p.add_argument("--weights", default=None, help="model.safetensors (default: random weights; speed is the same)")
    p.add_argument("--onnx", default=None, help="an exported model.onnx to time (default: export one now)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,64,256; --quick: 1,8)")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated subset of {','.join(ALL_BACKENDS)} (default: all usable here; "
                        "--quick leaves out torch-compile unless named)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per backend and batch (default 10)")
    p.add_argument("--iters", type=int, default=None, help="timed runs per backend and batch (default 50)")
    p.add_argument("--min-seconds", type=float, default=None, help="keep timing until this long (default 1.0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ORT (default: all cores)")
    p.add_argument("--quick", action="store_true", help="short run for tests: batches 1,8, 3 warmup, 10 iters")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.set_defaults(func=run_bench)
    return p


def run_bench(args: argparse.Namespace) -> int:
    """CLI entry: run :func:`bench` and print a short table; exit 2 on bad inputs."""
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
        backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
        result = bench(args.arch, args.out, weights=args.weights, onnx_path=args.onnx, batch_sizes=batches,
                       backends=backends, warmup=args.warmup, iters=args.iters, min_seconds=args.min_seconds,
                       threads=args.threads, quick=args.quick, force=args.force)
    except (BenchError, ExportError, ArchitectureError, WeightsError, OutputExists, FileNotFoundError,
            ValueError) as e:
        print(f"hmnas bench: error: {e}", file=sys.stderr)
        return 2
    for r in result["results"]:
        print(f"{r['backend']:>15} batch {r['batch']:>4}: p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms  "
              f"{r['throughput_ips']:10.1f} img/s")
    for b, err in result["errors"].items():
        print(f"{b:>15}: not measured: {err}")
    print(f"wrote {', '.join(str(Path(args.out) / n) for n in OUTPUTS)}")
    return 0


def bench(arch_path: str | Path, out: str | Path, weights: str | Path | None = None,
          onnx_path: str | Path | None = None, batch_sizes: list[int] | None = None,
          backends: list[str] | None = None, warmup: int | None = None,
          iters: int | None = None, min_seconds: float | None = None, threads: int | None = None,
          quick: bool = False, force: bool = False, seed: int = 0) -> dict[str, Any]:
    """Measure every backend at every batch size on one model and one input; write JSON, CSV and PNG."""
    arch, extras = resolve_architecture(arch_path)
    batch_sizes = batch_sizes or list(QUICK_BATCHES if quick else DEFAULT_BATCHES)
    if any(b < 1 for b in batch_sizes):
        raise BenchError(f"batch sizes must be positive, got {batch_sizes}")
    warmup = warmup if warmup is not None else (3 if quick else 10)
    iters = iters if iters is not None else (10 if quick else 50)
    min_seconds = min_seconds if min_seconds is not None else (0.0 if quick else 1.0)
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
    if unknown:
        raise BenchError(f"unknown backend(s) {unknown}; choose from {list(ALL_BACKENDS)}")
    out = guard_outputs(out, OUTPUTS, force)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench(arch, extras, arch_path, out, weights, onnx_path, batch_sizes, backends, warmup, iters,
                      min_seconds, threads, quick, seed, skipped)
    finally:
        torch.set_num_threads(saved_threads)


def _bench(arch: Any, extras: dict[str, Any], arch_path: str | Path, out: Path, weights: str | Path | None,
           onnx_path: str | Path | None, batch_sizes: list[int], backends: list[str], warmup: int, iters: int,
           min_seconds: float, threads: int | None, quick: bool, seed: int, skipped: dict[str, str]) -> dict[str, Any]:
    """The measuring part of :func:`bench`, run with the requested thread count."""
    model = HmnasNet(arch.to_dict() | extras).eval()
    weights_note = "random init"
    if weights is not None:
        load_weights(model, weights)
        weights_note = str(weights)
    c, h, w = model.pretrained_cfg["input_size"]
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(max(batch_sizes), c, h, w, generator=gen)

    first_run: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hmnas-bench-") as tmp:
        if onnx_path is not None:
            if weights is None and any(b.startswith("torch-") for b in backends):
                raise BenchError("--onnx needs --weights too, so PyTorch runs the weights the ONNX file holds; "
                                 "pass the model.safetensors it was exported from")
            proto = load_onnx(onnx_path)
            if metadata_of(proto).get("hmnas.architecture") not in (None, json.dumps(arch.to_dict())):
                raise BenchError(f"{onnx_path} was exported from another architecture than {arch_path}; "
                                 "pass the arch.json it was exported from")
            onnx_file = Path(onnx_path)
        elif any(b.startswith("ort-") for b in backends):
            onnx_file = Path(tmp) / "model.onnx"
            t0 = time.perf_counter()
            export_onnx(model, onnx_file, (c, h, w))
            first_run["onnx-export"] = {"seconds": time.perf_counter() - t0}
        else:
            onnx_file = None
        results, errors = _run_all(model, onnx_file, base, backends, batch_sizes, warmup, iters, min_seconds,
                                   threads, first_run)
    env = environment()
    doc = {
        "model": {"arch": str(arch_path), "space": arch.space, "weights": weights_note,
                  "params": sum(p.numel() for p in model.parameters()), "input_size": [c, h, w],
                  "onnx": str(onnx_path) if onnx_path else "exported for this run (opset default)"},
        "settings": {"batch_sizes": batch_sizes, "backends": backends, "warmup": warmup, "iters": iters,
                     "min_seconds": min_seconds, "threads": threads or torch.get_num_threads(), "quick": quick,
                     "input": f"standard-normal tensor, seed {seed}, same for every backend"},
        **env,
        "providers_used": sorted({p for r in results for p in r.get("providers_used", [])}),
        "results": results,
        "first_run": first_run,
        "errors": errors,
        "skipped": skipped,
        "note": "latencies are steady-state after warm-up; first_run holds session creation, engine build "
                "and compilation costs, measured apart",
    }
    write_json(out / "bench.json", doc)
    write_atomic(out / "bench.csv", _csv(results))
    write_atomic(out / "bench.png", _plot(results, env))
    return doc


def _run_all(model: HmnasNet, onnx_file: Path | None, base: torch.Tensor, backends: list[str],
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
