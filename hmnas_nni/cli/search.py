"""``hmnas search``: one architecture search; its options are generated from SearchConfig."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hmnas_nni.format.errors import interruption_in
from hmnas_nni.search.config import SearchConfig

from .options import add_config_options, given_values

#: Final metrics printed when a search ends.
SHOWN = ("supernet_val_acc", "derived_val_acc", "derivation_gap", "ops_kept", "edges_kept", "params",
         "epoch_seconds", "peak_memory_mb")
#: What a hardware-aware search adds to them.
HARDWARE = ("predicted_ms", "latency", "family")


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmnas search``."""
    p = sub.add_parser("search", help="search a space with HM-NAS or one of NNI's one-shot strategies",
                       description="Run one architecture search through NNI and write arch.json, metrics.json, "
                                   "supernet.safetensors and cells.png to --out.")
    add_config_options(p)
    p.set_defaults(func=run_search_command, advice=search_advice)


def config_from_values(given: dict[str, Any]) -> SearchConfig:
    """The config of the options given; with ``resume`` the others come from that run's checkpoint."""
    from hmnas_nni.search.resume import check_resumable, checkpoint_path, read_checkpoint, saved_config

    values = dict(given)
    if values.get("resume") is not None:
        path = checkpoint_path(values["resume"])
        saved = saved_config(read_checkpoint(path), path)
        values = {**saved, "out": values["resume"], "force": False, **values}
        check_resumable(values, values["resume"])
    return SearchConfig.from_dict(values).validate()


def run_search_command(args: argparse.Namespace) -> int:
    """Run the search; print its final metrics (rank 0)."""
    from hmnas_nni.export.hardware import HardwareExtras
    from hmnas_nni.search.run import run_search

    config = config_from_values(given_values(args))
    args.out_folder = config.out
    result = run_search(config, extras=HardwareExtras())
    if result.final.get("global_rank", 0) != 0:
        return 0  # DDP ranks > 0: rank 0 reports
    print(json.dumps({k: result.final[k] for k in (*SHOWN, *HARDWARE) if k in result.final}, indent=2))
    measured_here = config.latency_table == str(Path(config.out) / "latency_table.json")  # set by run_search
    extra = ", latency_table.json" * measured_here + ", family/" * (config.family is not None)
    print(f"wrote {Path(config.out) / 'arch.json'}, metrics.json, supernet.safetensors, cells.png{extra}")
    return 0


def search_advice(args: argparse.Namespace, error: BaseException) -> str:
    """What to do next after a search stopped by a fault or a signal."""
    from hmnas_nni.nas.lightning import NumericalFault

    out = getattr(args, "out_folder", None)
    if out is None:
        return ""
    last = Path(out) / "checkpoints" / "last.ckpt"
    if isinstance(error, (NumericalFault, OSError)) and last.is_file():
        return f"; the last good checkpoint is {last}, the metrics so far are in {Path(out) / 'metrics.json'}"
    if interruption_in(error) is not None:
        return f"; continue with: hmnas search --resume {out}"
    return ""
