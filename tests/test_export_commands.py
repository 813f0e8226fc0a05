"""``hmnas retrain`` and ``hmnas bench`` end to end on the digits set and the CPU."""

from __future__ import annotations

import csv
import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import hmnas_nni.export as export
from hmnas_nni.cli.main import main as hmnas_main
from hmnas_nni.search.data import load_dataset
from hmnas_nni.spaces import build_space
from tests.sample_archs import SMOKE_ARGS, smoke_architecture

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(argv: list[str]) -> int:
    return hmnas_main(argv)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """One short retrain of an nb201 architecture on digits."""
    d = tmp_path_factory.mktemp("retrain")
    smoke_architecture("nb201").save(d / "arch.json")
    rc = _cli(["retrain", str(d / "arch.json"), "--dataset", "digits",
                                                "--epochs", "2", "--limit-train", "1000", "--batch-size", "32",
                                                "--out", str(d / "out"), "--no-progress"])
    assert rc == 0
    return d


def test_retrain_writes_weights_and_metrics_that_agree(retrained):
    out = retrained / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "digits" and metrics["epochs"] == 2 and metrics["train_images"] == 1000
    assert metrics["test_images"] == 360 and metrics["init"] == "scratch"
    assert len(metrics["history"]) == 2
    # The reported accuracy is reproduced from the written files alone, through timm.
    model = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    _, test, info = load_dataset("digits")
    x, y = test.tensors
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert acc > 0.3  # 64 steps already beat chance (0.1) on ten classes by far
    assert model.pretrained_cfg["mean"] == pytest.approx(info.mean)
    arch_doc = json.loads((out / "arch.json").read_text())
    assert arch_doc["dataset"]["name"] == "digits"


