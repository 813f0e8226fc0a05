"""``hmnas``: search, show, and (from the export package) retrain, export and benchmark derived networks."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from hmnas_nni.format.architecture import Architecture, ArchitectureError

#: Exit status of a search stopped by a non-finite loss or architecture parameter (bad input exits 2).
EXIT_NUMERICAL_FAULT = 3


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    from hmnas_nni.search.data import DATASETS
    from hmnas_nni.search.run import DISTRIBUTED, STRATEGIES, SearchConfig
    from hmnas_nni.spaces import SPACES

    d = SearchConfig()
    p = sub.add_parser("search", help="search a space with HM-NAS or one of NNI's one-shot strategies",
                       description="Run one architecture search through NNI and write arch.json, metrics.json, "
                                   "supernet.safetensors and cells.png to --out.")
    p.add_argument("--space", default=d.space, help=f"one of {sorted(SPACES)}, or an NNI model space as an import "
                   "path (nni.nas.hub.pytorch.NasBench201, my_module:MySpace)")
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--subset", type=int, default=None, help="use N training images (half weights, half architecture)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="output folder (default runs/<space>-<dataset>-<strategy>)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", dest="learning_rate", type=float, default=d.learning_rate, help="weight learning rate")
    p.add_argument("--space-args", type=json_object, default={}, help='JSON, e.g. \'{"channels": 16}\'')
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    g = p.add_argument_group("architecture search knobs")
    g.add_argument("--arc-lr", type=float, default=d.arc_lr, help="learning rate of alpha/beta")
    g.add_argument("--warmup-epochs", type=int, default=None, help="weights-only epochs (default: a quarter)")
    g.add_argument("--arch-epochs", type=int, default=None, help="HM-NAS: alpha/beta epochs before masking")
    g.add_argument("--tau", type=float, default=d.tau, help="HM-NAS mask threshold")
    g.add_argument("--mask-init", type=float, default=d.mask_init, help="HM-NAS initial mask score")
    g.add_argument("--mask-lr", type=float, default=d.mask_lr, help="HM-NAS mask score learning rate")
    g.add_argument("--sparsity", type=float, default=d.sparsity, help="HM-NAS sparsity weight lambda")
    g.add_argument("--accelerator", default=d.accelerator)
    g.add_argument("--devices", type=int, default=d.devices, help="devices (processes under --distributed ddp)")
    g.add_argument("--distributed", choices=DISTRIBUTED, default=d.distributed,
                   help="Lightning strategy over --devices: auto (one process) or ddp (one supernet, N processes)")
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="data-loading worker processes")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the search whose --out was DIR from DIR/checkpoints/last.ckpt (options not given "
                        "here are taken from that run; results go to --out, default DIR)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_search_command)
    p.set_defaults(_search_parser=p)


def json_object(text: str) -> dict:
    """``--space-args``: a JSON object (parsed as data with ``json.loads``, never evaluated)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}); write a JSON object "
                                         'such as \'{"channels": 16}\'') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"channels\": 16}}', "
                                         f"got {type(value).__name__} {text!r}")
    return value


def _given_options(args: argparse.Namespace) -> set[str]:
    """Destinations set on the command line (not defaults): re-parse argv with every default suppressed."""
    parser: argparse.ArgumentParser | None = getattr(args, "_search_parser", None)
    argv = getattr(args, "_argv", None)
    if parser is None or argv is None:
        return set()
    probe = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help",):
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if isinstance(action, argparse._StoreFalseAction | argparse._StoreTrueAction):
                kwargs["action"] = "store_const"
                kwargs["const"] = action.const
            else:
                kwargs["nargs"] = action.nargs
            probe.add_argument(*action.option_strings, **kwargs)
    known, _ = probe.parse_known_args(argv)
    return set(vars(known))


