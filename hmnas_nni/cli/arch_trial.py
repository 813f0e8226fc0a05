"""``hmnas arch-trial``: train one architecture of a space as an NNI trial (what ``experiments/agnet.yml`` runs)."""

from __future__ import annotations

import argparse
import json

from .multitrial import add_trial_options, few_shot
from .options import json_object


def add_arch_trial_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas arch-trial``."""
    p = sub.add_parser("arch-trial", help="train one architecture of a space as an NNI trial (multi-trial tuners)",
                       description="Under nnictl the sample comes from the tuner (nni.get_next_parameter); outside "
                                   "NNI pass it with --sample. Reports accuracy, latency and params.")
    p.one_line = True
    add_trial_options(p)
    p.add_argument("--sample", type=json_object, default=None, help="the architecture {label: value} outside NNI")
    p.add_argument("--out", default=None, help="output folder outside NNI (NNI's trial folder under NNI)")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.set_defaults(func=run_arch_trial_command, error_prefix="error: ")


def run_arch_trial_command(args: argparse.Namespace) -> int:
    """Train and report; print the metrics."""
    from hmnas_nni.experiments.arch_trial import run_arch_trial
    from hmnas_nni.experiments.multitrial import MultiTrialPlan

    plan = MultiTrialPlan(space=args.space, space_args=args.space_args, dataset=args.dataset,
                          data_root=args.data_root, subset=args.subset, epochs=args.epochs,
                          batch_size=args.batch_size, seed=args.seed, evaluator=args.evaluator,
                          few_shot=few_shot(args))
    metrics = run_arch_trial(plan, args.sample, args.out, args.force)
    print("final: " + json.dumps(metrics), flush=True)
    return 0
