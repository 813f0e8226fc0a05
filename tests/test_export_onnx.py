"""ONNX export of every space checked against PyTorch in a real ONNX Runtime CPU session, and its errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import timm
import torch

import hmnas_nni.export as export
from hmnas_nni.cli.main import main as hmnas_main
from hmnas_nni.export.onnx_export import (
    FP32_TOL,
    ExportError,
    export_checked,
    export_onnx,
    load_onnx,
    metadata_of,
    ort_session,
)
from tests.sample_archs import smoke_architecture

SPACES = ("nb201", "darts", "mobile")


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_like(arch_path, weights_path, seed: int = 0) -> torch.nn.Module:
    """A model with non-trivial weights and BN statistics (as after training), saved as safetensors."""
    torch.manual_seed(seed)
    model = timm.create_model("hmnas", arch=arch_path)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    export.save_weights(model, weights_path)
    return model.eval()


@pytest.fixture(scope="module", params=SPACES)
def exported(request, tmp_path_factory):
    """Export a model of each space with real-input parity on the digits test set (8x8, one channel)."""
    d = tmp_path_factory.mktemp(f"onnx-{request.param}")
    smoke_architecture(request.param).save(d / "arch.json")
    model = _trained_like(d / "arch.json", d / "model.safetensors")
    report = export_checked(d / "arch.json", d / "model.safetensors", d / "out", dataset="digits",
                            fp16=request.param == "nb201", real_images=128)
    return d, model, report


def test_parity_within_tolerance_on_random_and_real_inputs(exported):
    d, _, report = exported
    assert report["passed"]
    fp32 = report["models"][0]
    assert fp32["precision"] == "fp32" and fp32["tolerance"] == FP32_TOL
    assert set(fp32["parity"]) == {"random", "real"}
    assert fp32["parity"]["real"]["images"] == 128
    for res in fp32["parity"].values():
        assert res["max_abs_diff"] <= 1e-4 and res["top1_agreement"] == 1.0
    assert json.loads((d / "out" / "parity.json").read_text())["passed"] is True


def test_onnx_file_is_checked_with_dynamic_batch_and_metadata(exported):
    d, model, _ = exported
    proto = load_onnx(d / "out" / "model.onnx")  # runs onnx.checker.check_model(full_check=True)
    onnx.checker.check_model(str(d / "out" / "model.onnx"), full_check=True)
    assert proto.opset_import[0].version >= 18
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    meta = metadata_of(proto)
    assert json.loads(meta["hmnas.architecture"]) == model.arch.to_dict()
    cfg = json.loads(meta["hmnas.input_config"])
    assert cfg["input_size"] == [1, 8, 8] and cfg["dataset"] == "digits"
    session = ort_session(d / "out" / "model.onnx")
    for n in (1, 5, 17):  # batch sizes other than the export example
        x = np.random.default_rng(n).standard_normal((n, 1, 8, 8), dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (n, 10) and np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("exported", ["nb201"], indirect=True)  # fp16 for one space keeps the suite short
def test_fp16_model_has_its_own_tolerance(exported):
    d, _, report = exported
    assert len(report["models"]) == 2
    fp16 = report["models"][1]
    assert fp16["precision"] == "fp16" and fp16["passed"]
    assert fp16["tolerance"] > FP32_TOL
    proto = load_onnx(d / "out" / "model_fp16.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert all(v["max_abs_diff"] <= fp16["tolerance"] for v in fp16["parity"].values())


def _export_cli(argv: list[str]) -> int:
    return hmnas_main(["export", *argv])


@pytest.fixture(scope="module")
def nb_files(tmp_path_factory):
    """An nb201 architecture with weights, and a mobile architecture without."""
    d = tmp_path_factory.mktemp("bad")
    smoke_architecture("nb201").save(d / "nb.json")
    smoke_architecture("mobile").save(d / "mob.json")
    _trained_like(d / "nb.json", d / "nb.safetensors")
    return d


def test_missing_weights_file(nb_files, capsys):
    assert _export_cli([str(nb_files / "nb.json"), "--weights", str(nb_files / "nope.safetensors"),
                        "--out", str(nb_files / "o1")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "hmnas retrain" in err


def test_truncated_weights_file(nb_files, capsys):
    data = (nb_files / "nb.safetensors").read_bytes()
    (nb_files / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert _export_cli([str(nb_files / "nb.json"), "--weights", str(nb_files / "cut.safetensors"),
                        "--out", str(nb_files / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated" in err and "re-run" in err


def test_weights_for_another_architecture(nb_files, capsys):
    assert _export_cli([str(nb_files / "mob.json"), "--weights", str(nb_files / "nb.safetensors"),
                        "--out", str(nb_files / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another architecture" in err and "arch.json" in err
    assert not (nb_files / "o3" / "model.onnx").exists()


def test_missing_architecture_file(nb_files, capsys):
    assert _export_cli([str(nb_files / "absent.json"), "--weights", str(nb_files / "nb.safetensors"),
                        "--out", str(nb_files / "o4")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_corrupt_onnx_path(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07not really a protobuf" * 10)
    with pytest.raises(ExportError, match="corrupt or not an ONNX model.*re-run `hmnas export`"):
        load_onnx(tmp_path / "broken.onnx")
    with pytest.raises(ExportError, match="does not exist"):
        load_onnx(tmp_path / "absent.onnx")


def test_existing_outputs_are_not_overwritten(nb_files, capsys):
    args = [str(nb_files / "nb.json"), "--weights", str(nb_files / "nb.safetensors"), "--out", str(nb_files / "o5"),
            "--random-images", "4"]
    assert _export_cli(args) == 0
    before = (nb_files / "o5" / "model.onnx").read_bytes()
    capsys.readouterr()
    assert _export_cli(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (nb_files / "o5" / "model.onnx").read_bytes() == before
    report = json.loads((nb_files / "o5" / "parity.json").read_text())
    assert report["passed"] and "real" not in report["models"][0]["parity"]  # no dataset named: random only


class _Eig(torch.nn.Module):
    """A network with an operator ONNX cannot express."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x[:, 0]).real


def test_unexportable_operator_is_named(tmp_path):
    with pytest.raises(ExportError, match="operator aten.linalg_eig"):
        export_onnx(_Eig(), tmp_path / "eig.onnx", (1, 4, 4))
    assert not (tmp_path / "eig.onnx").exists()


def test_the_opset_recorded_is_the_opset_written(nb_files):
    out = nb_files / "opset20"
    assert _export_cli([str(nb_files / "nb.json"), "--weights", str(nb_files / "nb.safetensors"), "--out", str(out),
                        "--opset", "20", "--real-images", "0"]) == 0
    proto = onnx.load(str(out / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert json.loads((out / "parity.json").read_text())["models"][0]["opset"] == 20
