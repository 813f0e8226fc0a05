"""HM-NAS and NNI's DARTS each complete a tiny search on every space, through the same pipeline."""

import json
import warnings

import pytest
import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.hub.pytorch import NasBench201
from torch.utils.data import TensorDataset

from hmnas_nni import HMNAS, Architecture
from hmnas_nni.search.config import TINY_SPACE_ARGS, SearchConfig
from hmnas_nni.search.data import load_dataset, search_splits
from hmnas_nni.search.run import run_search


@pytest.mark.parametrize("space", ["nb201", "darts", "mobile"])
@pytest.mark.parametrize("strategy", ["hmnas", "darts"])
def test_tiny_search_completes(tmp_path, space, strategy):
    config = SearchConfig(space=space, dataset="digits", strategy=strategy, epochs=2, subset=256, batch_size=32,
                          space_args=TINY_SPACE_ARGS[space],
                          out=str(tmp_path), progress=False)
    final = run_search(config).final
    for key in ("supernet_val_acc", "derived_val_acc", "derivation_gap", "ops_kept", "edges_kept", "params",
                "epoch_seconds", "peak_memory_mb"):
        assert isinstance(final[key], (int, float)) and final[key] == final[key], key
    arch = Architecture.load(tmp_path / "arch.json")
    assert arch.strategy == strategy and arch.space == space
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert len(history) == 2
    assert (tmp_path / "supernet.safetensors").stat().st_size > 0
    assert (tmp_path / "cells.png").stat().st_size > 0
    if strategy == "hmnas":
        assert abs(final["derivation_gap"]) < 1e-9  # the derived network is the masked supernet


def test_digits_search_learns_and_keeps_no_gap(tmp_path):
    final = run_search(SearchConfig(space="nb201", dataset="digits", epochs=3, out=str(tmp_path), progress=False)).final
    assert final["derived_val_acc"] > 0.5  # chance is 0.1
    assert abs(final["derivation_gap"]) < 0.005


def test_hmnas_searches_nni_hub_nasbench201(tmp_path):
    """Any NNI model space: NNI's own NasBench201 (cells without InputChoice, so edges are gated LayerChoices)."""
    warnings.filterwarnings("ignore")
    train, _, _ = load_dataset("digits")
    trn, val = search_splits(train, 256, 0)
    rgb = [TensorDataset(d.tensors[0].repeat(1, 3, 1, 1), d.tensors[1]) for d in (trn, val)]
    space = NasBench201(stem_out_channels=4, num_modules_per_stack=1, num_labels=10)
    evaluator = Classification(train_dataloaders=DataLoader(rgb[0], batch_size=32),
                               val_dataloaders=DataLoader(rgb[1], batch_size=32), max_epochs=2, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
    strategy = HMNAS(warmup_epochs=0, arch_epochs=1)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path)
    experiment.run()
    arch = experiment.export_top_models(formatter="dict")[0]
    experiment.stop()
    assert set(arch) == {f"cell/{i}_{j}" for j in range(1, 4) for i in range(j)}
    for entries in arch.values():
        assert all(set(e) == {"op", "weight"} and 0 < e["weight"] <= 1 for e in entries)
    assert torch.isfinite(space(torch.randn(2, 3, 8, 8))).all()
