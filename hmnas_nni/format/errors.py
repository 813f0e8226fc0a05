"""The kinds of failure every command reports the same way; ``hmnas_nni.cli.errors`` maps each to an exit status.

- :class:`UsageError`: the input, an option or a file given cannot work; the message says what to change;
- :class:`ResourceError`: the machine ran out of something (disk space, memory) or lacks it (a GPU);
- :class:`CheckFailed`: the command ran, but its result failed a check (ONNX parity, nothing measured);
- :class:`Interrupted`: SIGTERM / SIGINT stopped the command; ``signum`` says which.
"""

from __future__ import annotations

import errno
import os
import signal


class UsageError(ValueError):
    """Input that cannot work as given; the message names the problem and the fix."""


class ResourceError(RuntimeError):
    """The machine lacks what the command needs (disk space, memory, a device)."""


class CheckFailed(RuntimeError):
    """The command ran, but what it produced failed a check (parity, nothing measured); its record says why."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT: raised by the signal handler, so ``except Exception`` blocks let it through."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def interruption_in(e: BaseException) -> BaseException | None:
    """The signal stop behind ``e``, if any: a signal landing inside an import or a C extension comes back as
    another exception (``ImportError: initialization failed``) whose context is the stop."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        if isinstance(e, (Interrupted, KeyboardInterrupt)) or hasattr(e, "signum"):
            return e
        seen.append(e)
        e = e.__cause__ or e.__context__
    return None


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def describe_os_error(e: OSError) -> BaseException | None:
    """A full disk or a folder that cannot be written, as a one-line error naming the file; else None."""
    where = e.filename if e.filename is not None else "a file"
    if e.errno in NO_SPACE:
        return ResourceError(f"no space left on the device while writing {where}; free some space or write to a "
                             "folder on another disk (the results written before this stay as they were)")
    if e.errno in NOT_WRITABLE:
        home = os.path.expanduser("~")
        if e.filename is not None and os.path.abspath(str(e.filename)).startswith(home.rstrip("/") + "/"):
            return UsageError(f"cannot write {where}: {os.strerror(e.errno)}; NNI keeps a list of experiments in "
                              "~/nni-experiments: make HOME writable, or set HOME to a folder you can write to")
        return UsageError(f"cannot write {where}: {os.strerror(e.errno)}; choose an output path you can write to")
    return None
