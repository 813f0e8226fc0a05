"""experiments/gpu_check.sh, the GPU run kept ready for a machine with an NVIDIA GPU: it is valid bash, refuses a
folder holding results, and every ``hmnas`` command it runs parses with this checkout's command line."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from hmnas_nni.cli.main import build_parser

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gpu_check.sh"


def _hmnas_commands() -> list[list[str]]:
    """The argument lists of every ``.venv/bin/hmnas`` step (continuation lines joined, variables filled)."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if ".venv/bin/hmnas " in line:
            argv = shlex.split(line.split(".venv/bin/hmnas ", 1)[1].replace('"$OUT', '"runs/gpu-check'))
            commands.append(argv)
    return commands


def test_the_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_every_hmnas_step_parses() -> None:
    commands = _hmnas_commands()
    assert [c[0] for c in commands] == ["bench", "compare"]
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.func is not None


def test_a_folder_with_results_is_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    done = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "holds another run's results" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
