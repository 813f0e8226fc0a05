"""Progress for people: a live bar on a terminal; in a file (nnictl trials, CI, ``nohup``, ``tee``) one line per
epoch and nothing per step, so that a log stays readable."""

from __future__ import annotations

import sys
from typing import TextIO


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (standard error by default) is a terminal, where a bar redraws in place."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
