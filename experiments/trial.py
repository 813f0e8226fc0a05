"""NNI trial entry point: one whole architecture search per trial, reported to NNI's web UI every epoch.

Under ``nnictl`` each trial reads its hyper-parameters with :func:`nni.get_next_parameter` (merged over
the :class:`~hmnas_nni.search.SearchConfig` defaults and the command-line arguments), runs
:func:`~hmnas_nni.search.run_search` into the trial's output directory (``NNI_OUTPUT_DIR``), and reports a
dict metric per search epoch plus a final one. Outside NNI it is a plain ``hmnas search``.

NNI metric values are numbers (the web UI's metric pickers offer every key of a dict metric, so a
string value would break its charts); the search phase is therefore reported as ``phase`` = its
index in :data:`PHASES`, and its name is printed in the trial log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Phase names of ``run_search``'s epoch metrics; the ``phase`` metric is the index here. HM-NAS goes through
#: the first three (its Lightning module's phases); NNI's strategies report ``warmup`` then ``search``.
PHASES: tuple[str, ...] = ("warmup", "architecture", "masking", "search")
#: Epoch-metric keys reported to NNI besides ``default`` (= ``derived_val_acc``), ``epoch`` and ``phase``.
EPOCH_KEYS: tuple[str, ...] = ("supernet_val_acc", "derived_val_acc", "derivation_gap", "ops_kept", "edges_kept",
                               "sparsity")
#: Extra keys of the final metric.
FINAL_KEYS: tuple[str, ...] = ("params", "epoch_seconds", "peak_memory_mb")
#: Exit code for input that is rejected before the search starts.
EXIT_BAD_INPUT = 2


class TrialInputError(ValueError):
    """A hyper-parameter or argument that does not fit :class:`SearchConfig`; one line says what."""


# --------------------------------------------------------------------------------------------- parameters
def _config_type() -> type:
    """``SearchConfig``, imported on first use so this module loads without the search stack."""
    from hmnas_nni.search.run import SearchConfig

    return SearchConfig


def _field_hints() -> dict[str, Any]:
    """``SearchConfig`` field name -> resolved type hint."""
    cls = _config_type()
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a CLI string or an NNI value to the field's type, or raise :class:`TrialInputError`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if len(options) < len(typing.get_args(hint)):
                return None
        errors = []
        for option in options:
            try:
                return _coerce(name, value, option)
            except TrialInputError as exc:
                errors.append(str(exc))
        raise TrialInputError(errors[0] if errors else f"{name}={value!r} has an unsupported type")
    target = origin or hint
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes"):
                return True
            if str(value).lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if target is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if target is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if target is dict:
            parsed = json.loads(value) if isinstance(value, str) else value
            if not isinstance(parsed, dict):
                raise ValueError
            return parsed
    except (TypeError, ValueError):
        kind = getattr(target, "__name__", str(target))
        raise TrialInputError(f"parameter {name}={value!r} must be {'a' if kind != 'int' else 'an'} {kind}") from None
    return value


def merge_parameters(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Overlay NNI parameters on ``base``; ``space_args.X`` keys go into ``space_args``; unknown keys raise."""
    hints = _field_hints()
    merged = dict(base)
    for key, value in params.items():
        if key.startswith("space_args."):
            merged["space_args"] = {**(merged.get("space_args") or {}), key.split(".", 1)[1]: value}
            continue
        if key not in hints:
            raise TrialInputError(f"unknown parameter {key!r}; the search takes {sorted(hints)} and space_args.<name>")
        merged[key] = _coerce(key, value, hints[key])
    return merged


def build_config(cli_values: dict[str, Any], nni_params: dict[str, Any], output_dir: str | None = None) -> Any:
    """SearchConfig defaults < command-line values < NNI parameters; ``output_dir`` (NNI's) wins for ``out``."""
    cls = _config_type()
    values = merge_parameters({k: v for k, v in cli_values.items() if v is not None}, nni_params)
    if output_dir:
        values["out"] = output_dir
    elif values.get("out") is None:  # as `hmnas search` names it
        defaults = cls()
        values["out"] = "runs/" + "-".join(str(values.get(k, getattr(defaults, k))) for k in ("space", "dataset",
                                                                                            "strategy"))
    try:
        config = cls(**values)
    except TypeError as exc:
        raise TrialInputError(str(exc)) from None
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------- metrics
def phase_code(name: Any) -> int:
    """Index of ``name`` in :data:`PHASES` (numbers pass through), -1 for an unknown phase."""
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return int(name)
    return PHASES.index(name) if name in PHASES else -1


def _number(value: Any) -> float | int | None:
    """``value`` as a finite int/float, or None when it is missing or not a finite number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def nni_metric(metrics: dict[str, Any], final: bool = False) -> dict[str, float | int]:
    """NNI dict metric from a ``run_search`` metrics dict: numbers only, ``default`` = ``derived_val_acc``."""
    out: dict[str, float | int] = {}
    for key in EPOCH_KEYS + (FINAL_KEYS if final else ()):
        number = _number(metrics.get(key))
        if number is not None:
            out[key] = number
    default = out.get("derived_val_acc", out.get("supernet_val_acc", 0.0))
    out = {"default": float(default), **out}
    if metrics.get("epoch") is not None:
        out["epoch"] = int(metrics["epoch"])
    out["phase"] = phase_code(metrics.get("phase"))
    return out


def _describe(metrics: dict[str, Any]) -> str:
    """One log line for an epoch's metrics, phase by name."""
    parts = [f"epoch {metrics.get('epoch')}", f"phase {metrics.get('phase')}"]
    for key in EPOCH_KEYS:
        value = metrics.get(key)
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return " | ".join(parts)


