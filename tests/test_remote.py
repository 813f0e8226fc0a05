"""HM-NAS trials on other machines: NNI's remote (SSH) training service against a real sshd on 127.0.0.1, and
the Kubernetes-based configs checked by NNI's own config classes (no cluster contacted).

The remote test starts OpenSSH's sshd as root from a config file in tmp_path (throwaway host and user keys, a
free port, HOME of the SSH sessions inside tmp_path), runs experiments/hmnas_remote.yml with its machine list
pointed there through `nnictl create`, polls NNI's REST API until the trial ends, and stops both.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.test_nnictl import Experiment, free_port, metric_values, nni_env, run_experiment, write_config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PACKAGES = ("hmnas_nni", "search_spaces", "export", "experiments")

pytestmark = pytest.mark.integration


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"sshd did not listen on {port} within {timeout}s")


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[dict]:
    """An sshd on a free 127.0.0.1 port accepting a throwaway key for this user; stopped afterwards."""
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        pytest.fail("OpenSSH server missing: apt-get install -y openssh-server")
    if os.geteuid() != 0:
        pytest.fail("the remote-training test starts sshd, which needs root")
    ssh = tmp_path / "ssh"
    ssh.mkdir(mode=0o700)
    home = tmp_path / "remote-home"
    home.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(ssh / name)],
                       check=True)
    (ssh / "authorized_keys").write_text((ssh / "user_key.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    port = free_port()
    config = ssh / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {ssh / 'host_key'}", f"PidFile {ssh / 'sshd.pid'}",
        f"AuthorizedKeysFile {ssh / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "Subsystem sftp internal-sftp", f"SetEnv HOME={home}", "LogLevel INFO", "",
    ]))
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_port(port, proc)
        yield {"port": port, "key": ssh / "user_key", "home": home, "user": os.environ.get("USER") or "root"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _code_dir(tmp_path: Path) -> Path:
    """The project's packages only: what NNI uploads to the machine (the repository holds a multi-GB venv)."""
    code = tmp_path / "code"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, code / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return code


def test_remote_ssh_trial_runs_a_search_and_reports(sshd: dict, tmp_path: Path) -> None:
    machine = {"host": "127.0.0.1", "port": sshd["port"], "user": sshd["user"], "sshKeyFile": str(sshd["key"]),
               "pythonPath": str(Path(sys.executable).parent)}
    source = yaml.safe_load((EXPERIMENTS / "hmnas_remote.yml").read_text())
    training_service = {**source["trainingService"], "machineList": [machine]}
    config, workdir = write_config(EXPERIMENTS / "hmnas_remote.yml", tmp_path, trainingService=training_service,
                                   trialCodeDirectory=str(_code_dir(tmp_path)), nniManagerIp="127.0.0.1",
                                   maxExperimentDuration="8m")
    env = nni_env(tmp_path)
    with run_experiment(config, workdir, env, timeout=420) as exp:
        _check_trial(exp, sshd["home"])


def _check_trial(exp: Experiment, remote_home: Path) -> None:
    assert len(exp.trials) == 1, f"{exp.trials}\n{exp.logs()}"
    trial = exp.trials[0]
    tid = trial["trialJobId"]
    remote_logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in remote_home.rglob("trial.log"))
    assert trial["status"] == "SUCCEEDED", f"trial {tid}: {trial['status']}\n{exp.logs()}\n{remote_logs}"
    epochs = metric_values(exp, tid, "PERIODICAL")
    assert [m["epoch"] for m in epochs] == [0, 1, 2], epochs
    final = metric_values(exp, tid, "FINAL")
    assert len(final) == 1 and 0.0 <= final[0]["default"] <= 1.0 and final[0]["params"] > 0
    # the search ran on the SSH side: its outputs are under the sessions' HOME, not the manager's
    archs = list(remote_home.rglob("arch.json"))
    assert archs, f"no arch.json under the remote HOME {remote_home}"
    arch = json.loads(archs[0].read_text())
    assert arch["space"] == "nb201" and arch["space_args"]["channels"] == 4


@pytest.mark.parametrize("name,platform", [("hmnas_kubeflow.yml", "KubeflowConfig"),
                                           ("hmnas_frameworkcontroller.yml", "FrameworkControllerConfig")])
def test_kubernetes_configs_pass_nni_validation(name: str, platform: str) -> None:
    from nni.experiment.config import ExperimentConfig

    config = ExperimentConfig.load(str(EXPERIMENTS / name))
    config.validate()
    assert type(config.training_service).__name__ == platform
    assert "hmnas_nni.cli trial" in config.trial_command
    space = json.loads((EXPERIMENTS / config.search_space_file).read_text())
    assert space, "empty search space"


def test_remote_config_passes_nni_validation_with_a_key(tmp_path: Path) -> None:
    from nni.experiment.config import ExperimentConfig

    key = tmp_path / "id"
    key.write_text("not checked by validation, only its presence")
    doc = yaml.safe_load((EXPERIMENTS / "hmnas_remote.yml").read_text())
    doc["trainingService"]["machineList"][0]["sshKeyFile"] = str(key)
    path = tmp_path / "remote.yml"
    path.write_text(yaml.safe_dump(doc))
    config = ExperimentConfig.load(str(path))
    config.validate()
    assert type(config.training_service).__name__ == "RemoteConfig"
    bad = dict(doc, trainingService={**doc["trainingService"], "machineList": []})
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="at least one machine"):
        ExperimentConfig.load(str(path)).validate()
