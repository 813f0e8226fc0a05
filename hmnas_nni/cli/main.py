"""``hmnas``: search, trial, show, retrain, export, bench, compare, latency and the other commands listed below.

Every subcommand's errors go through one table (:mod:`hmnas_nni.cli.errors`): a known error prints one line
and exits with its status; anything else (a bug) is a traceback. SIGTERM and SIGINT stop a command with
:class:`~hmnas_nni.format.errors.Interrupted`, so its output folder is left as it was.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from .arch_trial import add_arch_trial_parser
from .autometa import add_autometa_parser
from .compare import add_compare_parser
from .controller_similarity import add_controller_similarity_parser
from .errors import classify
from .export import add_bench_parser, add_export_parser, add_retrain_parser
from .instance import add_instance_parser
from .latency import add_latency_parser
from .multitrial import add_multitrial_parser
from .options import CommandParser
from .search import add_search_parser
from .show import add_show_parser
from .table_bench import add_table_bench_parser
from .trial import add_trial_parser

COMMANDS = (add_search_parser, add_trial_parser, add_show_parser, add_retrain_parser, add_export_parser,
            add_bench_parser, add_compare_parser, add_latency_parser, add_table_bench_parser,
            add_multitrial_parser, add_arch_trial_parser, add_controller_similarity_parser, add_autometa_parser,
            add_instance_parser)


class _DropNoise(logging.Filter):
    """NNI repeats that a one-shot run ignores the training service; say nothing about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be ignored for sequential execution engine" not in record.getMessage()


def configure_logging(verbose: bool) -> None:
    """Our messages to stderr (NNI and Lightning keep their own handlers)."""
    logger = logging.getLogger("hmnas_nni")
    if not any(getattr(h, "hmnas", False) for h in logger.handlers):  # once per process, however often main runs
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hmnas] %(levelname)s %(message)s"))
        handler.hmnas = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    logging.getLogger("nni.nas.experiment.config.experiment").addFilter(_DropNoise())


def build_parser() -> argparse.ArgumentParser:
    """The ``hmnas`` parser with every subcommand."""
    parser = CommandParser(prog="hmnas", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for every error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for add in COMMANDS:
        add(sub)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM / SIGINT outside a search's own handling: stop now, cleanly."""
    from hmnas_nni.format.errors import Interrupted

    raise Interrupted(signum)


def _allow_spaces(args: argparse.Namespace) -> None:
    """The spaces named with ``--allow-space``: the user trusts them in the documents this command reads."""
    from hmnas_nni.spaces.registry import register_space

    for name in getattr(args, "allow_space", None) or ():
        register_space(name)


def main(argv: list[str] | None = None) -> int:
    """Run one ``hmnas`` command; its exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (or the help)
        return e.code if isinstance(e.code, int) else 2
    configure_logging(args.verbose)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        _allow_spaces(args)
        return int(args.func(args) or 0)
    except BaseException as e:  # noqa: BLE001 - sorted by the one table; anything unknown is re-raised
        known = classify(e)
        if known is None or args.verbose:
            raise
        status, label, message = known
        advice = args.advice(args, e) if getattr(args, "advice", None) else ""
        prefix = getattr(args, "error_prefix", None) or f"hmnas {args.command}: "
        label = "" if prefix == "error: " and label == "error: " else label
        print(f"{prefix}{label}{message}{advice}", file=sys.stderr, flush=True)
        return status
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
