"""``hmnas trial``: one search as an NNI trial (``python3 -m hmnas_nni.cli trial ...`` in nnictl configs).

Options are ``hmnas search``'s (generated from SearchConfig) plus ``--params``; errors are one ``error: ...``
line, which is what NNI's trial log and the web UI show.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hmnas_nni.format.errors import interruption_in

from .options import add_config_options, given_values, json_object


def add_trial_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas trial``."""
    p = sub.add_parser("trial", help="run one search as an NNI trial (a plain search outside NNI)",
                       description="One whole search per NNI trial: NNI's parameters over the options below, "
                                   "metrics reported to NNI after every epoch.")
    p.one_line = True
    add_config_options(p)
    p.add_argument("--params", type=json_object, default=None, metavar="JSON",
                   help="hyper-parameters as a JSON object, applied like NNI's (for runs outside NNI)")
    p.set_defaults(func=run_trial_command, advice=trial_advice, error_prefix="error: ")


def run_trial_command(args: argparse.Namespace) -> int:
    """Build the trial's config (NNI parameters last), run it, print where the architecture is."""
    from hmnas_nni.experiments.trial import run_trial, trial_config

    config = trial_config(given_values(args), args.params or {})
    args.out_folder = config.out
    final = run_trial(config, log=lambda line: print(line, flush=True))
    print(f"architecture: {Path(config.out) / 'arch.json'}", flush=True)
    print("final: " + json.dumps(final), flush=True)
    return 0


def trial_advice(args: argparse.Namespace, error: BaseException) -> str:
    """How to continue a trial that was stopped."""
    out = getattr(args, "out_folder", None)
    return f"; resume with --resume {out}" if out is not None and interruption_in(error) is not None else ""
