"""The README's two set-up commands run as root (no sudo there) and as a user with sudo, and CI runs the second."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    """The bash blocks of the README's set-up section."""
    section = (ROOT / "README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_no_setup_command_needs_sudo() -> None:
    commands = setup_commands()
    assert len(commands) == 2
    for command in commands:
        assert not re.search(r"(^|&&\s*)sudo\s", command), command  # `$(command -v sudo)` is empty as root


def test_ci_runs_the_readme_test_command() -> None:
    extract = (ROOT / ".ci" / "run").read_text().split("command=$(", 1)[1].split(" README.md)", 1)[0]
    done = subprocess.run(["bash", "-c", f"{extract} README.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == setup_commands()[1].strip()
