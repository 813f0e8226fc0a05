"""Nothing lost, nothing mixed: output folders are claimed, locked and replaced whole; a failed or interrupted
command leaves the previous results and says why; files are atomic, strict JSON, with ordinary permissions.

Real `hmnas` processes on real folders. A full disk is a 1 MiB tmpfs and a read-only folder a read-only
tmpfs, mounted for the test (root only; skipped where mounting is not allowed).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE_ARCH = ROOT / "export" / "archs" / "nb201_digits_smoke.json"
TINY = ["search", "--space", "nb201", "--space-args", '{"channels": 4}', "--subset", "128", "--batch-size", "32",
        "--epochs", "2", "--no-progress"]
TIMEOUT = 300


def hmnas(*args: str) -> list[str]:
    return [sys.executable, "-m", "hmnas_nni.cli", *args]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore", **extra}


def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
    """Run `hmnas` to completion."""
    return subprocess.run(hmnas(*args), cwd=ROOT, env=env(**extra), capture_output=True, text=True, timeout=TIMEOUT)


def ours(done: subprocess.CompletedProcess, command: str) -> list[str]:
    """The lines of stderr our error handler printed."""
    return [line for line in done.stderr.splitlines() if line.startswith(f"hmnas {command}:")]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in ("manifest.json", ".hmnas.lock")}


def strays(folder: Path) -> list[str]:
    """Temporary files or staging folders left behind."""
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".") and p.name != ".hmnas.lock"]


def strict(path: Path) -> object:
    """Parse JSON refusing NaN / Infinity (what other JSON readers do)."""
    def refuse(token: str) -> None:
        raise ValueError(f"{path}: non-standard JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "search"
    done = run(*[a for a in TINY if a != "--no-progress"], "--out", str(out))  # progress asked, log not a terminal
    assert done.returncode == 0, done.stderr[-3000:]
    (out.parent / "search.log").write_text(done.stderr)
    return out


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "retrain"
    done = run("retrain", str(SMOKE_ARCH), "--dataset", "digits", "--epochs", "1", "--limit-train", "256",
               "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    (out.parent / "retrain.log").write_text(done.stderr)
    return out


def test_a_log_that_is_not_a_terminal_gets_one_line_per_epoch(searched: Path, retrained: Path) -> None:
    search_log = (searched.parent / "search.log").read_text()
    retrain_log = (retrained.parent / "retrain.log").read_text()
    for log in (search_log, retrain_log):
        assert "\r" not in log and "it/s" not in log  # no progress-bar redraws
    epochs = [line for line in search_log.splitlines() if " INFO epoch " in line]
    assert len(epochs) == 2 and all("derived" in line and "ops" in line and " s" in line for line in epochs)
    assert "retrain epoch 1/1: train loss" in retrain_log


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    """``mount(size, read_only)`` -> a fresh tmpfs folder, unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str = "1m", read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


# ------------------------------------------------------------------------------------------- results lost
def test_a_finished_search_is_not_overwritten(searched: Path) -> None:
    before = snapshot(searched)
    done = run(*TINY, "--out", str(searched))
    assert done.returncode == 2, done.stderr[-3000:]
    line = ours(done, "search")
    assert len(line) == 1 and f"{searched} already holds another run's results" in line[0]
    assert "--force" in line[0] and "--resume" in line[0] and "Traceback" not in done.stderr
    assert snapshot(searched) == before
    assert not (searched / "checkpoints" / "last-v1.ckpt").exists()


