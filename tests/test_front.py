"""The latency front (``python -m hmnas_nni.experiments.front``): HM-NAS's family beside NNI's Proxyless and DARTS,
every network timed in ONNX Runtime, then ``--retrain`` retrains each from scratch and adds its test accuracy.

One tiny front (digits, ``nb201`` width 4, 128 images, 2 epochs, one seed, a family of 2) with a real latency
table, real NNI searches, real ONNX Runtime timing and real retraining.
"""

from __future__ import annotations

import json
from pathlib import Path

from hmnas_nni.experiments.front import main


def test_a_front_is_searched_timed_and_retrained(tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "front"
    assert main(["--out", str(out), "--dataset", "digits", "--subset", "128", "--epochs", "2", "--seeds", "0",
                 "--family", "2", "--space-args", '{"channels": 4}', "--batch-size", "32"]) == 0
    report = json.loads((out / "front.json").read_text())
    points = report["runs"][0]["points"]
    assert {p["strategy"] for p in points} == {"hmnas", "proxyless", "darts"}
    assert all(p["measured_ms"] > 0 and 0 <= p["val_acc"] <= 1 for p in points)
    assert (out / "front.png").stat().st_size > 0

    assert main(["--out", str(out), "--retrain", "1", "--limit-train", "64"]) == 0
    retrained = json.loads((out / "front.json").read_text())
    assert retrained["retrain"]["epochs"] == 1
    assert all(0 <= p["test_acc"] <= 1 for p in retrained["runs"][0]["points"])
    assert len(list((out / "retrained").iterdir())) == len(points)
    assert (out / "front_retrained.png").stat().st_size > 0
