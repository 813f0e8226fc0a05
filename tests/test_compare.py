"""``hmnas compare --budget tiny``: every strategy gets a complete row, and HM-NAS's gap rests on real evaluations."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from hmnas_nni.cli.main import main as hmnas_main
from hmnas_nni.experiments.compare import ALL_STRATEGIES, make_plan
from hmnas_nni.experiments.compare_report import NUMERIC_FIELDS


def _enas_importable() -> bool:
    """Whether NNI's ENAS controller packages (tianshou, gym) are installed here."""
    return importlib.util.find_spec("tianshou") is not None and importlib.util.find_spec("gym") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], int]:
    """Run the tiny budget once for the whole module (a few minutes on 2 cores)."""
    out = tmp_path_factory.mktemp("compare")
    rc = hmnas_main(["compare", "--budget", "tiny", "--out", str(out), "--force"])
    return out, json.loads((out / "results.json").read_text()), rc


def test_every_strategy_has_a_complete_row(tiny: tuple[Path, dict[str, Any], int]) -> None:
    out, doc, rc = tiny
    rows = {r["strategy"]: r for r in doc["rows"]}
    assert sorted(rows) == sorted(ALL_STRATEGIES)
    assert rc == 0, [r.get("reason") for r in doc["rows"] if r["status"] == "failed"]
    for name, row in rows.items():
        if name in ("enas", "enas-memory") and not _enas_importable():
            assert row["status"] == "unavailable"
            assert "tianshou" in row["reason"] and "could not run" in row["reason"]
            continue
        assert row["status"] == "ok", (name, row.get("reason"))
        for key in NUMERIC_FIELDS:
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (name, key, row.get(key))
        assert row["epoch_seconds"] > 0 and row["peak_memory_mb"] > 0 and row["latency_ms"] > 0
        assert row["params"] > 0 and row["flops"] > 0
        assert 0.0 <= row["derived_val_acc"] <= 1.0 and 0.0 <= row["supernet_val_acc"] <= 1.0
    for name in ("results.csv", "table.md", "acc_vs_params.png", "acc_vs_time.png"):
        assert (out / name).stat().st_size > 0
    table = (out / "table.md").read_text()
    assert all(f"| {s} |" in table for s in ALL_STRATEGIES)
    assert "HM-NAS/DARTS time per epoch" in table


def test_hmnas_gap_comes_from_real_evaluations(tiny: tuple[Path, dict[str, Any], int]) -> None:
    """Rebuild HM-NAS's derived network from arch.json + supernet.safetensors and re-measure it."""
    import copy

    from hmnas_nni.format.architecture import Architecture
    from hmnas_nni.nas.rebuild import network_of
    from hmnas_nni.search.data import load_dataset, search_splits
    from hmnas_nni.search.evaluation import accuracy, recalibrate_batchnorm

    _, doc, _ = tiny
    plan = doc["plan"]
    row = next(r for r in doc["rows"] if r["strategy"] == "hmnas")
    search = Path(row["run_dir"]) / "search"
    arch = Architecture.load(search / "arch.json")
    assert arch.strategy == "hmnas"
    net = network_of(arch, load_file(str(search / "supernet.safetensors"))).eval()
    train, _test, _info = load_dataset(plan["dataset"])
    train_split, val_split = search_splits(train, plan["subset"], row["seed"])
    assert len(val_split) == row["val_images"]

    derived = accuracy(net, val_split, plan["batch_size"])
    assert derived == pytest.approx(row["derived_val_acc"], abs=1e-12)
    assert (derived * len(val_split)) == pytest.approx(round(derived * len(val_split)))  # a count over real images
    assert row["derivation_gap"] == pytest.approx(row["supernet_val_acc"] - derived, abs=1e-12)
    bn = accuracy(recalibrate_batchnorm(copy.deepcopy(net), train_split, plan["bn_batches"], plan["batch_size"]),
                  val_split, plan["batch_size"])
    assert bn == pytest.approx(row["derived_val_acc_bn"], abs=1e-12)
    assert row["derivation_gap_bn"] == pytest.approx(row["supernet_val_acc_bn"] - bn, abs=1e-12)

    # the supernet's figure is the search's own evaluation of the supernet, logged apart from the derived one
    history = json.loads((search / "metrics.json").read_text())["history"]
    assert history[-1]["supernet_val_acc"] == pytest.approx(row["supernet_val_acc"], abs=1e-12)
    assert history[-1]["derived_val_acc"] == pytest.approx(derived, abs=1e-12)


def test_plan_overrides_and_bad_strategy() -> None:
    args = dict(budget="cpu", space="darts", strategies="hmnas,darts", seeds="3,4", epochs=2, subset=100,
                latency=False, accelerator="cpu")
    plan = make_plan(**args)
    assert (plan["space"], plan["seeds"], plan["epochs"], plan["subset"]) == ("darts", [3, 4], 2, 100)
    assert plan["space_args"] == {"channels": 8, "num_cells": 3} and plan["dataset"] == "fashion-mnist"
    with pytest.raises(ValueError, match="snas"):
        make_plan(**{**args, "strategies": "hmnas,snas"})
