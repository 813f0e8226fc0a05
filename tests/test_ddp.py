"""One HM-NAS supernet over 2 CPU processes (Lightning DDP, gloo): every rank holds the same architecture.

`hmnas search --devices 2 --distributed ddp` is run through the CLI in a subprocess, because Lightning's DDP
launcher starts rank 1 by re-running the command line. Each rank writes, after every epoch, a hash of its
architecture parameters and mask scores, its masks' live lists and its derived architecture to
``out/ranks/rank{r}.json``; they must be identical while each rank trains on its own half of the data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_cpu_ranks_keep_identical_architecture_and_masks(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    (out / "checkpoints").mkdir(parents=True)
    cmd = [sys.executable, "-m", "hmnas_nni.cli", "search", "--space", "nb201", "--space-args", '{"channels": 4}',
           "--dataset", "digits", "--subset", "256", "--batch-size", "32", "--epochs", "3", "--seed", "1",
           "--accelerator", "cpu", "--devices", "2", "--distributed", "ddp", "--no-progress", "--out", str(out)]
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    epochs0, epochs1 = ranks[0]["epochs"], ranks[1]["epochs"]
    assert [e["epoch"] for e in epochs0] == [e["epoch"] for e in epochs1] == [0, 1, 2]
    for a, b in zip(epochs0, epochs1):
        assert a["step"] == b["step"]
        assert a["arch_sha256"] == b["arch_sha256"], f"epoch {a['epoch']}: architecture parameters differ"
        assert a["live"] == b["live"], f"epoch {a['epoch']}: mask live lists differ"
        assert a["arch"] == b["arch"], f"epoch {a['epoch']}: derived architectures differ"
        assert a["data_sha256"] != b["data_sha256"], f"epoch {a['epoch']}: both ranks trained on the same batches"
    # the architecture really trained (warm-up leaves it alone, the architecture and masking phases move it)
    assert epochs0[0]["arch_sha256"] != epochs0[1]["arch_sha256"] != epochs0[2]["arch_sha256"]
    assert epochs0[0]["arch_tensors"] > 0 and epochs0[0]["live"]

    # rank 0 alone wrote the results, and the exported architecture is the ranks' one
    exported = json.loads((out / "arch.json").read_text())
    assert exported == epochs0[-1]["arch"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["final"]["world_size"] == 2
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    assert done.stdout.count('"derived_val_acc"') == 1  # one summary, from rank 0
