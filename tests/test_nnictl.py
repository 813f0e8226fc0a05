"""``nnictl create`` runs HM-NAS trials that NNI's manager, REST API and web UI see (real NNI, no mocks)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
ARTIFACTS = ROOT / "test-artifacts"
EPOCH_KEYS = {"default", "epoch", "phase", "supernet_val_acc", "derived_val_acc", "derivation_gap", "ops_kept",
              "edges_kept", "sparsity"}
FINAL_KEYS = EPOCH_KEYS | {"params"}
FINISHED = {"DONE", "STOPPED", "ERROR"}
TRIAL_ENDED = {"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"}

pytestmark = pytest.mark.integration


@dataclass
class Experiment:
    """A running nnictl experiment: its port, id, environment and what the REST API said at the end."""

    port: int
    env: dict[str, str]
    workdir: Path
    exp_id: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def api(self, route: str) -> Any:
        """GET ``/api/v1/nni/<route>`` on 127.0.0.1 and decode the JSON answer."""
        url = f"http://127.0.0.1:{self.port}/api/v1/nni/{route}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = answer.read().decode()
        return json.loads(body) if body.lstrip().startswith(("{", "[")) else body

    def logs(self) -> str:
        """The manager and dispatcher logs plus every trial's stderr, for failure messages."""
        parts = []
        for path in sorted(self.workdir.rglob("*")):
            if path.is_file() and path.name in {"nnimanager.log", "dispatcher.log", "trial.stderr", "trial.log"}:
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nnictl(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run nnictl from this interpreter's environment."""
    return subprocess.run([sys.executable, "-m", "nni.tools.nnictl.nnictl", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def write_config(source: Path, tmp_path: Path, **overrides: Any) -> tuple[Path, Path]:
    """Copy an experiment config into ``tmp_path`` with absolute paths and a temporary working directory."""
    config = yaml.safe_load(source.read_text())
    config["trialCodeDirectory"] = str((source.parent / config.get("trialCodeDirectory", ".")).resolve())
    if "searchSpaceFile" in config:
        config["searchSpaceFile"] = str((source.parent / config["searchSpaceFile"]).resolve())
    workdir = tmp_path / "nni-experiments"
    config["experimentWorkingDirectory"] = str(workdir)
    config.update(overrides)
    if "searchSpace" in overrides:
        config.pop("searchSpaceFile", None)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, workdir


def nni_env(tmp_path: Path) -> dict[str, str]:
    """Environment for nnictl and its trials: this venv first on PATH, a private HOME for nnictl's registry."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)  # nnictl keeps its experiment list in ~/nni-experiments/.experiment
    env.setdefault("MPLBACKEND", "Agg")
    return env


@contextlib.contextmanager
def run_experiment(config: Path, workdir: Path, env: dict[str, str], timeout: float) -> Iterator[Experiment]:
    """``nnictl create`` on a free port, wait until it finishes, yield it, always ``nnictl stop`` it."""
    exp = Experiment(port=free_port(), env=env, workdir=workdir)
    try:
        created = nnictl("create", "--config", str(config), "--port", str(exp.port), env=env)
        assert created.returncode == 0, f"nnictl create failed:\n{created.stdout}\n{created.stderr}"
        exp.exp_id = exp.api("experiment")["id"]
        deadline = time.monotonic() + timeout
        while True:
            exp.status = exp.api("check-status")
            if exp.status.get("status") in FINISHED:
                break
            if exp.status.get("status") == "TUNER_NO_MORE_TRIAL":  # grid exhausted before maxTrialNumber
                if all(t["status"] in TRIAL_ENDED for t in exp.api("trial-jobs")):
                    break
            assert time.monotonic() < deadline, f"experiment not done after {timeout:.0f}s: {exp.status}\n{exp.logs()}"
            time.sleep(2)
        exp.trials = exp.api("trial-jobs")
        exp.metrics = exp.api("metric-data")
        yield exp
    finally:
        stop = nnictl("stop", exp.exp_id, env=env) if exp.exp_id else nnictl("stop", "--port", str(exp.port), env=env)
        if stop.returncode != 0:
            print(f"nnictl stop failed:\n{stop.stdout}\n{stop.stderr}", file=sys.stderr)


def metric_values(exp: Experiment, trial_id: str, kind: str) -> list[dict[str, Any]]:
    """Decoded dict metrics of one trial, ``kind`` PERIODICAL (intermediate) or FINAL, in report order."""
    rows = [m for m in exp.metrics if m["trialJobId"] == trial_id and m["type"] == kind]
    values = []
    for row in sorted(rows, key=lambda m: int(m["sequence"])):
        value = json.loads(row["data"])
        values.append(json.loads(value) if isinstance(value, str) else value)
    return values


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Experiment]:
    """experiments/smoke.yml run to the end under nnictl."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    config, workdir = write_config(EXPERIMENTS / "smoke.yml", tmp_path)
    with run_experiment(config, workdir, nni_env(tmp_path), timeout=900) as exp:
        yield exp


def test_smoke_trials_succeed_with_metrics_and_architecture(smoke: Experiment) -> None:
    assert smoke.status["status"] in {"DONE", "TUNER_NO_MORE_TRIAL"}, f"{smoke.status}\n{smoke.logs()}"
    assert len(smoke.trials) == 2, smoke.trials
    for trial in smoke.trials:
        tid = trial["trialJobId"]
        assert trial["status"] == "SUCCEEDED", f"trial {tid}: {trial['status']}\n{smoke.logs()}"
        epochs = metric_values(smoke, tid, "PERIODICAL")
        assert epochs, f"trial {tid} reported no intermediate metric"
        for value in epochs:
            assert EPOCH_KEYS <= set(value), sorted(value)
            assert all(isinstance(v, (int, float)) for v in value.values()), value
            assert value["default"] == value["derived_val_acc"]
        assert [v["epoch"] for v in epochs] == sorted(v["epoch"] for v in epochs)
        finals = metric_values(smoke, tid, "FINAL")
        assert len(finals) == 1, finals
        final = finals[0]
        assert FINAL_KEYS <= set(final), sorted(final)
        assert final["params"] > 0 and 0.0 <= final["default"] <= 1.0
        out = Path(trial["logPath"])
        arch = json.loads((out / "arch.json").read_text())
        assert arch["strategy"] == "hmnas" and arch["space"] == "nb201"
        assert (out / "metrics.json").is_file() and (out / "cells.png").is_file()
        params = json.loads(trial["hyperParameters"][0])["parameters"]
        assert set(params) == {"sparsity"}


def test_smoke_shows_a_search_accuracy_rising_and_ops_pruned(smoke: Experiment) -> None:
    """What a new user first sees in the web UI: accuracy climbing from chance, the cell losing ops."""
    pruned = []
    for trial in smoke.trials:
        epochs = metric_values(smoke, trial["trialJobId"], "PERIODICAL")
        assert epochs[0]["default"] < 0.3 and epochs[-1]["default"] > 0.8, [e["default"] for e in epochs]
        pruned.append(epochs[0]["ops_kept"] - epochs[-1]["ops_kept"])
    assert max(pruned) >= 6, pruned  # at least one trial's masking removed a fifth of the 30 ops


def test_web_ui_renders_trial_table(smoke: Experiment, tmp_path: Path) -> None:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium): web UI rendering not checked")
    ARTIFACTS.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{smoke.port}/detail"
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000",
            "--virtual-time-budget=15000"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    (ARTIFACTS / "webui-detail.html").write_text(dom.stdout)
    shot = ARTIFACTS / "webui-detail.png"
    subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert "Trial jobs" in dom.stdout, f"trial table missing from {url}:\n{dom.stdout[-2000:]}\n{dom.stderr[-2000:]}"
    assert "ms-DetailsRow" in dom.stdout  # a rendered table row
    for trial in smoke.trials:
        assert trial["trialJobId"] in dom.stdout, f"trial {trial['trialJobId']} not in the web UI table"
    assert "SUCCEEDED" in dom.stdout
    assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot of the web UI"


def test_bad_parameter_fails_the_trial_with_one_line(tmp_path: Path) -> None:
    config, workdir = write_config(EXPERIMENTS / "smoke.yml", tmp_path, maxTrialNumber=1,
                                   searchSpace={"tau": {"_type": "choice", "_value": [-1.0]}})
    with run_experiment(config, workdir, nni_env(tmp_path), timeout=120) as exp:
        assert exp.status["status"] in {"DONE", "TUNER_NO_MORE_TRIAL"}, exp.status
        assert [t["status"] for t in exp.trials] == ["FAILED"], exp.trials
        trial = exp.trials[0]
        stderr = exp.api(f"trial-file/{trial['trialJobId']}/stderr")
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "tau" in errors[0], stderr
        assert "Traceback" not in stderr, stderr
        assert not list(Path(trial["logPath"]).glob("*.json")), "a failed trial left JSON output behind"
        assert not metric_values(exp, trial["trialJobId"], "FINAL")
