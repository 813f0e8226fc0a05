"""NNI trial: one whole architecture search per trial, reported to NNI's web UI every epoch.

Under ``nnictl`` each trial (``python3 -m hmnas_nni.cli trial ...``) reads its hyper-parameters with
:func:`nni.get_next_parameter`, merges them over the :class:`~hmnas_nni.search.config.SearchConfig` defaults
and the command-line values (:func:`build_config`), runs :func:`~hmnas_nni.search.run.run_search` into the
trial's output directory (``NNI_OUTPUT_DIR``), and reports a dict metric per search epoch plus a final one
(:func:`run_trial`). Outside NNI it is a plain search.

NNI metric values are numbers (the web UI's metric pickers offer every key of a dict metric, so a
string value would break its charts); the search phase is therefore reported as ``phase`` = its index in
:data:`hmnas_nni.search.monitor.PHASES`, and its name is printed in the trial log.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

from hmnas_nni.export.hardware import HardwareExtras
from hmnas_nni.format.errors import UsageError
from hmnas_nni.search.config import SearchConfig, coerce, field_types
from hmnas_nni.search.monitor import PHASES, phase_code
from hmnas_nni.search.run import SearchResult, run_search

__all__ = ["PHASES", "EPOCH_KEYS", "FINAL_KEYS", "TrialInputError", "build_config", "merge_parameters",
           "nni_metric", "run_trial", "in_nni"]

#: Epoch-metric keys reported to NNI besides ``default`` (= ``derived_val_acc``), ``epoch`` and ``phase``.
EPOCH_KEYS: tuple[str, ...] = ("supernet_val_acc", "derived_val_acc", "derivation_gap", "ops_kept", "edges_kept",
                               "sparsity")
#: Extra keys of the final metric.
FINAL_KEYS: tuple[str, ...] = ("params", "epoch_seconds", "peak_memory_mb")


class TrialInputError(UsageError):
    """A hyper-parameter that does not fit :class:`SearchConfig`; one line says what."""


# --------------------------------------------------------------------------------------------- parameters
def flatten_nested(params: dict[str, Any]) -> dict[str, Any]:
    """NNI's nested choices as plain parameters: ``{"strategy": {"_name": "nasib", "epochs": 100000}}`` (a choice
    among dicts that name themselves) becomes ``{"strategy": "nasib", "epochs": 100000}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and "_name" in value:
            flat[key] = value["_name"]
            flat.update(flatten_nested({k: v for k, v in value.items() if k != "_name"}))
        else:
            flat[key] = value
    return flat


def merge_parameters(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Overlay NNI parameters (nested choices flattened) on ``base``; ``space_args.X`` keys go into ``space_args``;
    unknown keys raise."""
    known = field_types()
    merged = dict(base)
    for key, value in flatten_nested(params).items():
        if key.startswith("space_args."):
            merged["space_args"] = {**(merged.get("space_args") or {}), key.split(".", 1)[1]: value}
            continue
        if key not in known:
            raise TrialInputError(f"unknown parameter {key!r}; the search takes {sorted(known)} and space_args.<name>")
        try:
            merged[key] = coerce(key, value)
        except UsageError as e:
            raise TrialInputError(f"parameter {e}") from None
    return merged


def build_config(cli_values: dict[str, Any], nni_params: dict[str, Any], output_dir: str | None = None) -> SearchConfig:
    """SearchConfig defaults < command-line values < NNI parameters; ``output_dir`` (NNI's) wins for ``out``."""
    values = merge_parameters({k: v for k, v in cli_values.items() if v is not None}, nni_params)
    if output_dir:
        values["out"] = output_dir
    return SearchConfig.from_dict(values).validate()


# ---------------------------------------------------------------------------------------------- metrics
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


def describe(metrics: dict[str, Any]) -> str:
    """One log line for an epoch's metrics, phase by name."""
    parts = [f"epoch {metrics.get('epoch')}", f"phase {metrics.get('phase')}"]
    for key in EPOCH_KEYS:
        value = metrics.get(key)
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return " | ".join(parts)


# ------------------------------------------------------------------------------------------------ running
def in_nni() -> bool:
    """True when this process is a trial launched by an NNI manager."""
    return bool(os.environ.get("NNI_PLATFORM")) and os.environ.get("NNI_PLATFORM") != "unittest"


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

    def keep(record: logging.LogRecord) -> bool:
        return "will be ignored for sequential execution engine" not in record.getMessage()

    logging.getLogger("nni.nas.experiment.config.experiment").addFilter(keep)


def trial_config(cli_values: dict[str, Any], extra: dict[str, Any]) -> SearchConfig:
    """The config of this trial: command-line values, ``extra`` parameters, then NNI's (under NNI)."""
    import nni

    nni_run = in_nni()
    if nni_run:
        cli_values = {"progress": False, **cli_values}  # a progress bar only clutters trial.log
    params = nni.get_next_parameter() if nni_run else {}
    return build_config(cli_values, {**extra, **(params or {})}, os.environ.get("NNI_OUTPUT_DIR") if nni_run else None)


def run_trial(config: SearchConfig, log: Callable[[str], None] = print) -> dict[str, float | int]:
    """Run the trial's search, reporting every epoch (and the end) to NNI when under NNI; the final NNI metric."""
    _quiet_nni()
    report = _reporter(in_nni())

    def on_epoch_end(metrics: dict[str, Any]) -> None:
        log(describe(metrics))
        report("intermediate", nni_metric(metrics))

    result: SearchResult = run_search(config, on_epoch_end=on_epoch_end, extras=HardwareExtras())
    final_metric = nni_metric(result.final, final=True)
    report("final", final_metric)
    return final_metric
