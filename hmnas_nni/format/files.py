"""Small file helpers shared by the export commands: atomic writes and output-folder guards."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class OutputExists(FileExistsError):
    """An output folder that already holds results this command would overwrite."""


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write a file via a temporary sibling and ``os.replace`` so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp makes it 0600) and move it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, doc: Any) -> Path:
    """Write JSON atomically, indented, with a final newline."""
    return write_atomic(path, json.dumps(doc, indent=2, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    """JSON fallback for tuples of numpy scalars, paths and similar values."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return str(o)
    return str(o)


def guard_outputs(out: str | os.PathLike, names: Iterable[str], force: bool) -> Path:
    """Refuse to overwrite any of ``names`` in ``out`` unless ``force``; the folder is made when results exist."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out} is a file, not a folder; pass a folder path")
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise OutputExists(
            f"{out} already holds {', '.join(existing)}; pass --force to overwrite or choose another --out"
        )
    return out


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, recorded so results name exactly which file they came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
