"""``hmnas latency``: measure a space's latency table (every candidate in ONNX Runtime) for later searches."""

from __future__ import annotations

import argparse
import json

from .options import json_object


def add_latency_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas latency``."""
    p = sub.add_parser(
        "latency", help="measure the latency table of a search space on this machine (ONNX Runtime)",
        description="Time every candidate of the space as an HM-NAS supernet (ops, inputs, width/kernel steps, "
                    "optional blocks) at the input shape the dataset gives it, and write the table to --out. "
                    "`hmnas search --latency-table FILE` reads it; a table measured for another space, shape, "
                    "runtime or device is refused there.")
    p.add_argument("--space", default="nb201", help="project space name or an NNI model space as an import path")
    p.add_argument("--space-args", type=json_object, default=None, help="space arguments as a JSON object")
    p.add_argument("--dataset", default="digits", help="dataset whose images set the input shape and classes")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--device", dest="provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="ONNX Runtime execution provider to measure on (cuda/tensorrt need a GPU here)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--batch", type=int, default=1, help="batch size the networks will serve")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds (median over rounds)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="ONNX exporter (dynamo: as `hmnas export` writes networks; torchscript: faster to export)")
    p.add_argument("--out", required=True, help="the table's JSON file (read back if it already matches)")
    p.set_defaults(func=run_latency_command)


def run_latency_command(args: argparse.Namespace) -> int:
    """Measure (or read back) the table; print its summary."""
    import torch

    from hmnas_nni.export.latency import Runtime, Timer, latency_table_for, traced_supernet
    from hmnas_nni.format.errors import UsageError
    from hmnas_nni.search.config import SearchConfig
    from hmnas_nni.search.inputs import search_inputs

    for option, value in (("--batch", args.batch), ("--repeats", args.repeats), ("--threads", args.threads)):
        if value < 1:
            raise UsageError(f"{option} must be an integer >= 1, got {value}")
    config = SearchConfig(space=args.space, space_args=args.space_args or {}, dataset=args.dataset,
                          data_root=args.data_root, batch_size=1, out=".").validate()
    inputs = search_inputs(config)  # the space exactly as `hmnas search` builds it from this dataset
    shape = list(inputs.space.hmnas_input_shape)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    supernet, strategy = traced_supernet(inputs.space, shape)
    timer = Timer(Runtime(args.provider, args.threads, args.exporter), repeats=args.repeats)
    table = latency_table_for(supernet, strategy.hierarchy, shape, args.out, args.batch, timer=timer)
    print(json.dumps({"table": args.out, "space": table.space, "input_shape": table.input_shape,
                      "batch": table.batch, "candidates": len(table.costs), "base_ms": table.base_ms,
                      "scale": table.scale, "runtime": table.runtime, "device": table.device}, indent=2))
    return 0
