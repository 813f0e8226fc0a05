"""``hmnas show``: print a derived architecture's cells, optionally draw them."""

from __future__ import annotations

import argparse

from .options import add_allow_space


def add_show_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas show``."""
    p = sub.add_parser("show", help="print a derived architecture's cells and optionally draw them")
    p.add_argument("arch", help="arch.json written by `hmnas search`")
    add_allow_space(p)
    p.add_argument("--png", default=None, help="also draw the cells to this PNG file")
    p.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    """Validate the architecture against its space, print it, draw it if asked."""
    from hmnas_nni.format.architecture import Architecture
    from hmnas_nni.format.outputs import check_file_output, is_png
    from hmnas_nni.nas.rebuild import check_architecture
    from hmnas_nni.search.plot import describe, plot_architecture

    if args.png:
        check_file_output(args.png, "--png", "PNG image", is_png)
    arch = check_architecture(Architecture.load(args.arch))
    print(describe(arch))
    if args.png:
        print(f"drew {plot_architecture(arch, args.png)}")
    return 0
