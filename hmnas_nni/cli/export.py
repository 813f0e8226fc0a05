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
    p.add_argument("arch", help="architecture JSON")
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


def kept_advice(args: argparse.Namespace, error: BaseException) -> str:
    """After an interrupted or failed run: the output folder keeps what it held."""
    from hmnas_nni.export.onnx_export import ParityFailed
    from hmnas_nni.format.outputs import results_in

    if isinstance(error, ParityFailed) or not results_in(Path(args.out)):
        return ""
    return f"; {args.out} keeps the results it held before"
