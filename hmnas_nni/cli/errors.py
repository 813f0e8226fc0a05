"""One table from the project's exception classes to exit statuses, and the one-line message each prints.

A programming error (``TypeError``, ``AttributeError``, ...) is in no row: it propagates as a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

EXIT_CHECK_FAILED = 1  # parity failed, nothing measured
EXIT_BAD_INPUT = 2
EXIT_NUMERICAL_FAULT = 3
EXIT_RESOURCE = 4
EXIT_SIGNAL_BASE = 128  # + the signal number, as a shell reports a process killed by it


def _signum(e: BaseException) -> int:
    return int(getattr(e, "signum", signal.SIGINT))


def _table() -> list[tuple[tuple[type[BaseException], ...], Callable[[BaseException], int], str]]:
    """(exception classes, exit status, label before the message), first match wins."""
    from hmnas_nni.format.errors import CheckFailed, Interrupted, ResourceError, UsageError
    from hmnas_nni.nas.lightning import NumericalFault
    from hmnas_nni.search.reliability import SearchInterrupted

    return [
        ((Interrupted, SearchInterrupted, KeyboardInterrupt), lambda e: EXIT_SIGNAL_BASE + _signum(e), ""),
        ((NumericalFault,), lambda e: EXIT_NUMERICAL_FAULT, "numerical fault: "),
        ((CheckFailed,), lambda e: EXIT_CHECK_FAILED, "error: "),
        ((ResourceError,), lambda e: EXIT_RESOURCE, "error: "),
        ((UsageError, ValueError, FileNotFoundError), lambda e: EXIT_BAD_INPUT, "error: "),
    ]


def as_known(e: BaseException) -> BaseException:
    """``e`` as one of the project's errors where it means one: a full disk, a read-only folder, no memory."""
    from hmnas_nni.format.errors import ResourceError, describe_os_error, interruption_in

    stop = interruption_in(e)
    if stop is not None and stop is not e:
        e = stop
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
        return describe_os_error(e) or e
    if any(sign in str(e) for sign in ("No space left on device", "StorageFull")):  # raised by C++/Rust writers
        return ResourceError(f"no space left on the device ({str(e).splitlines()[0][:160]}); free some space or pass "
                             "an output folder on another disk")
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
            isinstance(e, RuntimeError) and "can't allocate memory" in str(e)):
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return ResourceError(f"out of memory ({first}); lower the batch size or the space's channels (space arguments)")
    if isinstance(e, KeyboardInterrupt) and not hasattr(e, "signum"):
        from hmnas_nni.format.errors import Interrupted

        return Interrupted(signal.SIGINT)
    return e


def classify(e: BaseException) -> tuple[int, str, str] | None:
    """(exit status, label, one-line message) of a known error, None for anything else (a traceback)."""
    known = as_known(e)
    for kinds, status, label in _table():
        if isinstance(known, kinds):
            text = str(known).strip()
            return status(known), label, text.splitlines()[0] if text else type(known).__name__
    return None
