"""``hmnas compare``: HM-NAS beside NNI's one-shot strategies on one space, data split, seed set and budget."""

from __future__ import annotations

import argparse
import sys

from .options import json_object


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas compare``."""
    from hmnas_nni.experiments.compare import ALL_STRATEGIES, BUDGETS

    p = sub.add_parser(
        "compare", help="benchmark HM-NAS against NNI's one-shot strategies on one space, data split and budget",
        description="Every (strategy, seed) search in its own process; writes results.json, results.csv, table.md "
                    "and two plots to --out.")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="tiny",
                   help="tiny: digits CI smoke; cpu: Fashion-MNIST on nb201 for 2 cores; gpu: DARTS space on one GPU")
    p.add_argument("--space", default=None, help="override the budget's search space (nb201, darts, mobile)")
    p.add_argument("--strategies", default=",".join(ALL_STRATEGIES),
                   help=f"comma-separated subset of {','.join(ALL_STRATEGIES)}, or nasib (with --time-budget)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the budget's)")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's search epochs")
    p.add_argument("--subset", type=int, default=None, help="override the budget's training images (half each)")
    p.add_argument("--batch-size", type=int, default=None, help="override the budget's batch size")
    p.add_argument("--space-args", type=json_object, default=None, help="JSON object replacing the budget's space args")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="stop every search at this wall-clock budget (90s, 4m, 1h), as `hmnas search --budget`; "
                        "needed by --strategies nasib; give --epochs large enough not to stop them first")
    p.add_argument("--retrain", type=int, default=0, metavar="EPOCHS",
                   help="also retrain every derived network from scratch for EPOCHS and report test accuracy")
    p.add_argument("--retrain-limit", type=int, default=None,
                   help="training images for --retrain (default: the budget's; 0 = the whole training set)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per search process (default: the budget's; 1 is steadier on a busy machine)")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip the ONNX Runtime latency")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator for the searches (auto, cpu, gpu)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<budget>)")
    p.add_argument("--force", action="store_true", help="replace the results another comparison left in --out")
    p.set_defaults(func=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    """Plan (every option checked), then run; 1 when a search failed."""
    from hmnas_nni.experiments.compare import make_plan, run_compare

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose", "advice")}
    plan = make_plan(**options, command=" ".join(["hmnas", *sys.argv[1:]]))
    return run_compare(plan, log=lambda line: print(line, flush=True))
