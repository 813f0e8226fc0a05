"""A compute budget as text: wall-clock (``90s``, ``4m``, ``1.5h``, a bare number of seconds), GPU-hours
(``0.5gpuh``: wall-clock time of the one GPU a search runs on) or training epochs (``12ep``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import UsageError

#: Unit suffix -> seconds.
UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
#: GPU-hour suffixes (seconds per unit).
GPU_UNITS = {"gpuh": 3600.0, "gpu-h": 3600.0, "gpu-hours": 3600.0}
#: Epoch suffixes.
EPOCH_UNITS = ("ep", "epoch", "epochs")
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z-]*)\s*$", re.IGNORECASE)
#: Below this a search cannot start (data, supernet, NNI experiment): a budget must be at least this long.
MIN_SECONDS = 5.0
_HINT = "write a wall-clock duration such as 90s, 4m or 1h (a bare number is seconds), GPU-hours such as 0.5gpuh, " \
        "or epochs such as 12ep"


@dataclass(frozen=True)
class Budget:
    """A compute budget: wall-clock ``seconds`` (``gpu``: given in GPU-hours) or a number of training ``epochs``."""

    seconds: float | None = None
    epochs: int | None = None
    gpu: bool = False

    @property
    def kind(self) -> str:
        """``wall-clock``, ``gpu-hours`` or ``epochs``: how the budget was given and is recorded."""
        return "epochs" if self.epochs is not None else "gpu-hours" if self.gpu else "wall-clock"


def parse_budget(value: str | int | float | Budget) -> Budget:
    """A budget given as text or a number of seconds; a :class:`UsageError` naming the accepted forms else."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise UsageError(f"budget {value!r} is not a duration or a number of epochs; {_HINT}")
    if isinstance(value, (int, float)):
        return Budget(seconds=_checked_seconds(value, float(value)))
    match = _PATTERN.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in (*UNITS, *GPU_UNITS, *EPOCH_UNITS):
        raise UsageError(f"budget {value!r} is not a duration or a number of epochs; {_HINT}")
    number = float(match.group(1))
    if unit in EPOCH_UNITS:
        if not number.is_integer() or number < 1:
            raise UsageError(f"budget {value!r} must be a whole number of epochs, at least 1; {_HINT}")
        return Budget(epochs=int(number))
    if unit in GPU_UNITS:
        return Budget(seconds=_checked_seconds(value, number * GPU_UNITS[unit]), gpu=True)
    return Budget(seconds=_checked_seconds(value, number * UNITS[unit]))


def budget_seconds(value: str | int | float) -> float:
    """Seconds of a wall-clock (or GPU-hour) budget; a :class:`UsageError` for an epoch budget or bad text."""
    budget = parse_budget(value)
    if budget.seconds is None:
        raise UsageError(f"budget {value!r} counts epochs; this needs a duration: {_HINT.split(', or epochs')[0]}")
    return budget.seconds


def _checked_seconds(value: object, seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < MIN_SECONDS:
        raise UsageError(f"budget {value!r} must be a finite duration of at least {MIN_SECONDS:g} s (a search needs "
                         f"that to start); {_HINT}")
    return seconds
