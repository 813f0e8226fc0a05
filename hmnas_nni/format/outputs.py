"""Output folders: one run writes a folder at a time, and a folder holds one run's results, whole or not at all.

:class:`OutputFolder` is what every command that writes results (search, trial, retrain, export, bench,
compare) opens its ``--out`` with, once its inputs are checked and before any long work:

- an advisory lock (``fcntl.flock`` on ``.hmnas.lock``) stops a second run writing the same folder;
- a folder holding another run's results is refused unless ``force`` (replace them as a whole) or ``resume``;
- results are written into a staging folder inside it and moved in together by :meth:`OutputFolder.commit`,
  the record file last; ``manifest.json`` then lists every file of the set with its SHA-256 (readers check
  it with :func:`verify_results`), and records how the last run ended (``finished``, ``failed`` or
  ``interrupted``, with the cause), so a failed run leaves the previous set as it was.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import UsageError, describe_os_error, interruption_in
from .files import check_writable, fsync_folder, sha256, write_json

_logger = logging.getLogger(__name__)

LOCK_NAME = ".hmnas.lock"
MANIFEST = "manifest.json"
#: Every file or folder any command writes as its results: a folder holding one of them holds a run's results.
RESULT_NAMES = frozenset({
    "arch.json", "metrics.json", "supernet.safetensors", "cells.png", "checkpoints", "ranks", "logs", "nni",
    "model.safetensors", "config.json", "model.onnx", "model_fp16.onnx", "parity.json",
    "bench.json", "bench.csv", "bench.png", "results.json", "results.csv", "table.md", "acc_vs_params.png",
    "acc_vs_time.png", "runs", "architectures.json", "latency_table.json", "family", "spaces.json", "spaces.png",
    "latency_fit.json", "latency_fit.png", "controller_similarity.json", "controller_similarity.png", MANIFEST,
})


class OutputExists(UsageError):
    """An output folder that already holds another run's results."""


class OutputBusy(UsageError):
    """An output folder another running command holds the lock of."""


