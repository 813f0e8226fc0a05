"""The one schema of a search: :class:`SearchConfig`, its validation, and how a value of each field is read.

Each field carries its command-line help (and any extra flag) as ``dataclasses.field`` metadata, so the
``hmnas search`` and ``hmnas trial`` options are generated from it (``hmnas_nni.cli.options``), and NNI
parameters and command-line strings go through the same :func:`coerce`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from hmnas_nni.format.errors import UsageError
from hmnas_nni.nas.defaults import DEFAULTS

from .data import DATASETS
from .strategies import MEMORY_BUFFER, STRATEGIES

#: Lightning strategies a search may run under: one process, or one supernet replicated over ``devices``.
DISTRIBUTED = ("auto", "ddp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
FLOAT32_MAX = 3.4028234663852886e38
SEED_LIMIT = 2**32  # numpy's seeds are 32-bit
#: The smallest size of each space that keeps every kind of cell: what tests, smoke runs and tiny budgets use.
TINY_SPACE_ARGS: dict[str, dict[str, int]] = {
    "nb201": {"channels": 4},
    "darts": {"channels": 4, "num_cells": 3},
    "mobile": {"channels": 4},
    "nb201-sk": {"channels": 4},
    "mobile-sk": {"channels": 4},
}


def option(default: Any, help: str, flags: tuple[str, ...] = (), choices: tuple[str, ...] | None = None,
           factory: Any = None) -> Any:
    """A config field with its command-line help, extra flags and choices."""
    meta = {"help": help, "flags": flags, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _space_help() -> str:
    from hmnas_nni.spaces import SPACES

    return (f"search space: one of {', '.join(sorted(SPACES))}, or an NNI model space as an import path "
            "(nni.nas.hub.pytorch.NasBench201, my_module:MySpace)")


@dataclass
class SearchConfig:
    """Everything one search needs; every field is JSON-able so configs round-trip through NNI and checkpoints."""

    space: str = option("nb201", _space_help())
    dataset: str = option("digits", "dataset (nothing is downloaded)", choices=DATASETS)
    strategy: str = option("hmnas", "HM-NAS or one of NNI's one-shot strategies", choices=STRATEGIES)
    epochs: int = option(10, "search epochs")
    subset: int | None = option(None, "use N training images, half for weights, half for architecture (default: all)")
    seed: int = option(0, "random seed (0 .. 2**32-1)")
    out: str | None = option(None, "output folder (default runs/<space>-<dataset>-<strategy>)")
    force: bool = option(False, "replace the results another run left in --out (as a whole)")
    batch_size: int = option(64, "batch size of both halves")
    learning_rate: float = option(3e-3, "weight learning rate", flags=("--lr",))
    weight_decay: float = option(3e-4, "weight decay of the supernet weights")
    space_args: dict[str, Any] = option(None, 'space arguments as a JSON object, e.g. \'{"channels": 16}\'',
                                        factory=dict)
    data_root: str | None = option(None, "folder holding the dataset files")
    # architecture search knobs (shared by the differentiable strategies where they apply)
    arc_lr: float = option(DEFAULTS.arc_learning_rate, "learning rate of alpha/beta")
    warmup_epochs: int | None = option(None, "weights-only epochs (default: a quarter of --epochs)")
    # HM-NAS knobs
    arch_epochs: int | None = option(None, "HM-NAS: alpha/beta epochs before masking (default: a quarter)")
    tau: float = option(DEFAULTS.tau, "HM-NAS mask threshold")
    mask_init: float = option(DEFAULTS.mask_init, "HM-NAS initial mask score (>= tau)")
    mask_lr: float = option(DEFAULTS.mask_learning_rate, "HM-NAS mask score learning rate")
    sparsity: float = option(DEFAULTS.sparsity, "HM-NAS sparsity weight lambda")
    settle_epochs: int = option(DEFAULTS.settle_epochs, "HM-NAS: last masking epochs with the masks fixed")
    # hardware-aware HM-NAS
    latency_table: str | None = option(None, "HM-NAS: latency table JSON (from `hmnas latency`); each mask's "
                                             "sparsity is weighted by the latency its entry saves")
    latency_target: float | None = option(None, "HM-NAS: push the expected latency under MS milliseconds and "
                                                "check the derived network against it (measures a table into "
                                                "--out when --latency-table is not given)")
    latency_weight: float = option(DEFAULTS.latency_weight, "HM-NAS: weight of the latency-target term")
    family: int | None = option(None, "HM-NAS: also write K nested networks ranked by latency to --out/family/")
    # ENAS with a memory of past architectures
    memory_buffer: int | None = option(None, f"enas-memory: past architectures the controller is also trained on "
                                             f"(default {MEMORY_BUFFER}; --strategy enas has none)")
    # compute budget
    budget: str | None = option(None, "budget of the whole search: wall-clock, e.g. 90s, 4m, 1h (a bare number is "
                                      "seconds), GPU-hours on a GPU, e.g. 0.5gpuh, or epochs, e.g. 12ep; the search "
                                      "stops at a step boundary in time to export what it has; --epochs still caps it")
    # where to run
    accelerator: str = option("auto", "Lightning accelerator", choices=ACCELERATORS)
    devices: int = option(1, "devices (processes under --distributed ddp)")
    num_workers: int = option(0, "data-loading worker processes")
    progress: bool = option(True, "show a progress bar")
    # fault tolerance and scale-out
    resume: str | None = option(None, "continue the search whose --out was DIR from DIR/checkpoints/last.ckpt "
                                      "(options not given are taken from that run; results go to --out, default DIR)")
    distributed: str = option("auto", "Lightning strategy over --devices: auto (one process) or ddp (one supernet, "
                                      "N processes)", choices=DISTRIBUTED)

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = self.resume if self.resume else f"runs/{self.space}-{self.dataset}-{self.strategy}"

    def validate(self) -> SearchConfig:
        """Raise a :class:`UsageError` with one line naming the bad field and what it accepts."""
        _check_names(self)
        _check_counts(self)
        _check_numbers(self)
        _check_where(self)
        _check_hardware(self)
        _check_memory(self)
        _check_budget(self)
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchConfig:
        """A config from field values, refusing unknown names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown search option(s) {unknown}; known options are {sorted(known)}")
        return cls(**values)

    def search_epochs(self) -> int:
        """Epochs the search may train: ``epochs``, or fewer where an epoch budget (``12ep``) allows fewer."""
        if self.budget is not None:
            from hmnas_nni.format.budget import parse_budget

            allowed = parse_budget(self.budget).epochs
            if allowed is not None:
                return min(self.epochs, allowed)
        return self.epochs

    def schedule(self) -> tuple[int, int]:
        """(warm-up epochs, architecture epochs before masking): a quarter each of the epochs the search may train,
        unless given."""
        epochs = self.search_epochs()
        warmup = self.warmup_epochs if self.warmup_epochs is not None else max(1, epochs // 4)
        arch = self.arch_epochs if self.arch_epochs is not None else max(1, epochs // 4)
        return min(warmup, epochs - 1), arch


def _check_names(c: SearchConfig) -> None:
    for f in fields(c):
        choices = f.metadata.get("choices")
        if choices and getattr(c, f.name) not in choices:
            raise UsageError(f"unknown {f.name} {getattr(c, f.name)!r}; choose one of {list(choices)}")
    if not isinstance(c.space_args, dict):
        raise UsageError(f"space_args must be a JSON object, got {c.space_args!r}")
    from hmnas_nni.spaces import SpaceError, space_factory

    try:
        space_factory(c.space)  # a project space name or an importable NNI model space
    except SpaceError as e:
        raise UsageError(str(e)) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_counts(c: SearchConfig) -> None:
    for name in ("epochs", "batch_size", "devices"):
        if not _is_int(getattr(c, name)) or getattr(c, name) < 1:
            raise UsageError(f"{name} must be a positive integer, got {getattr(c, name)!r}")
    if c.subset is not None and (not _is_int(c.subset) or c.subset < 4):
        raise UsageError(f"subset must be an integer >= 4 (images), got {c.subset!r}")
    for name in ("warmup_epochs", "arch_epochs", "settle_epochs", "num_workers"):
        value = getattr(c, name)
        if value is not None and (not _is_int(value) or value < 0):
            raise UsageError(f"{name} must be an integer >= 0, got {value!r}")
    if not _is_int(c.seed) or not 0 <= c.seed < SEED_LIMIT:
        raise UsageError(f"seed must be an integer in 0 .. 2**32-1, got {c.seed!r}")


def _finite(c: SearchConfig, name: str, low: float, strict: bool, hint: str) -> float:
    value = getattr(c, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise UsageError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}; {hint}")
    return float(value)


def _check_numbers(c: SearchConfig) -> None:
    for name in ("learning_rate", "arc_lr", "mask_lr"):
        value = getattr(c, name)
        if isinstance(value, float) and math.isfinite(value) and value > FLOAT32_MAX:
            raise UsageError(f"{name}={value!r} does not fit a float32 (max {FLOAT32_MAX:.3g}); "
                             "use a learning rate below 1")
        _finite(c, name, 0.0, True, f"the default is {field_default(_field(name))}")
    _finite(c, "weight_decay", 0.0, False, "0 turns weight decay off")
    tau = _finite(c, "tau", 0.0, True, f"it is the mask threshold (default {DEFAULTS.tau})")
    if _finite(c, "mask_init", 0.0, True, f"the default is {DEFAULTS.mask_init}") < tau:
        raise UsageError(f"mask_init ({c.mask_init}) must be >= tau ({c.tau}) so every op starts on")
    _finite(c, "sparsity", 0.0, False, f"it weighs the sparsity term (default {DEFAULTS.sparsity})")


def _check_hardware(c: SearchConfig) -> None:
    asked = [n for n in ("latency_table", "latency_target", "family") if getattr(c, n) is not None]
    if asked and c.strategy != "hmnas":
        raise UsageError(f"{', '.join('--' + n.replace('_', '-') for n in asked)}: HM-NAS option(s), not "
                         f"--strategy {c.strategy}'s; drop them or pass --strategy hmnas")
    if c.latency_target is not None:
        _finite(c, "latency_target", 0.0, True, "it is the latency budget in milliseconds")
    _finite(c, "latency_weight", 0.0, False, f"it weighs the latency-target term (default {DEFAULTS.latency_weight})")
    if c.family is not None and (not _is_int(c.family) or c.family < 1):
        raise UsageError(f"family must be an integer >= 1 (networks), got {c.family!r}")
    if c.latency_table is not None:
        import os

        if not isinstance(c.latency_table, str) or not os.path.isfile(c.latency_table):
            raise UsageError(f"latency_table {c.latency_table!r} is not a file; measure one with `hmnas latency "
                             "--space SPACE --out FILE`, or leave it out with --latency-target to measure one here")


def _check_memory(c: SearchConfig) -> None:
    if c.memory_buffer is None:
        return
    if c.strategy != "enas-memory":
        raise UsageError(f"--memory-buffer: an enas-memory option, not --strategy {c.strategy}'s; drop it or pass "
                         "--strategy enas-memory")
    if not _is_int(c.memory_buffer) or c.memory_buffer < 1:
        raise UsageError(f"memory_buffer must be a positive integer (architectures), got {c.memory_buffer!r}; "
                         f"leave it out for {MEMORY_BUFFER}, or pass --strategy enas for ENAS without a memory")


def _check_budget(c: SearchConfig) -> None:
    if c.budget is None:
        if c.strategy == "nasib":
            raise UsageError("--strategy nasib plans its search from a budget: pass --budget (e.g. 4m; "
                             "--time-budget in hmnas compare), and an --epochs large enough not to cap it")
        return
    from hmnas_nni.format.budget import parse_budget

    budget = parse_budget(c.budget)
    if budget.gpu and not _runs_on_gpu(c):
        raise UsageError(f"--budget {c.budget} is in GPU-hours but this search runs on the CPU (--accelerator "
                         f"{c.accelerator}); give a wall-clock duration such as 1h, or search on a GPU")
    if c.distributed == "ddp":
        raise UsageError("--budget under --distributed ddp is not supported (each process would stop at its own "
                         "step); drop one of them")


def _runs_on_gpu(c: SearchConfig) -> bool:
    """Whether Lightning will train on a CUDA GPU under ``c.accelerator``."""
    if c.accelerator in ("gpu", "cuda"):
        return True
    if c.accelerator != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def _check_where(c: SearchConfig) -> None:
    from hmnas_nni.format.outputs import check_out_path

    if c.resume is not None and (not isinstance(c.resume, str) or not c.resume.strip()):
        raise UsageError(f"resume must be the path of an earlier run's output folder, got {c.resume!r}")
    check_out_path(c.out)
    if c.resume is not None and c.force and _same_folder(c.resume, c.out):
        raise UsageError("--force would delete the checkpoints --resume continues from; pass one of them, or "
                         "--out NEW to continue into another folder")
    if c.accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--accelerator {c.accelerator}: no GPU is visible here (torch.cuda.is_available() is "
                             "False); pass --accelerator cpu, or auto to use a GPU where there is one")


def _same_folder(a: str, b: str | None) -> bool:
    import os

    return b is not None and os.path.abspath(a) == os.path.abspath(b)


# ------------------------------------------------------------------------------------------- reading values
def field_types() -> dict[str, Any]:
    """Field name -> resolved type hint, for every :class:`SearchConfig` field."""
    hints = typing.get_type_hints(SearchConfig)
    return {f.name: hints[f.name] for f in fields(SearchConfig)}


def _field(name: str) -> dataclasses.Field:
    return next(f for f in fields(SearchConfig) if f.name == name)


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a config field."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def coerce(name: str, value: Any) -> Any:
    """``value`` (a command-line string or an NNI/JSON value) as field ``name``'s type, or a :class:`UsageError`."""
    return _coerce(name, value, field_types()[name])


def _coerce(name: str, value: Any, hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(name, value, options[0])
    target = typing.get_origin(hint) or hint
    reader = _READERS.get(target)
    if reader is None:
        return value
    try:
        return reader(value)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a float", bool: "true or false", str: "a string",
                dict: "a JSON object"}[target]
        raise UsageError(f"{name}={value!r} must be {kind}") from None


def _read_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    return int(value)


def _read_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _read_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError


def _read_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError
    return str(value)


def _read_dict(value: Any) -> dict:
    import json

    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, dict):
        raise ValueError
    return parsed


_READERS = {int: _read_int, float: _read_float, bool: _read_bool, str: _read_str, dict: _read_dict}