# ------------------------------------------------------------------------------------------------ entry
def in_nni() -> bool:
    """True when this process is a trial launched by an NNI manager."""
    return bool(os.environ.get("NNI_PLATFORM")) and os.environ.get("NNI_PLATFORM") != "unittest"


def add_trial_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One ``--<field>`` option per SearchConfig field (default: the SearchConfig default)."""
    cls = _config_type()
    defaults = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name, hint in _field_hints().items():
        field = defaults[name]
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        shown = json.dumps(default) if isinstance(default, dict) else default
        note = ", a JSON object" if dict in (hint, typing.get_origin(hint)) else ""
        if name == "out":
            shown = "NNI_OUTPUT_DIR under NNI, else runs/<space>-<dataset>-<strategy>"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar=name.upper(),
                            help=f"(default: {shown}{note})")
    parser.add_argument("--lr", dest="learning_rate", default=None, metavar="LEARNING_RATE",
                        help="alias of --learning-rate, as in `hmnas search`")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const="false",
                        help="no progress bar (the default under NNI)")
    parser.add_argument("--params", default=None, metavar="JSON",
                        help="hyper-parameters as a JSON object, applied like NNI's (for runs outside NNI)")
    return parser


def add_trial_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``trial`` on an argparse subparsers object; it sets ``func=run_trial``."""
    parser = subparsers.add_parser("trial", help="run one search as an NNI trial (plain search outside NNI)",
                                   description=__doc__.splitlines()[0])
    add_trial_arguments(parser)
    parser.set_defaults(func=run_trial)
    return parser


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The SearchConfig fields given on the command line, converted to their types."""
    hints = _field_hints()
    values = {}
    for name, hint in hints.items():
        raw = getattr(args, name, None)
        if raw is not None:
            values[name] = _coerce(name, raw, hint)
    return values


def _reporter(nni_run: bool) -> Callable[[str, dict[str, Any]], None]:
    """``report(kind, metric)`` sending to this trial's NNI manager, even from inside ``NasExperiment.run()``.

    While a one-shot search runs, NNI's evaluator swaps the process-wide trial command channel for a mock
    that keeps metrics for the search itself, so a plain ``nni.report_intermediate_result`` never reaches
    the manager; the channel taken here (after ``nni.get_next_parameter``) is put back for each report.
    """
    import nni
    from nni.runtime.trial_command_channel import get_default_trial_command_channel, set_default_trial_command_channel

    if not nni_run:
        return lambda kind, metric: None
    manager = get_default_trial_command_channel()

    def report(kind: str, metric: dict[str, Any]) -> None:
        current = get_default_trial_command_channel()
        set_default_trial_command_channel(manager)
        try:
            (nni.report_final_result if kind == "final" else nni.report_intermediate_result)(metric)
        finally:
            set_default_trial_command_channel(current)

    return report


def _quiet_nni() -> None:
    """Drop NNI's repeated notice that a one-shot run ignores the training service (it fills trial.log)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return "will be ignored for sequential execution engine" not in record.getMessage()

    logging.getLogger("nni.nas.experiment.config.experiment").addFilter(keep)


def _fail(message: str) -> int:
    """Print one ``error:`` line on stderr and return the bad-input exit code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def run_trial(args: argparse.Namespace) -> int:
    """Run one search with NNI's parameters (if any) and report to NNI; returns the exit code."""
    import nni

    from hmnas_nni.search.run import run_search

    nni_run = in_nni()
    try:
        cli_values = _cli_values(args)
        if nni_run:
            cli_values.setdefault("progress", False)  # a progress bar only clutters trial.log
        extra = json.loads(args.params) if getattr(args, "params", None) else {}
        if not isinstance(extra, dict):
            raise TrialInputError("--params must be a JSON object")
        params = nni.get_next_parameter() if nni_run else {}
        config = build_config(cli_values, {**extra, **(params or {})},
                              os.environ.get("NNI_OUTPUT_DIR") if nni_run else None)
    except json.JSONDecodeError as exc:
        return _fail(f"--params is not valid JSON: {exc}")
    except ValueError as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    _quiet_nni()
    report = _reporter(nni_run)

    def on_epoch_end(metrics: dict[str, Any]) -> None:
        print(_describe(metrics), flush=True)
        report("intermediate", nni_metric(metrics))

    from hmnas_nni.nas.lightning import NumericalFault
    from hmnas_nni.search.reliability import SearchInterrupted

    try:
        final = run_search(config, on_epoch_end=on_epoch_end)
    except NumericalFault as exc:  # checkpoints and metrics so far stay on disk
        _fail(f"numerical fault: {exc}")
        return 3
    except SearchInterrupted as exc:
        print(f"error: {exc}; resume with --resume {config.out}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    except (ValueError, FileNotFoundError) as exc:  # bad space_args, missing dataset files, ...
        if os.environ.get("HMNAS_TRACEBACK"):
            raise
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    final_metric = nni_metric(final, final=True)
    report("final", final_metric)
    out = Path(config.out)
    print(f"architecture: {out / 'arch.json'}", flush=True)
    print("final: " + json.dumps(final_metric), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hmnas_nni.experiments.trial``."""
    parser = argparse.ArgumentParser(prog="python -m hmnas_nni.experiments.trial", description=__doc__.splitlines()[0])
    add_trial_arguments(parser)
    args = parser.parse_args(argv)
    return run_trial(args)


if __name__ == "__main__":
    sys.exit(main())
