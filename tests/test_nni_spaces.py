"""HMNAS on NNI users' spaces, through NNI's own API: searched by ``NasExperiment``, derived with
``export_top_models(formatter="instance")``, zero gap against the masked supernet, no NNI mutable left,
ONNX parity. The spaces are small models of our own built from NNI's primitives, and NNI's hub spaces."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.hub.pytorch import DARTS, ENAS, NasBench201
from nni.nas.nn.pytorch import MutableModule
from torch.utils.data import TensorDataset

from hmnas_nni import HMNAS
from hmnas_nni.experiments.nni_spaces import CellNet, CustomOpNet, LayerChoiceNet, MixedChoiceNet
from hmnas_nni.export.onnx_export import export_onnx, ort_session
from hmnas_nni.search.data import load_dataset, search_splits

warnings.filterwarnings("ignore")


SPACES = {
    "layerchoice-net": LayerChoiceNet,
    "cell-net": CellNet,
    "mixed-choice-net": MixedChoiceNet,
    "hub-nasbench201": lambda: NasBench201(stem_out_channels=4, num_modules_per_stack=1, num_labels=10),
    "hub-darts": lambda: DARTS(width=4, num_cells=3, dataset="cifar"),
    "hub-enas": lambda: ENAS(width=4, num_cells=3, dataset="cifar"),
}


@pytest.fixture(scope="module")
def digits_rgb():
    """Real data at test size: scikit-learn digits (8x8), grey repeated to RGB for the spaces' colour stems."""
    train, _, _ = load_dataset("digits")
    halves = search_splits(train, 256, 0)
    return [TensorDataset(d.tensors[0].repeat(1, 3, 1, 1), d.tensors[1]) for d in halves]


def _search(space: nn.Module, data, tmp_path) -> NasExperiment:
    evaluator = Classification(train_dataloaders=DataLoader(data[0], batch_size=32),
                               val_dataloaders=DataLoader(data[1], batch_size=32), max_epochs=3, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
    strategy = HMNAS(warmup_epochs=0, arch_epochs=1, settle_epochs=1, mask_learning_rate=2e-2, sparsity=0.5)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path)
    experiment.run()
    return experiment


@pytest.mark.parametrize("name", list(SPACES))
def test_searched_and_derived_through_nni_with_zero_gap(name, digits_rgb, tmp_path, one_thread):
    torch.manual_seed(0)
    experiment = _search(SPACES[name](), digits_rgb, tmp_path)
    try:
        net = experiment.export_top_models(formatter="instance")[0]
        sample = experiment.export_top_models(formatter="dict")[0]
        supernet = experiment.strategy.supernet
    finally:
        experiment.stop()
    assert sample and all(isinstance(v, (list, dict)) for v in sample.values())
    assert not any(isinstance(m, MutableModule) and m.mutables for m in net.modules())
    assert not any(type(m).__module__.startswith("nni.nas.oneshot") for m in net.modules())
    x = digits_rgb[1].tensors[0][:16]
    supernet.eval()
    net.eval()
    with torch.no_grad():
        expected, got = supernet(x), net(x)
    assert (expected - got).abs().max() <= 1e-5
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in supernet.parameters())

    path = export_onnx(net, tmp_path / "model.onnx", tuple(x.shape[1:]))
    onnx_out = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert np.abs(onnx_out - got.numpy()).max() <= 1e-4


def test_a_primitive_hmnas_does_not_relax_is_named():
    with pytest.raises(TypeError, match=r"does not support module 'block' of type Unrelaxable"):
        HMNAS().mutate_model(CustomOpNet())


def test_a_hub_space_network_is_retrained_exported_and_benchmarked_as_it_is(tmp_path, one_thread):
    """``hmnas search`` on NNI's hub NasBench201, then ``hmnas retrain --from-supernet``, ``export`` (ONNX parity)
    and ``bench``: the network keeps NNI's own class; timm's interface is refused with the reason."""
    import json

    import timm

    from hmnas_nni.cli.main import main

    run, model, onnx_dir = tmp_path / "search", tmp_path / "retrain", tmp_path / "onnx"
    space = ["--space", "nni.nas.hub.pytorch.NasBench201", "--space-args",
             '{"stem_out_channels": 4, "num_modules_per_stack": 1}']
    assert main(["search", *space, "--subset", "256", "--epochs", "2", "--batch-size", "32", "--no-progress",
                 "--out", str(run)]) == 0
    assert main(["retrain", str(run / "arch.json"), "--dataset", "digits", "--epochs", "1", "--from-supernet",
                 str(run), "--out", str(model), "--no-progress"]) == 0
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["init"] == "supernet" and 0 <= metrics["test_accuracy"] <= 1 and "timm" in metrics
    assert main(["export", str(model / "arch.json"), "--weights", str(model / "model.safetensors"),
                 "--out", str(onnx_dir)]) == 0
    assert json.loads((onnx_dir / "parity.json").read_text())["passed"]
    assert main(["bench", str(model / "arch.json"), "--weights", str(model / "model.safetensors"), "--onnx",
                 str(onnx_dir / "model.onnx"), "--quick", "--out", str(tmp_path / "bench")]) == 0
    with pytest.raises(ValueError, match="the layout timm's CNN interface is built on"):
        timm.create_model("hmnas", arch=str(model / "arch.json"))


def test_the_survey_runs_both_strategies_side_by_side_and_writes_its_table(tmp_path, one_thread):
    from hmnas_nni.experiments.nni_spaces import survey

    report = survey(tmp_path, epochs=2, spaces=["layerchoice-net", "custom-op-net"], log=lambda line: None)
    rows = {(r["space"], r["strategy"]): r for r in report["rows"]}
    assert rows["layerchoice-net", "hmnas"]["inherits"] and rows["layerchoice-net", "hmnas"]["gap"] <= 1e-5
    assert rows["layerchoice-net", "darts"]["runs"] and rows["layerchoice-net", "darts"]["derived"]
    assert not rows["custom-op-net", "hmnas"]["runs"] and "does not support module 'block'" in \
        rows["custom-op-net", "hmnas"]["error"]
    assert report["totals"]["hmnas"] == {"runs": 1, "derived": 1, "inherits": 1, "spaces": 2}
    assert "| layerchoice-net | yes / yes /" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "spaces.png").stat().st_size > 0 and (tmp_path / "spaces.json").is_file()
