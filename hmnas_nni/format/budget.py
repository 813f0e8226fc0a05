"""A compute budget as text: ``90s``, ``4m``, ``1.5h`` or a bare number of seconds, read into seconds."""

from __future__ import annotations

import math
import re

from .errors import UsageError

#: Unit suffix -> seconds.
UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
#: Below this a search cannot start (data, supernet, NNI experiment): a budget must be at least this long.
MIN_SECONDS = 5.0


def budget_seconds(value: str | int | float) -> float:
    """Seconds of a wall-clock budget given as ``90s`` / ``4m`` / ``1h`` / a number; a :class:`UsageError` else."""
    hint = "write a wall-clock duration such as 90s, 4m or 1h (a bare number is seconds)"
    if isinstance(value, bool):
        raise UsageError(f"budget {value!r} is not a duration; {hint}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _PATTERN.match(str(value))
        if match is None or match.group(2).lower() not in UNITS:
            raise UsageError(f"budget {value!r} is not a duration; {hint}")
        seconds = float(match.group(1)) * UNITS[match.group(2).lower()]
    if not math.isfinite(seconds) or seconds < MIN_SECONDS:
        raise UsageError(f"budget {value!r} must be a finite duration of at least {MIN_SECONDS:g} s (a search needs "
                         f"that to start); {hint}")
    return seconds