def check_out_path(out: str | os.PathLike | None) -> Path:
    """``out`` as a folder path, refusing the empty path and an existing file."""
    if out is None or not str(out).strip():
        raise UsageError("out (--out) is empty; pass the folder the results go to (it is created if missing)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"out (--out) {path} is a file, not a folder; pass a folder path for the results")
    return path


def check_file_output(path: str | os.PathLike, option: str, kind: str, is_kind: Callable[[Path], bool]) -> Path:
    """A single-file output path (``option`` names it in errors) that may replace only a file of the same ``kind``
    which no run's manifest lists; its folder must be writable. Checked before the work that writes it."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; pass the path of the {kind} file to write")
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not is_kind(path):
            raise UsageError(f"{option} {path} exists and is not a {kind}; nothing was overwritten: pass a new path")
        if path.name in (read_manifest(path.parent).get("files") or {}):
            raise UsageError(f"{option} {path} is one of the results in {path.parent} ({MANIFEST} lists it); "
                             "nothing was overwritten: pass a path outside that folder")
    check_writable(path)
    return path


def is_png(path: Path) -> bool:
    """Whether ``path`` starts with the PNG signature."""
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def results_in(folder: Path) -> list[str]:
    """Names of the results some run left in ``folder`` (``manifest.json`` counts only when it lists files)."""
    if not folder.is_dir():
        return []
    names = sorted(n for n in os.listdir(folder) if (n in RESULT_NAMES or n.startswith("nni-rank"))
                   and _holds_something(folder / n))
    if MANIFEST in names and not (read_manifest(folder).get("files")):
        names.remove(MANIFEST)
    return names


def _holds_something(path: Path) -> bool:
    """A file, or a folder with a file somewhere inside (an empty folder holds nothing to lose)."""
    return not path.is_dir() or any(p.is_file() for p in path.rglob("*"))


def read_manifest(folder: Path) -> dict[str, Any]:
    """``folder/manifest.json`` as a dict ({} when absent or unreadable)."""
    import json

    try:
        doc = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def verify_results(folder: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Refuse a folder whose ``names`` are not the complete set its manifest lists (a mix of two runs)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest:
        return  # written before manifests existed: nothing to check against
    files = manifest.get("files")
    if not files:
        raise UsageError(f"{folder} holds no complete result set (its last run, {_last_run(manifest)}, did not "
                         "finish); run that command again")
    for name in names:
        entry = files.get(name)
        if entry is not None and (folder / name).is_file() and sha256(folder / name) != entry.get("sha256"):
            raise UsageError(f"{folder / name} is not the file its run wrote (SHA-256 differs from {folder / MANIFEST}"
                             "); the folder mixes two runs' results: run the command again into a new folder")


def _last_run(manifest: dict[str, Any]) -> str:
    last = manifest.get("last_run") or {}
    return f"{last.get('command', '?')} -> {last.get('status', '?')}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class OutputFolder:
    """A claimed output folder; use as a context manager (see the module docstring)."""

    def __init__(self, out: str | os.PathLike | None, command: str, force: bool = False, resume: bool = False) -> None:
        self.path = check_out_path(out)
        self.command = command
        self.force = force
        self.resume = resume
        self.previous: list[str] = []
        self.staging: Path | None = None
        self._lock_fd: int | None = None
        self._files: dict[str, Any] | None = None
        self._owned: set[str] = set()
        self._started = _now()

    # -- claim and release
    def __enter__(self) -> OutputFolder:
        self._refuse_busy()  # first: a busy folder's advice is to wait, whatever it holds
        self._refuse_results()  # before the lock file exists: a refused run creates nothing
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            self._refuse_results()  # again under the lock: another run may have finished meanwhile
            self._remove_leftovers()
            self._files = read_manifest(self.path).get("files")
            self._owned = owned_names(self.path)
            self._record("running")
            self.staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.path))
        except OSError as e:
            self._unlock()
            raise (describe_os_error(e) or e) from None
        return self

    def _remove_leftovers(self) -> None:
        """Staging folders and temporary files of a run killed outright (SIGKILL): under the lock, nobody owns them."""
        for stale in self.path.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for folder in (self.path, self.path / "checkpoints"):
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def _refuse_results(self) -> None:
        """Refuse a folder holding another run's results, unless ``force`` or ``resume``; ``force`` replaces only
        what the manifest says the project wrote, never a file or folder of the user's."""
        self.previous = results_in(self.path)
        if self.previous and not (self.force or self.resume):
            self._unlock()
            shown = ", ".join(n for n in self.previous if n != MANIFEST)
            raise OutputExists(
                f"{self.path} already holds another run's results ({shown}); pass a new folder as out (--out), or "
                "force=True (--force) to replace those results as a whole (a stopped search continues with "
                "resume=True (--resume))")
        foreign = [n for n in self.previous if n != MANIFEST and n not in owned_names(self.path)]
        if foreign:
            self._unlock()
            raise OutputExists(
                f"{self.path} holds {', '.join(foreign)}, which no hmnas command wrote there ({MANIFEST} does not list "
                "them); nothing was removed: pass a new folder as out (--out), or move them away yourself")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if error is not None:
                stop = interruption_in(error)
                cause = stop or error
                self._record("interrupted" if stop else "failed", f"{type(cause).__name__}: {cause}")
        except OSError as e:  # never hide the run's own error behind a failure to record it
            _logger.warning("could not record the run's status in %s: %s", self.path / MANIFEST, e)
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
            self._unlock()

    def _refuse_busy(self) -> None:
        """Refuse a folder whose lock another run holds, without creating anything."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR)
        except OSError:
            return  # no lock file (or none we can open): nobody holds it, or the claim below says why
        try:
            self._flock(fd)
        finally:
            os.close(fd)  # closing releases the probe's own lock

    def _flock(self, fd: int) -> None:
        """Take the folder's lock on ``fd``, or refuse naming who holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another process"
            raise OutputBusy(f"{self.path} is being written by another run ({holder}); wait for it to end or pass "
                             "another folder as out (--out)") from None

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            self._flock(fd)
        except OutputBusy:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()}: {self.command}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- writing
    def staged(self, name: str) -> Path:
        """Where to write result ``name`` until :meth:`commit` moves it in."""
        assert self.staging is not None, "use the OutputFolder as a context manager"
        return self.staging / name

    def clear_previous(self, writes: tuple[str, ...] = ()) -> None:
        """Remove the old run's results as a whole (``force``), for commands that write progress in place; the
        names in ``writes`` are claimed in the manifest before the command writes them there."""
        if self.force and not self.resume:
            self._remove(self.previous)
            self._files = None
            self.previous = []
        self.owns(*writes)

    def owns(self, *names: str) -> None:
        """Record that this command writes ``names`` in place (so a later ``force`` may replace them), refusing a
        name that already holds something the project did not write."""
        new = [n for n in names if n not in self._owned]
        foreign = [n for n in new if (self.path / n).is_symlink()
                   or ((self.path / n).exists() and _holds_something(self.path / n))]
        if foreign:
            raise OutputExists(f"{self.path} holds {', '.join(foreign)}, which no hmnas command wrote there; "
                               "nothing was overwritten: pass a new folder as out (--out), or move them away yourself")
        if new:
            self._owned.update(new)
            self._record("running")

    def commit(self, record: str) -> None:
        """Move every staged result in, ``record`` last, replacing the old set as a whole; then list them."""
        assert self.staging is not None
        names = sorted(n for n in os.listdir(self.staging) if n != record) + [record]
        self.owns(*names)  # refuses, before anything moves, a name that holds something of the user's
        self._files = None
        self._record("committing")  # from here until the manifest lists the new set, the set reads as incomplete
        if self.force and not self.resume:
            self._remove([n for n in self.previous if n not in names and n != MANIFEST])
        for name in names:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(self.staging / name, target)
        fsync_folder(self.path)
        in_place = [n for n in sorted(self._owned) if n not in names and (self.path / n).is_file()]
        self._files = _listing(self.path, names + in_place)
        self.previous = []
        self._record("finished")

    def _remove(self, names: list[str]) -> None:
        for name in names:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()

    def _record(self, status: str, error: str | None = None) -> None:
        """Rewrite ``manifest.json``: the committed set (if any) and how the last run went."""
        last: dict[str, Any] = {"command": self.command, "argv": sys.argv[1:], "pid": os.getpid(), "status": status,
                                "started": self._started}
        if status != "running":
            last["ended"] = _now()
        if error:
            last["error"] = error
        write_json(self.path / MANIFEST, {"format": "hmnas-manifest/1", "files": self._files,
                                          "owned": sorted(self._owned), "last_run": last})


def owned_names(folder: Path) -> set[str]:
    """Top-level names the project wrote in ``folder``: those its manifest lists or claims."""
    manifest = read_manifest(folder)
    files = manifest.get("files") or {}
    owned = manifest.get("owned") or []
    return {str(n).split("/")[0] for n in files} | {str(n) for n in owned if isinstance(n, str)}


def _listing(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of every file of ``names`` in ``folder``, files inside folders by their relative path."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        top = folder / name
        paths = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for p in paths:
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return out