def test_retrain_refuses_to_overwrite(retrained, capsys):
    before = (retrained / "out" / "model.safetensors").read_bytes()
    rc = _cli(["retrain", str(retrained / "arch.json"), "--dataset", "digits",
                                                "--epochs", "0", "--out", str(retrained / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds" in err and "--force" in err
    assert (retrained / "out" / "model.safetensors").read_bytes() == before


def test_retrain_from_supernet_inherits_its_weights(tmp_path):
    space = build_space("nb201", **SMOKE_ARGS["nb201"])
    with torch.no_grad():
        for p in space.parameters():
            p.normal_(0, 0.2)
    search = tmp_path / "search"
    search.mkdir()
    arch = smoke_architecture("nb201")
    arch.save(search / "arch.json")
    save_file({k: v.contiguous() for k, v in space.state_dict().items()}, str(search / "supernet.safetensors"))
    rc = _cli(["retrain", str(search / "arch.json"), "--dataset", "digits",
                                                "--epochs", "0", "--from-supernet", str(search),
                                                "--out", str(tmp_path / "ft")])
    assert rc == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["init"] == "supernet"
    assert metrics["inherited"]["test_accuracy_before_finetune"] == metrics["test_accuracy"]  # 0 epochs
    weights = load_file(str(tmp_path / "ft" / "model.safetensors"))
    sup = space.state_dict()
    assert torch.equal(weights["body.stem.0.weight"], sup["net.stem.0.weight"])
    assert torch.equal(weights["classifier.weight"], sup["net.classifier.weight"])


def test_retrain_from_supernet_without_weights_fails_clearly(tmp_path, capsys):
    (tmp_path / "search").mkdir()
    smoke_architecture("nb201").save(tmp_path / "search" / "arch.json")
    rc = _cli(["retrain", str(tmp_path / "search" / "arch.json"), "--dataset",
                                                "digits", "--epochs", "0", "--from-supernet",
                                                str(tmp_path / "search"), "--out", str(tmp_path / "ft")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no supernet weights" in err and "hmnas search" in err


def test_bench_quick_writes_json_csv_and_png(retrained):
    out = retrained / "bench"
    rc = _cli(["bench", str(retrained / "out" / "arch.json"), "--weights",
                                            str(retrained / "out" / "model.safetensors"), "--out", str(out),
                                            "--quick", "--threads", "1"])
    assert rc == 0
    doc = json.loads((out / "bench.json").read_text())
    measured = {(r["backend"], r["batch"]) for r in doc["results"]}
    assert measured == {("ort-cpu", 1), ("ort-cpu", 8), ("torch-eager", 1), ("torch-eager", 8)}
    for r in doc["results"]:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["throughput_ips"] > 0 and r["iters"] >= 10
    assert doc["settings"]["threads"] == 1 and torch.get_num_threads() == 1  # restored to the fixture's count
    assert doc["providers_used"] == ["CPUExecutionProvider"]  # no GPU provider requested on a CPU machine
    assert "torch-compile" in doc["skipped"] and doc["versions"]["onnxruntime"]
    assert doc["first_run"]["ort-cpu"]["1"]["session_seconds"] > 0 and doc["first_run"]["onnx-export"]["seconds"] > 0
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert len(rows) == 4 and {row["backend"] for row in rows} == {"ort-cpu", "torch-eager"}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_torch_compile_is_measured_or_its_error_recorded(tmp_path):
    smoke_architecture("mobile").save(tmp_path / "arch.json")
    doc = export.bench.bench(tmp_path / "arch.json", tmp_path / "out", backends=["torch-compile"], batch_sizes=[2],
                             warmup=1, iters=3, min_seconds=0.0)
    if doc["results"]:
        assert doc["results"][0]["backend"] == "torch-compile"
        assert doc["first_run"]["torch-compile"]["2"]["first_run_seconds"] > doc["results"][0]["p50_ms"] / 1e3
    else:
        assert doc["errors"]["torch-compile"]  # the failure is recorded with its message
    assert (tmp_path / "out" / "bench.png").is_file()


def test_bench_rejects_a_corrupt_onnx_file(tmp_path, capsys):
    smoke_architecture("mobile").save(tmp_path / "arch.json")
    (tmp_path / "bad.onnx").write_bytes(b"garbage" * 20)
    rc = _cli(["bench", str(tmp_path / "arch.json"), "--onnx", str(tmp_path / "bad.onnx"),
                                            "--out", str(tmp_path / "out"), "--quick", "--backends", "ort-cpu"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt" in err and "hmnas export" in err
    # With PyTorch backends the ONNX file's weights must be given too, or the two sides would differ.
    rc = _cli(["bench", str(tmp_path / "arch.json"), "--onnx", str(tmp_path / "bad.onnx"),
                                            "--out", str(tmp_path / "out"), "--quick"])
    assert rc == 2 and "--weights" in capsys.readouterr().err
    assert not (tmp_path / "out" / "bench.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, ort-cuda is measured")
def test_bench_with_nothing_measured_fails_and_writes_nothing(tmp_path, capsys):
    smoke_architecture("nb201").save(tmp_path / "arch.json")
    rc = _cli(["bench", str(tmp_path / "arch.json"), "--out", str(tmp_path / "out"), "--backends", "ort-cuda",
               "--quick"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing was measured: every backend failed (ort-cuda: no GPU here" in err[0]
    assert not (tmp_path / "out" / "bench.json").exists() and not (tmp_path / "out" / "bench.csv").exists()


def test_timm_refuses_weights_with_nan_or_integer_tensors(tmp_path):
    from hmnas_nni.export.hmnas_timm import WeightsError

    smoke_architecture("nb201").save(tmp_path / "arch.json")
    state = timm.create_model("hmnas", arch=str(tmp_path / "arch.json")).state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    for name, bad, needle in (("nan", torch.full_like(state[key], float("nan")), "non-finite"),
                              ("int", torch.zeros(state[key].shape, dtype=torch.int32), "not floating point")):
        path = tmp_path / f"{name}.safetensors"
        save_file({**{k: v.contiguous() for k, v in state.items()}, key: bad.contiguous()}, str(path))
        with pytest.raises(WeightsError, match=needle):
            timm.create_model("hmnas", arch=str(tmp_path / "arch.json"), pretrained=True,
                              pretrained_cfg_overlay={"file": str(path)})