def test_force_replaces_a_retrain_folder_as_a_whole(retrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "was-retrain"
    shutil.copytree(retrained, out)
    refused = run(*TINY, "--out", str(out))
    assert refused.returncode == 2 and "model.safetensors" in ours(refused, "search")[0]
    done = run(*TINY, "--out", str(out), "--force")
    assert done.returncode == 0, done.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert not names & {"model.safetensors", "config.json"}, names  # nothing of the retrain is left beside it
    assert strict(out / "metrics.json")["status"] == "finished"
    assert json.loads((out / "arch.json").read_text())["strategy"] == "hmnas"
    manifest = strict(out / "manifest.json")
    assert set(manifest["files"]) == {"arch.json", "cells.png", "metrics.json", "supernet.safetensors"}
    assert manifest["last_run"]["status"] == "finished" and not strays(out)


def test_a_second_run_into_a_busy_folder_is_refused_with_the_first_pid(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    first = subprocess.Popen(hmnas("retrain", str(SMOKE_ARCH), "--dataset", "digits", "--epochs", "5000",
                                   "--no-progress", "--out", str(out)), cwd=ROOT, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".hmnas.lock"
    deadline = time.monotonic() + TIMEOUT
    while not (lock.is_file() and f"PID {first.pid}" in lock.read_text()):
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    second = run("retrain", str(SMOKE_ARCH), "--dataset", "digits", "--epochs", "1", "--no-progress",
                 "--out", str(out), "--force")
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is being written by another run (PID {first.pid}: hmnas retrain)" in ours(second, "retrain")[0]
    assert first.poll() is None  # the first run goes on; stop it: it was still training, so it leaves no results
    os.kill(first.pid, signal.SIGTERM)
    _, err = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 128 + signal.SIGTERM and "hmnas retrain: stopped by SIGTERM" in err, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [".hmnas.lock", "manifest.json"]
    last = strict(out / "manifest.json")["last_run"]
    assert last["pid"] == first.pid and last["status"] == "interrupted"


def test_files_are_strict_json_with_ordinary_permissions(searched: Path, retrained: Path) -> None:
    from hmnas_nni.format.files import strict_json

    umask = os.umask(0o022)
    os.umask(umask)
    for folder in (searched, retrained):
        for path in folder.rglob("*"):
            if path.is_file() and "nni" not in path.parts:  # NNI's own working files are NNI's business
                assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
            if path.suffix == ".json" and "nni" not in path.parts:
                strict(path)
    assert json.loads(strict_json({"a": math.nan, "b": [math.inf], "c": 1.5})) == {"a": None, "b": [None], "c": 1.5}


# ------------------------------------------------------------------------------------------- torn files
def test_a_full_disk_keeps_the_last_checkpoint_and_records_the_failure(tmpfs, tmp_path: Path) -> None:
    out = tmpfs("1m") / "run"  # one checkpoint (~0.6 MB) fits, the next one beside it does not
    done = run(*TINY, "--epochs", "3", "--out", str(out))
    assert done.returncode == 4, done.stderr[-3000:]
    line = ours(done, "search")
    assert len(line) == 1 and "no space left on the device while writing" in line[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    metrics = strict(out / "metrics.json")
    assert metrics["status"] == "failed" and "No space left on device" in metrics["error"]
    assert [h["epoch"] for h in metrics["history"]] == list(range(ckpt["epoch"] + 1))
    assert not strays(out) and not (out / "arch.json").exists()
    resumed = run("search", "--resume", str(out), "--out", str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [h["epoch"] for h in strict(tmp_path / "resumed" / "metrics.json")["history"]] == [0, 1, 2]


def test_sigterm_during_export_keeps_the_previous_files(retrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    args = ["export", str(retrained / "arch.json"), "--weights", str(retrained / "model.safetensors"), "--out",
            str(out), "--fp16"]
    assert run(*args).returncode == 0
    before = snapshot(out)
    proc = subprocess.Popen(hmnas(*args, "--force"), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not list(out.glob(".staging-*/model.onnx.*")) and not list(out.glob(".staging-*/model.onnx")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert f"hmnas export: stopped by SIGTERM; {out} keeps the results it held before" in err
    assert snapshot(out) == before and not strays(out)
    last = strict(out / "manifest.json")["last_run"]
    assert last["status"] == "interrupted" and "SIGTERM" in last["error"]


# ------------------------------------------------------------------------------------ errors name their cause
def test_read_only_output_folder_fails_before_training(tmpfs) -> None:
    out = tmpfs("1m", read_only=True) / "model"
    done = run("retrain", str(SMOKE_ARCH), "--dataset", "digits", "--epochs", "50", "--out", str(out))
    assert done.returncode == 2, done.stderr[-3000:]
    line = ours(done, "retrain")
    assert len(line) == 1 and f"cannot write {out}: Read-only file system" in line[0]
    assert "Traceback" not in done.stderr and "%|" not in done.stderr  # no progress bar: nothing trained


def test_read_only_home_names_what_nni_writes_there(tmpfs, tmp_path: Path) -> None:
    home = tmpfs("1m", read_only=True)
    out = tmp_path / "run"
    done = run(*TINY, "--out", str(out), HOME=str(home), MPLCONFIGDIR=str(tmp_path / "mpl"))
    assert done.returncode == 2, done.stderr[-3000:]
    line = ours(done, "search")
    assert len(line) == 1 and f"cannot write {home}/nni-experiments: Read-only file system" in line[0]
    assert "set HOME to a folder you can write to" in line[0] and "Traceback" not in done.stderr
    assert "needs to be run before" not in done.stderr  # the failure handler no longer hides the cause
    metrics = strict(out / "metrics.json")
    assert metrics["status"] == "failed" and "Read-only file system" in metrics["error"]


def test_programming_errors_are_not_bad_input() -> None:
    from hmnas_nni.cli.errors import classify
    from hmnas_nni.format.errors import Interrupted

    assert classify(TypeError("f() got an unexpected keyword argument 'x'")) is None
    assert classify(AttributeError("'NoneType' object has no attribute 'out'")) is None
    assert classify(ValueError("channels must be positive"))[0] == 2
    assert classify(Interrupted(signal.SIGTERM))[0] == 143
    assert classify(OSError(28, "No space left on device", "/x/last.ckpt"))[0] == 4


def test_the_search_records_what_the_hierarchy_rules_removed(searched: Path) -> None:
    final = json.loads((searched / "metrics.json").read_text())["final"]
    removed = final["removed_by_rules"]
    assert isinstance(removed, dict)
    reasons = [why for entries in removed.values() for why in entries.values()]
    assert all(isinstance(why, str) and why.startswith("rule") for why in reasons)
