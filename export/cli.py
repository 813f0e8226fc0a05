"""The ``hmnas retrain``, ``hmnas export`` and ``hmnas bench`` subcommands, for ``hmnas_nni.cli`` to register.

Each ``add_<cmd>_parser(subparsers)`` adds its subparser and sets ``func`` to ``run_<cmd>(args) -> int``.
"""

from __future__ import annotations

from .bench import add_bench_parser, run_bench
from .onnx_export import add_export_parser, run_export
from .retrain import add_retrain_parser, run_retrain

__all__ = ["add_retrain_parser", "run_retrain", "add_export_parser", "run_export", "add_bench_parser", "run_bench"]
