"""Atomic file writes and strict JSON: the one way every command puts a file on disk.

A file is written to a temporary name in its own folder, flushed and fsynced, given ordinary permissions
(0666 minus the umask, as ``open`` would) and renamed over the target, so a reader sees the old file or the
new one, never half of one; a failed write removes its temporary file. JSON is strict: non-finite floats are
written as ``null`` and ``allow_nan=False`` guards the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make a finished temporary file durable, give it ordinary permissions and rename it over ``path``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    fsync_folder(Path(path).parent)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that need a file name; published when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except OSError as e:
        if e.filename is None:  # a failed write() names no file: name the one being written
            e.filename = str(path)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
    return Path(path)


def strict_json(doc: Any) -> str:
    """``doc`` as indented JSON with a final newline; non-finite floats become ``null``."""
    return json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, doc: Any) -> Path:
    """Write ``doc`` as strict JSON, atomically."""
    return write_atomic(path, strict_json(doc))


def _finite(o: Any) -> Any:
    """``o`` with NaN/inf as None, tuples as lists, numpy values and paths as plain JSON values."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if hasattr(o, "tolist"):  # numpy and torch scalars and arrays
        return _finite(o.tolist())
    return str(o)


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, recorded so results name exactly which file they came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before the work that produces it, a file path whose folder cannot be created or written."""
    from .errors import UsageError, describe_os_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        e.filename = str(path)
        raise describe_os_error(e) or UsageError(f"cannot write {path}: {e.strerror}; choose an output path you can "
                                                 "write to") from None
