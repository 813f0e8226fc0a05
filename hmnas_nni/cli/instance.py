"""``hmnas instance``: InstaNAS on an HM-NAS search: a per-image choice of family member, trained and measured."""

from __future__ import annotations

import argparse
import json


def add_instance_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas instance``."""
    p = sub.add_parser(
        "instance", help="train an InstaNAS controller that picks a family member per image (docs/instanas.md)",
        description="Restore an `hmnas search --family K` folder, train a controller that chooses one member of the "
                    "family per image (REINFORCE: correctness against measured latency) while fine-tuning the shared "
                    "weights under sampled choices, then write the deployable model (PyTorch and ONNX with a "
                    "dispatcher), its parity check, a batch-1 ONNX Runtime bench over the test set and figures.")
    p.add_argument("--search", required=True, help="the --out folder of `hmnas search --family K` (K >= 2)")
    p.add_argument("--out", required=True, help="folder for the model, bench and figures")
    p.add_argument("--epochs", type=int, default=3, help="epochs of fine-tuning + policy updates")
    p.add_argument("--latency-weight", type=float, default=0.5,
                   help="lambda in [0, 1]: a correct answer earns 1 - lambda * ms / ms_max")
    p.add_argument("--penalty", type=float, default=1.0, help="what a wrong answer costs (any member)")
    p.add_argument("--entropy", type=float, default=0.1, help="entropy bonus of the policy")
    p.add_argument("--policy-passes", type=int, default=10, help="policy-update passes over the architecture half "
                                                                 "per epoch")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="Adam learning rate of the shared weights (0: "
                                                                   "no fine-tuning)")
    p.add_argument("--controller-size", type=int, default=None,
                   help="side of the pooled image the controller reads (default: the largest divisor of the image "
                        "side up to 8)")
    p.add_argument("--bench-images", type=int, default=None, help="test images to bench (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace another run's results in --out as a whole")
    p.set_defaults(func=run_instance_command)


def run_instance_command(args: argparse.Namespace) -> int:
    """Train, export, check and measure; print the headline figures."""
    from hmnas_nni.export.instance_run import train_instance_aware

    settings = {"penalty": args.penalty, "entropy": args.entropy, "policy_passes": args.policy_passes,
                "finetune_lr": args.finetune_lr}
    if args.controller_size is not None:
        settings["controller_size"] = args.controller_size
    record = train_instance_aware(args.search, args.out, epochs=args.epochs, latency_weight=args.latency_weight,
                                  seed=args.seed, resume=args.resume, force=args.force, data_root=args.data_root,
                                  bench_images=args.bench_images, log=print, **settings)
    test = record["test"]
    shown = {"instance": {k: test["instance"][k] for k in ("accuracy", "mean_ms", "p90_ms", "choice_counts")},
             "controller_ms": test["controller"]["mean_ms"],
             "members": [{k: m[k] for k in ("member", "accuracy", "mean_ms", "p90_ms")} for m in test["members"]],
             "accuracy_drop_points": test["accuracy_drop_points"], "latency_ratio": test["latency_ratio"],
             "goal_met": test["goal_met"]}
    print(json.dumps(shown, indent=2))
    return 0
