"""``hmnas retrain``, ``hmnas export`` and ``hmnas bench``: the way from an architecture to a deployed network."""

from __future__ import annotations

import argparse
from pathlib import Path

from hmnas_nni.format.errors import UsageError

from .options import add_allow_space


def add_retrain_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas retrain``."""
    p = sub.add_parser(
        "retrain", help="train a derived architecture and report held-out test accuracy",
        description="Train the derived network of ARCH from scratch (or fine-tune it from a searched supernet), "
                    "report its accuracy on the dataset's held-out test set, write model.safetensors and metrics.json.",
    )
    p.add_argument("arch", help="architecture JSON written by `hmnas search`")
    add_allow_space(p)
    p.add_argument("--dataset", required=True, help="digits, fashion-mnist or cifar10")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files (see `hmnas_nni.search.data`)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (0 only evaluates; default 10)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--from-supernet", default=None, metavar="DIR",
                   help="search output folder (arch.json + supernet weights): inherit its weights, then fine-tune")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.05 SGD / 2e-3 AdamW)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--weight-decay", type=float, default=3e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="train on the first N training images only (quick runs; recorded in metrics.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.set_defaults(func=run_retrain)


def run_retrain(args: argparse.Namespace) -> int:
    """Train; print the held-out test accuracy."""
    from hmnas_nni.export.retrain import retrain

    metrics = retrain(
        arch_path=args.arch, dataset=args.dataset, epochs=args.epochs, out=args.out,
        from_supernet=args.from_supernet, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, limit_train=args.limit_train,
        seed=args.seed, device=args.device, data_root=args.data_root, progress=not args.no_progress,
        force=args.force,
    )
    print(f"test accuracy {metrics['test_accuracy']:.4f} on {metrics['test_images']} held-out images "
          f"({metrics['dataset']}, {metrics['epochs']} epochs) -> {Path(args.out) / 'model.safetensors'}")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas export``."""
    from hmnas_nni.export.onnx_export import DEFAULT_OPSET, FP32_TOL

    p = sub.add_parser(
        "export", help="export a trained architecture to ONNX and check parity with PyTorch",
        description="Write DIR/model.onnx (dynamic batch, metadata) and DIR/parity.json: ONNX Runtime vs PyTorch "
                    f"on random and real inputs (fp32 max abs diff <= {FP32_TOL:g}).",
    )
    p.add_argument("arch", help="architecture JSON (the arch.json beside the weights, from `hmnas retrain`)")
    add_allow_space(p)
    p.add_argument("--weights", required=True, help="model.safetensors written by `hmnas retrain`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, 18 or newer (default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="also write model_fp16.onnx (half precision) and check it")
    p.add_argument("--dataset", default=None, help="dataset for real-input parity (default: the arch's dataset)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--real-images", type=int, default=256, help="test images used for real-input parity")
    p.add_argument("--random-images", type=int, default=16, help="random images used for parity")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.set_defaults(func=run_export, advice=kept_advice)


def run_export(args: argparse.Namespace) -> int:
    """Export and check; a failed parity check exits 1 (see ``hmnas_nni.cli.errors``)."""
    from hmnas_nni.export.onnx_export import ParityFailed, export_checked

    report = export_checked(args.arch, args.weights, args.out, opset=args.opset, fp16=args.fp16,
                            dataset=args.dataset, data_root=args.data_root, real_images=args.real_images,
                            random_images=args.random_images, force=args.force)
    for m in report["models"]:
        worst = max(v["max_abs_diff"] for v in m["parity"].values())
        print(f"{m['file']}: max abs diff {worst:.3g} (tolerance {m['tolerance']:.3g}) "
              f"{'ok' if m['passed'] else 'FAILED'}")
    if not report["passed"]:
        raise ParityFailed(f"parity check failed; see {Path(args.out) / 'parity.json'}")
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas bench``."""
    from hmnas_nni.export.bench import ALL_BACKENDS

    p = sub.add_parser(
        "bench", help="latency/throughput across ONNX Runtime providers, PyTorch eager and torch.compile",
        description="Benchmark one architecture (random or trained weights) on every usable runtime; "
                    "write bench.json, bench.csv and bench.png.",
    )
    p.add_argument("arch", help="architecture JSON, or an instance-aware model folder (`hmnas instance` --out or its "
                                "model/): then batch 1 over the test set and batched serving, in ONNX Runtime")
    add_allow_space(p)
    p.add_argument("--weights", default=None, help="model.safetensors (default: random weights; speed is the same)")
    p.add_argument("--onnx", default=None, help="the model.onnx `hmnas export` wrote for ARCH (default: export now)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,64,256; --quick: 1,8)")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated subset of {','.join(ALL_BACKENDS)} (default: all usable here; "
                        "--quick leaves out torch-compile unless named)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per backend and batch (default 10)")
    p.add_argument("--iters", type=int, default=None, help="timed runs per backend and batch, >= 1 (default 50)")
    p.add_argument("--min-seconds", type=float, default=None, help="keep timing until this long (default 1.0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ORT (default: all cores)")
    p.add_argument("--quick", action="store_true", help="short run for tests: batches 1,8, 3 warmup, 10 iters")
    p.add_argument("--images", type=int, default=None,
                   help="instance-aware model only: test images to measure on (default: the whole test set)")
    p.add_argument("--data-root", default=None, help="instance-aware model only: folder holding the dataset files")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.set_defaults(func=run_bench, advice=kept_advice)


def run_bench(args: argparse.Namespace) -> int:
    """Benchmark; print a short table."""
    from hmnas_nni.export.bench import OUTPUTS, bench

    try:
        batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    except ValueError:
        raise UsageError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    if Path(args.arch).is_dir():
        return run_instance_bench(args, batches, backends)
    if args.images is not None or args.data_root is not None:
        raise UsageError("--images and --data-root are for an instance-aware model folder; leave them out for "
                         "an architecture JSON")
    result = bench(args.arch, args.out, weights=args.weights, onnx_path=args.onnx, batch_sizes=batches,
                   backends=backends, warmup=args.warmup, iters=args.iters, min_seconds=args.min_seconds,
                   threads=args.threads, quick=args.quick, force=args.force)
    for r in result["results"]:
        print(f"{r['backend']:>15} batch {r['batch']:>4}: p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms  "
              f"{r['throughput_ips']:10.1f} img/s")
    for b, err in result["errors"].items():
        print(f"{b:>15}: not measured: {err}")
    print(f"wrote {', '.join(str(Path(args.out) / n) for n in OUTPUTS)}")
    return 0


def run_instance_bench(args: argparse.Namespace, batches: list[int] | None, backends: list[str] | None) -> int:
    """``hmnas bench FOLDER`` of an instance-aware model: batch 1 per image and batched serving; a short table."""
    from hmnas_nni.export.instance_run import bench_instance_model

    unused = [f for f, v in (("--weights", args.weights), ("--onnx", args.onnx), ("--warmup", args.warmup),
                             ("--iters", args.iters), ("--min-seconds", args.min_seconds)) if v is not None]
    if unused or (backends is not None and len(backends) != 1):
        raise UsageError(f"{', '.join(unused) or '--backends with several names'}: an instance-aware model folder "
                         "holds its own weights and ONNX files and is timed once per test image or batch; leave "
                         "them out (--backends takes one of ort-cpu, ort-cuda)")
    if args.quick and batches is None:
        batches = [1, 8]
    doc = bench_instance_model(args.arch, args.out, batch_sizes=batches, images=args.images,
                               threads=args.threads, backend=backends[0] if backends else "ort-cpu",
                               data_root=args.data_root, force=args.force)
    one = doc["batch_1"]
    print(f"batch 1: instance-aware {one['instance']['accuracy']:.4f} at {one['instance']['mean_ms']:.3f} ms "
          f"(controller {one['controller']['mean_ms']:.3f} ms); best member {one['best_member']}: "
          f"{one['accuracy_drop_points']:+.2f} points drop at {one['latency_ratio']:.2f}x its latency")
    for r in doc["batched"]:
        best = max(r["members"], key=lambda m: m["accuracy"])
        print(f"batch {r['batch']:>4}: instance-aware {r['instance']['throughput_ips']:9.1f} img/s "
              f"({r['instance']['member_calls_per_batch']:.1f} member calls per batch); member {best['member']} "
              f"alone {best['throughput_ips']:9.1f} img/s")
    print(f"wrote {Path(args.out) / 'bench.json'}, batched.png, front.png, choices.png, examples.png")
    return 0


def kept_advice(args: argparse.Namespace, error: BaseException) -> str:
    """After an interrupted or failed run: the output folder keeps what it held."""
    from hmnas_nni.export.onnx_export import ParityFailed
    from hmnas_nni.format.outputs import results_in

    if isinstance(error, ParityFailed) or not results_in(Path(args.out)):
        return ""
    return f"; {args.out} keeps the results it held before"
