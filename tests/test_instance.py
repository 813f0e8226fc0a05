"""InstaNAS on HM-NAS, end to end on a tiny digits search: the controller trains, the instance-aware model exports
with parity (PyTorch against the ONNX Runtime dispatcher), benches at batch 1 on real test images, resumes, and bad
inputs get one-line errors."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from hmnas_nni.cli.main import main
from hmnas_nni.export.instance import Dispatcher, load_instance
from hmnas_nni.export.instance_run import train_instance_aware
from hmnas_nni.search.data import load_dataset
from hmnas_nni.search.instance import reward

warnings.filterwarnings("ignore")
QUICK = ["--policy-passes", "2", "--bench-images", "40"]


@pytest.fixture(scope="module")
def search(tmp_path_factory, one_thread):
    """A tiny HM-NAS search of nb201 on digits with a measured family of 3, as a user runs it."""
    out = tmp_path_factory.mktemp("instance") / "search"
    assert main(["search", "--space", "nb201", "--space-args", '{"channels": 4}', "--subset", "256", "--epochs", "3",
                 "--batch-size", "32", "--no-progress", "--family", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def trained(search, tmp_path_factory):
    """One epoch of InstaNAS on it, exported, checked and benched (Python API)."""
    out = tmp_path_factory.mktemp("instance") / "insta"
    record = train_instance_aware(search, out, epochs=1, latency_weight=0.5, seed=0, bench_images=40,
                                  parity_images=64, policy_passes=2)
    return out, record


def test_the_reward_prefers_correct_and_fast():
    r = reward(torch.tensor([1, 1, 0]), torch.tensor([2.0, 1.0, 1.0]), 2.0, 0.5, 1.0)
    assert r.tolist() == [0.5, 0.75, -1.0]


def test_trains_exports_with_parity_and_benches(trained):
    out, record = trained
    assert record["parity"]["same_choice"] == 1.0 and record["parity"]["max_abs_diff"] <= 1e-4
    assert len(record["history"]) == 1 and 0 <= record["history"][0]["val_acc"] <= 1
    test = record["test"]
    inst = test["instance"]
    assert inst["images"] == 40 and 0 <= inst["accuracy"] <= 1 and 0 < inst["p50_ms"] <= inst["p90_ms"]
    assert sum(inst["choice_counts"]) == 40 and len(test["members"]) == len(record["family_latency_ms"]) >= 2
    assert test["controller"]["mean_ms"] > 0 and all(m["mean_ms"] > 0 for m in test["members"])
    for name in ("instance.json", "bench.json", "parity.json", "choices.png", "examples.png", "front.png",
                 "model/instance.json", "model/controller.onnx", "model/member_0.onnx", "checkpoints/last.pt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "model/member_1.onnx" in json.loads((out / "manifest.json").read_text())["files"]


def test_the_saved_model_and_the_dispatcher_agree(trained):
    out, _ = trained
    model, dispatcher = load_instance(out / "model"), Dispatcher(out / "model")
    _, test, _ = load_dataset("digits")
    x = test.tensors[0][:32]
    ref, ref_pick = model.forward_with_choices(x)
    got, pick = dispatcher(x.numpy())
    assert (pick == ref_pick.numpy()).all() and np.abs(got - ref.numpy()).max() <= 1e-4
    bench = json.loads((out / "bench.json").read_text())
    assert bench["choices"][:32] == pick.tolist()  # batch 1 chooses as the batch does


def test_the_command_guards_its_folder_and_resumes(search, trained, capsys):
    out, _ = trained
    common = ["instance", "--search", str(search), "--out", str(out), *QUICK]
    assert main([*common, "--epochs", "1"]) == 2
    assert "already holds another run's results" in capsys.readouterr().err
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    assert "resuming after 1 finished epoch(s)" in capsys.readouterr().out
    record = json.loads((out / "instance.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [0, 1] and record["parity"]["same_choice"] == 1.0


def test_bad_inputs_get_one_line_errors(search, tmp_path, capsys):
    no_family = tmp_path / "no-family"
    shutil.copytree(search, no_family, ignore=shutil.ignore_patterns("family", "nni", "logs"))
    cases = [(["--search", str(tmp_path / "missing")], "no such folder"),
             (["--search", str(no_family)], "wrote no family"),
             (["--search", str(tmp_path)], "no finished search there"),
             (["--search", str(search), "--latency-weight", "1.5"], "outside [0, 1]"),
             (["--search", str(search), "--resume"], "no checkpoint at")]
    for args, message in cases:
        assert main(["instance", *args, "--out", str(tmp_path / "o"), *QUICK]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hmnas instance: error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()  # refused before the output folder was claimed


def test_hmnas_bench_measures_the_model_folder_at_batch_1_and_batched(trained, tmp_path, capsys):
    out, _ = trained
    dest = tmp_path / "bench"
    assert main(["bench", str(out), "--out", str(dest), "--images", "40", "--batch-sizes", "1,8",
                 "--threads", "1"]) == 0
    assert "member calls per batch" in capsys.readouterr().out
    doc = json.loads((dest / "bench.json").read_text())
    one, (b1, b8) = doc["batch_1"], doc["batched"]
    assert one["instance"]["images"] == 40 and one["controller"]["mean_ms"] > 0 and len(doc["choices"]) == 40
    assert (b1["batch"], b1["batches"], b8["batch"], b8["batches"]) == (1, 40, 8, 5)
    members = len(b8["members"])
    assert 1 <= b8["instance"]["member_calls_per_batch"] <= members and b1["instance"]["member_calls_per_batch"] == 1
    assert all(r["throughput_ips"] > 0 for row in (b1, b8) for r in [row["instance"], *row["members"]])
    # grouping by chosen member serves what batch 1 serves
    assert abs(b8["instance"]["accuracy"] - one["instance"]["accuracy"]) <= 1 / 40
    for name in ("bench.json", "batched.png", "front.png", "choices.png", "examples.png"):
        assert (dest / name).stat().st_size > 0, name
    assert main(["bench", str(out), "--out", str(dest), "--images", "40"]) == 2  # the folder guard
    assert "already holds another run's results" in capsys.readouterr().err


def test_hmnas_bench_refuses_what_a_model_folder_does_not_take(trained, tmp_path, capsys):
    out, _ = trained
    cases = [(["--weights", str(out / "model" / "model.safetensors")], "--weights"),
             (["--backends", "ort-cpu,torch-eager"], "--backends"),
             (["--backends", "torch-eager"], "does not serve an instance-aware model"),
             (["--images", "0"], "images=0")]
    for args, message in cases:
        assert main(["bench", str(out), "--out", str(tmp_path / "o"), *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("hmnas bench: error: ") and message in err[0], err
    assert main(["bench", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no instance-aware model manifest" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