def config_from_args(args: argparse.Namespace):
    """The SearchConfig of ``hmnas search``; with ``--resume DIR`` options not on the command line come from DIR."""
    from hmnas_nni.search.reliability import check_resumable, checkpoint_path, read_checkpoint, saved_config
    from hmnas_nni.search.run import SearchConfig

    values = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose") and not k.startswith("_")}
    if values.get("resume") is not None:
        path = checkpoint_path(values["resume"])
        saved = saved_config(read_checkpoint(path), path)
        given = _given_options(args)
        values = {**saved, **{k: v for k, v in values.items() if k in given}, "resume": values["resume"]}
        if "out" not in given:
            values["out"] = values["resume"]
        check_resumable(values, values["resume"])
    if values.get("out") is None:
        values["out"] = f"runs/{values['space']}-{values['dataset']}-{values['strategy']}"
    return SearchConfig.from_dict(values).validate()


def run_search_command(args: argparse.Namespace) -> int:
    from hmnas_nni.nas.lightning import NumericalFault
    from hmnas_nni.search.reliability import SearchInterrupted
    from hmnas_nni.search.run import run_search

    config = config_from_args(args)
    try:
        final = run_search(config)
    except NumericalFault as e:
        print(f"hmnas search: numerical fault: {e}; the last good checkpoint is {Path(config.out)}/checkpoints/"
              f"last.ckpt, the metrics so far are in {Path(config.out) / 'metrics.json'}", file=sys.stderr)
        return EXIT_NUMERICAL_FAULT
    except SearchInterrupted as e:
        print(f"hmnas search: {e}; continue with: hmnas search --resume {config.out}", file=sys.stderr)
        return 128 + e.signum
    if final.get("global_rank", 0) != 0:
        return 0  # DDP ranks > 0: rank 0 reports
    keys = ("supernet_val_acc", "derived_val_acc", "derivation_gap", "ops_kept", "edges_kept", "params",
            "epoch_seconds", "peak_memory_mb")
    print(json.dumps({k: final[k] for k in keys}, indent=2))
    print(f"wrote {Path(config.out) / 'arch.json'}, metrics.json, supernet.safetensors, cells.png")
    return 0


def add_show_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a derived architecture's cells and optionally draw them")
    p.add_argument("arch", help="arch.json written by `hmnas search`")
    p.add_argument("--png", default=None, help="also draw the cells to this PNG file")
    p.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from hmnas_nni.nas.rebuild import space_of
    from hmnas_nni.search.plot import describe, plot_architecture
    from hmnas_nni.spaces import catalogue

    arch = Architecture.load(args.arch)
    cat = catalogue(space_of(arch))
    arch.validate(cat)
    print(describe(arch))
    if args.png:
        print(f"drew {plot_architecture(arch, args.png, cat)}")
    return 0


# Subcommands that live in other modules: (module, add-parser function).
EXTRA_COMMANDS = (
    ("hmnas_nni.experiments.trial", "add_trial_parser"),
    ("hmnas_nni.export.cli", "add_retrain_parser"),
    ("hmnas_nni.export.cli", "add_export_parser"),
    ("hmnas_nni.export.cli", "add_bench_parser"),
    ("hmnas_nni.experiments.compare", "add_compare_parser"),
)


class _DropNoise(logging.Filter):
    """NNI repeats that a one-shot run ignores the training service; say nothing about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be ignored for sequential execution engine" not in record.getMessage()


def configure_logging(verbose: bool) -> None:
    """Our messages to stderr (NNI and Lightning keep their own handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[hmnas] %(levelname)s %(message)s"))
    logger = logging.getLogger("hmnas_nni")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    logging.getLogger("nni.nas.experiment.config.experiment").addFilter(_DropNoise())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmnas", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_search_parser(sub)
    add_show_parser(sub)
    for module, func in EXTRA_COMMANDS:
        try:
            add = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError):
            continue
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ArchitectureError, ValueError, FileNotFoundError, TypeError) as e:
        if args.verbose:
            raise
        print(f"hmnas {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
