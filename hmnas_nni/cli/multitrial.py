"""``hmnas multitrial``: AG-Net, NASES or NNI's multi-trial strategies with trained trials (accuracy, latency,
params)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING, Any

from .options import json_object

if TYPE_CHECKING:
    from hmnas_nni.experiments.multitrial import MultiTrialPlan
    from hmnas_nni.search.maml_evaluator import FewShot


def add_multitrial_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas multitrial``."""
    from hmnas_nni.experiments.multitrial import STRATEGY_NAMES, MultiTrialPlan

    d = MultiTrialPlan()
    p = sub.add_parser(
        "multitrial", help="multi-trial search with trained trials: AG-Net, NASES, PNAS or NNI's strategies",
        description="Every trial trains one architecture of the space (hmnas retrain's recipe) on half of --subset, "
                    "validates it on the other half and measures its latency in ONNX Runtime; writes trials.json as "
                    "trials finish, then result.json (best, Pareto set) and front.png to --out.")
    add_trial_options(p)
    p.add_argument("--strategy", choices=STRATEGY_NAMES, default=d.strategy)
    p.add_argument("--trials", type=int, default=d.trials, help="trained trials (the query budget)")
    p.add_argument("--latency-cap", type=float, default=None,
                   help="AG-Net: rank architectures over this many ms last; NASES: latency term of the reward")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out (trained trials are reused)")
    p.set_defaults(func=run_multitrial_command)
    add_multitrial_bench_parser(sub)


def add_multitrial_bench_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas multitrial-bench``."""
    from hmnas_nni.experiments.multitrial import STRATEGY_NAMES, MultiTrialPlan

    p = sub.add_parser(
        "multitrial-bench", help="trained trials, side by side: several multi-trial strategies, same budget, seeds",
        description="Run hmnas multitrial for every strategy and seed (same space, data, training and trial budget) "
                    "into --out/runs/, then write results.json, table.md, curves.png (best accuracy against trials) "
                    "and fronts.png (every run's accuracy-latency Pareto set) to --out.")
    add_trial_options(p, seed=False)
    p.add_argument("--strategies", default="agnet,nases,evolution,random,rl",
                   help=f"comma-separated, of: {', '.join(STRATEGY_NAMES)}")
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (0 .. N-1)")
    p.add_argument("--trials", type=int, default=MultiTrialPlan().trials, help="trained trials of every run")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace the results another run left in --out")
    p.add_argument("--resume", action="store_true", help="continue a stopped benchmark in --out (same plan)")
    p.set_defaults(func=run_multitrial_bench_command)


def add_trial_options(p: argparse.ArgumentParser, seed: bool = True) -> None:
    """How each trial's network is built and trained: shared by ``multitrial`` and ``arch-trial``."""
    from hmnas_nni.experiments.multitrial import MultiTrialPlan

    d = MultiTrialPlan()
    p.add_argument("--space", default=d.space, help="project space name or an NNI model space as an import path")
    p.add_argument("--space-args", type=json_object, default=None, help="space arguments as a JSON object")
    p.add_argument("--dataset", default=d.dataset, help="digits, fashion-mnist or cifar10")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--subset", type=int, default=d.subset, help="training images, half to train, half to validate")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs of each trial")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    if seed:
        p.add_argument("--seed", type=int, default=d.seed)
    add_few_shot_options(p)


def add_few_shot_options(p: argparse.ArgumentParser) -> None:
    """What a trial measures (``--evaluator``) and, for few-shot evaluators, the tasks and MAML's loops."""
    from hmnas_nni.experiments.multitrial import EVALUATORS
    from hmnas_nni.search.maml_evaluator import FewShot

    f = FewShot()
    g = p.add_argument_group("few-shot trials (--evaluator maml or classify; --dataset fashion-mnist or a folder)")
    g.add_argument("--evaluator", choices=EVALUATORS, default="train",
                   help="train: ordinary training on --dataset; maml: MAML on few-shot episodes, reporting "
                        "meta-validation and meta-test accuracy; classify: ordinary training on the meta-train "
                        "classes only")
    for name, kind, help_ in (("ways", int, "classes per episode"), ("shots", int, "support images per class"),
                              ("queries", int, "query images per class"),
                              ("val_episodes", int, "meta-validation episodes of each trial"),
                              ("test_episodes", int, "meta-test episodes of each trial (0: none)"),
                              ("images_per_class", int, "images drawn from each original class")):
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(f, name), help=help_)
    for name, kind, help_ in (("inner_steps", int, "MAML inner-loop steps in meta-training"),
                              ("inner_lr", float, "MAML inner-loop learning rate"),
                              ("test_inner_steps", int, "inner-loop steps at meta-validation and meta-test"),
                              ("meta_lr", float, "Adam learning rate of the meta-update"),
                              ("meta_batch", int, "episodes per meta-update"),
                              ("iterations", int, "meta-updates of each trial")):
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(f.maml, name), help=help_)
    g.add_argument("--second-order", action="store_true", help="differentiate through the inner loop")


def few_shot(args: argparse.Namespace) -> FewShot:
    """The few-shot settings of the parsed options."""
    from hmnas_nni.common.maml import MAMLSettings
    from hmnas_nni.search.maml_evaluator import FewShot

    maml = MAMLSettings(inner_steps=args.inner_steps, inner_lr=args.inner_lr, test_inner_steps=args.test_inner_steps,
                        meta_lr=args.meta_lr, meta_batch=args.meta_batch, iterations=args.iterations,
                        first_order=not args.second_order)
    return FewShot(ways=args.ways, shots=args.shots, queries=args.queries, val_episodes=args.val_episodes,
                   test_episodes=args.test_episodes, images_per_class=args.images_per_class, maml=maml)


def _plan(args: argparse.Namespace, **extra: Any) -> MultiTrialPlan:
    """The multi-trial plan of the shared trial options."""
    from hmnas_nni.experiments.multitrial import MultiTrialPlan

    return MultiTrialPlan(space=args.space, space_args=args.space_args, dataset=args.dataset,
                          data_root=args.data_root, subset=args.subset, epochs=args.epochs,
                          batch_size=args.batch_size, trials=args.trials, seed=getattr(args, "seed", 0),
                          evaluator=args.evaluator, few_shot=few_shot(args), **extra)


def run_multitrial_bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark; print its table."""
    from hmnas_nni.experiments.multitrial_benchmark import markdown, run_multitrial_benchmark

    plan = _plan(args)
    command = "hmnas " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_multitrial_benchmark(plan, args.out, [s.strip() for s in args.strategies.split(",")],
                                       seeds=args.seeds, force=args.force, resume=args.resume, command=command,
                                       log=lambda line: print(line, flush=True))
    print(markdown(summary, plan, command))
    return 0


def run_multitrial_command(args: argparse.Namespace) -> int:
    """Run the search; print the best trial and the Pareto set's size."""
    from hmnas_nni.experiments.multitrial import run_multitrial

    plan = _plan(args, strategy=args.strategy, latency_cap=args.latency_cap)
    command = "hmnas " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_multitrial(plan, args.out, force=args.force, resume=args.resume, command=command,
                             log=lambda line: print(line, flush=True))
    best = summary["best"]
    print(f"best of {summary['trials']} trials: accuracy {best['metrics']['accuracy']:.4f}, latency "
          f"{best['metrics']['latency']:.3f} ms ({best['sample']}); Pareto set of {len(summary['pareto'])}")
    return 0
