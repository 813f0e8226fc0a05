"""``hmnas autometa-bench``: architectures searched for MAML against Conv-4 and an ordinary search's, few-shot."""

from __future__ import annotations

import argparse
import shlex
import sys

from .multitrial import _plan, add_trial_options


def add_autometa_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas autometa-bench``."""
    p = sub.add_parser(
        "autometa-bench", help="Auto-Meta: searched meta-learners against Conv-4 and an ordinary search, few-shot",
        description="Search the meta-cells space with MAML trials (each of --strategies) and with ordinary "
                    "training on the meta-train classes (--ordinary), same budget, into --out/searches/; then "
                    "meta-train Conv-4 and every search's best afresh with the same MAML settings for each of "
                    "--final-shots, meta-test them on 600+ fixed episodes of Fashion-MNIST's meta-test classes and of "
                    "digits, and write results.json, table.md and accuracy.png to --out.")
    add_trial_options(p)
    p.set_defaults(space="meta-cells", evaluator="maml")
    p.add_argument("--trials", type=int, default=16, help="trials of every search")
    p.add_argument("--strategies", default="pnas,random", help="comma-separated strategies searched with MAML")
    p.add_argument("--ordinary", default="pnas", help="strategy of the ordinary (non-meta) search")
    p.add_argument("--final-shots", default="1,5", help="comma-separated shot counts of the final evaluation")
    p.add_argument("--final-iterations", type=int, default=300, help="meta-updates of the final meta-training")
    p.add_argument("--final-meta-batch", type=int, default=4, help="episodes per meta-update, final meta-training")
    p.add_argument("--final-test-episodes", type=int, default=600, help="meta-test episodes per pool and setting")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.add_argument("--resume", action="store_true", help="continue a stopped benchmark in --out (same plan)")
    p.set_defaults(func=run_autometa_command)


def run_autometa_command(args: argparse.Namespace) -> int:
    """Run the comparison; print its table."""
    import dataclasses

    from hmnas_nni.experiments.autometa import FinalEvaluation, markdown, run_autometa_benchmark

    plan = _plan(args)
    maml = dataclasses.replace(plan.few_shot.maml, iterations=args.final_iterations, meta_batch=args.final_meta_batch)
    final = FinalEvaluation(shots=[_int(s, "--final-shots") for s in args.final_shots.split(",")],
                            test_episodes=args.final_test_episodes, maml=maml)
    command = "hmnas " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_autometa_benchmark(plan, args.out, [s.strip() for s in args.strategies.split(",")],
                                     ordinary=args.ordinary.strip(), final=final, force=args.force,
                                     resume=args.resume, command=command, log=lambda line: print(line, flush=True))
    print(markdown(summary))
    return 0


def _int(text: str, option: str) -> int:
    """An integer of a comma-separated option, or a one-line error naming the option."""
    from hmnas_nni.format.errors import UsageError

    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, got {text!r}") from None
