"""``hmnas controller-similarity``: how far a trained ENAS controller's hidden states track graph similarity."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_controller_similarity_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas controller-similarity``."""
    from hmnas_nni.experiments.controller_similarity import CONTROLLED, MIN_SAMPLES

    p = sub.add_parser(
        "controller-similarity",
        help="correlate an ENAS controller's hidden-state distances with the edit distances of what it samples",
        description="Restore the controller of every finished enas / enas-memory search given (a search folder, or "
                    "the runs of an `hmnas compare` folder), sample architectures from it and from an untrained "
                    "controller, and correlate hidden-state distance with edit distance over the pairs; write "
                    "controller_similarity.json and controller_similarity.png to --out.")
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="search or `hmnas compare` output folders")
    p.add_argument("--strategies", default=",".join(CONTROLLED),
                   help=f"comma-separated: which of {','.join(CONTROLLED)} to measure in a compare folder")
    p.add_argument("--samples", type=int, default=200,
                   help=f"architectures drawn from each controller (at least {MIN_SAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files (default: the search's)")
    p.add_argument("--out", default=None, help="output folder (default runs/controller-similarity)")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.set_defaults(func=run_controller_similarity)


def run_controller_similarity(args: argparse.Namespace) -> int:
    """Check every input, then measure and write."""
    from hmnas_nni.experiments.controller_similarity import make_plan, run_similarity

    command = "hmnas " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    plan = make_plan(args.folders, strategies=args.strategies, samples=args.samples, seed=args.seed,
                     data_root=args.data_root, out=args.out, force=args.force, command=command)
    return run_similarity(plan, log=lambda line: print(line, flush=True))
