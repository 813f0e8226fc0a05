"""Faults during a real search (SIGKILL, SIGTERM, a non-finite architecture parameter) through the `hmnas` CLI.

A search killed after its first checkpoint, resumed, stopped again by SIGTERM and resumed again must end with
exactly the architecture and metrics history of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["search", "--space", "nb201", "--space-args", '{"channels": 4}', "--dataset", "digits", "--subset", "128",
        "--batch-size", "32", "--epochs", "5", "--seed", "3", "--no-progress"]  # epochs left after a stop
TIMEOUT = 240


def hmnas(*args: str) -> list[str]:
    """The `hmnas` command line, run by this interpreter."""
    return [sys.executable, "-m", "hmnas_nni.cli", *args]


def env() -> dict[str, str]:
    """The test environment, with a non-interactive matplotlib backend."""
    return {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}


def run(*args: str) -> subprocess.CompletedProcess:
    """Run `hmnas` to completion."""
    return subprocess.run(hmnas(*args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=TIMEOUT)


def wait_for(predicate, proc: subprocess.Popen, what: str) -> None:
    """Poll ``predicate`` until it holds; fail if the process exits first or time runs out."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"search exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} after {TIMEOUT}s"
        time.sleep(0.1)


def checkpoint_epoch(out: Path) -> int:
    """Epoch of ``out/checkpoints/last.ckpt`` (-1 while there is none or it is being replaced)."""
    path = out / "checkpoints" / "last.ckpt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - absent or mid-replace: not there yet
        return -1


def history(out: Path) -> list[dict]:
    """Per-epoch metrics in ``out/metrics.json``, without the timing/memory fields that legitimately differ."""
    doc = json.loads((out / "metrics.json").read_text())
    drop = {"epoch_seconds", "peak_memory_mb"}
    return [{k: v for k, v in h.items() if k not in drop} for h in doc["history"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same search run start to finish."""
    out = tmp_path_factory.mktemp("resume") / "straight"
    done = run(*TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_sigkill_then_sigterm_then_resume_gives_the_uninterrupted_architecture(uninterrupted: Path,
                                                                                tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(hmnas(*TINY, "--out", str(out)), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: checkpoint_epoch(out) >= 0, proc, "the first epoch's checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_after = checkpoint_epoch(out)  # 0, or 1 where the next epoch ended before the kill landed
    assert killed_after in (0, 1) and not (out / "arch.json").exists()

    # resume (options come from the checkpoint) and stop it with SIGTERM once one more epoch is checkpointed
    proc = subprocess.Popen(hmnas("search", "--resume", str(out), "--no-progress"), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: checkpoint_epoch(out) > killed_after, proc, "the next epoch's checkpoint")
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and f"hmnas search --resume {out}" in err, err[-2000:]
    assert (out / "checkpoints" / "interrupted.ckpt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    # the signal may land after epoch 2's last step (Lightning then ends the epoch first): the history stops
    # exactly where the checkpoint that --resume continues from does
    assert metrics["status"] == "interrupted", metrics
    assert [h["epoch"] for h in metrics["history"]] == list(range(checkpoint_epoch(out) + 1))

    done = run("search", "--resume", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "arch.json").read_bytes() == (uninterrupted / "arch.json").read_bytes()
    assert history(out) == history(uninterrupted)
    assert [h["phase"] for h in history(out)] == ["warmup", "architecture", "masking", "masking", "masking"]
    assert json.loads((out / "metrics.json").read_text())["status"] == "finished"


def test_numerical_fault_exits_with_one_message_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "fault"
    # an absurd architecture learning rate: alpha overflows on the first architecture step (epoch 1)
    done = run(*TINY, "--out", str(out), "--arc-lr", "1e30", "--warmup-epochs", "1", "--arch-epochs", "1")
    assert done.returncode == 3, done.stderr[-3000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("hmnas search:")]
    assert ours == [ours[0]] and "numerical fault: non-finite architecture parameter at epoch 1" in ours[0]
    assert "phase 'architecture'" in ours[0] and "Traceback" not in done.stderr
    assert checkpoint_epoch(out) == 0  # the warm-up epoch's checkpoint, intact
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "NumericalFault" in metrics["error"]
    assert [h["epoch"] for h in metrics["history"]] == [0]
    assert not (out / "arch.json").exists()


def test_sigterm_at_an_epochs_end_is_still_an_interruption(tmp_path: Path, one_thread: None) -> None:
    """Lightning raises its own exit (status 0) for a SIGTERM between an epoch's last step and its end."""
    from hmnas_nni.search.config import SearchConfig
    from hmnas_nni.search.reliability import SearchInterrupted
    from hmnas_nni.search.run import run_search

    config = SearchConfig(space="nb201", space_args={"channels": 4}, dataset="digits", subset=128, batch_size=32,
                          epochs=4, seed=3, progress=False, out=str(tmp_path / "run"))

    def terminate_after_epoch_1(metrics: dict) -> None:
        if metrics["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SearchInterrupted, match="stopped by SIGTERM") as stop:
        run_search(config.validate(), on_epoch_end=terminate_after_epoch_1)
    assert stop.value.signum == signal.SIGTERM
    out = Path(config.out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert checkpoint_epoch(out) == 1 and (out / "checkpoints" / "interrupted.ckpt").is_file()
    assert not (out / "arch.json").exists()
