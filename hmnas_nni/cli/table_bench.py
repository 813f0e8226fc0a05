"""``hmnas table-bench``: AG-Net and NASES against NNI's multi-trial strategies on NAS-Bench-Graph's tables."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_table_bench_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas table-bench``."""
    from hmnas_nni.experiments.table_benchmark import DEFAULT_DATASETS

    p = sub.add_parser(
        "table-bench", help="sample efficiency on NAS-Bench-Graph: AG-Net, NASES and NNI's strategies, many seeds",
        description="Search NAS-Bench-Graph's tables (shipped by the nas-bench-graph package) with every strategy and "
                    "seed, by validation performance; write results.json, table.md, curves.png (test performance of "
                    "the best by validation against queries) and hypervolume.png (the found performance-latency "
                    "front) to --out.")
    p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated NAS-Bench-Graph datasets")
    p.add_argument("--strategies", default=None,
                   help="comma-separated: agnet, agnet-pareto, nases, random, evolution, tpe, rl (default: all)")
    p.add_argument("--seeds", type=int, default=30, help="seeds per strategy and dataset (0 .. N-1)")
    p.add_argument("--queries", type=int, default=300, help="queries per search")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.add_argument("--resume", action="store_true", help="continue a stopped benchmark in --out (same plan)")
    p.set_defaults(func=run_table_bench)


def run_table_bench(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table."""
    from hmnas_nni.experiments.table_benchmark import markdown, run_benchmark

    names = [n.strip() for n in args.strategies.split(",")] if args.strategies else None
    datasets = [d.strip() for d in args.datasets.split(",")]
    command = "hmnas " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_benchmark(args.out, datasets, names, seeds=args.seeds, queries=args.queries, workers=args.workers,
                            force=args.force, resume=args.resume, command=command,
                            log=lambda line: print(line, flush=True))
    plan = {"seeds": args.seeds, "queries": args.queries, "command": command}
    print(markdown(summary, plan))
    return 0
