"""One tiny HM-NAS search with a measured latency table: its family of nested networks (ordered by latency, each
measured, no gap against the supernet at its own level), NNI's ``export_top_models(top_k=K)``, and the latency
target pushing the expected latency under it."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from hmnas_nni import HMNAS
from hmnas_nni.export.family import family
from hmnas_nni.export.latency import Runtime, Timer, check_latency_target, measure_table, traced_supernet
from hmnas_nni.format.architecture import Architecture
from hmnas_nni.nas.cost import LatencyModel
from hmnas_nni.nas.derive import derive_network
from hmnas_nni.nas.family import family_members, member_state
from hmnas_nni.nas.levels import kept_entries
from hmnas_nni.search.data import load_dataset, search_splits
from hmnas_nni.spaces import build_space

warnings.filterwarnings("ignore")
ARGS = {"channels": 4, "input_size": 8}
SHAPE = (1, 8, 8)


def _search(data, table, tmp_path, target_ms=None) -> tuple[NasExperiment, HMNAS]:
    torch.manual_seed(0)
    evaluator = Classification(train_dataloaders=DataLoader(data[0], batch_size=32),
                               val_dataloaders=DataLoader(data[1], batch_size=32), max_epochs=4, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
    strategy = HMNAS(warmup_epochs=1, arch_epochs=1, settle_epochs=1, mask_learning_rate=1e-2,
                     latency_table=table, latency_target_ms=target_ms,
                     latency_weight=1.0)  # a strong term: this search has eight masking steps to reach the target
    experiment = NasExperiment(build_space("nb201", **ARGS), evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path)
    experiment.run()
    return experiment, strategy


@pytest.fixture(scope="module")
def searched(tmp_path_factory, one_thread):
    """A table of the tiny nb201 space (TorchScript graphs, 3 rounds), and a search with it."""
    torch.manual_seed(0)
    space, strategy = traced_supernet(build_space("nb201", **ARGS), SHAPE)
    table = measure_table(space, strategy.hierarchy, SHAPE, timer=Timer(Runtime(exporter="torchscript"), repeats=3),
                          calibration=3)
    train, _, _ = load_dataset("digits")
    data = search_splits(train, 512, 0)
    experiment, strategy = _search(data, table, tmp_path_factory.mktemp("search"))
    yield experiment, strategy, table, data
    experiment.stop()


def test_the_family_is_nested_ordered_measured_and_written(searched, tmp_path):
    _, strategy, table, data = searched
    rows = family(strategy.supernet, strategy.hierarchy, 4, table=table, val_data=data[1], out=tmp_path)
    assert 2 <= len(rows) <= 4
    for bigger, smaller in zip(rows, rows[1:]):
        assert all(set(smaller["kept"][k]) <= set(bigger["kept"][k]) for k in bigger["kept"])
        assert smaller["kept"] != bigger["kept"]
        assert smaller["predicted_ms"] <= bigger["predicted_ms"]
        assert smaller["params"] <= bigger["params"] and smaller["flops"] <= bigger["flops"]
    assert all(r["measured_ms"] > 0 and 0 <= r["val_acc"] <= 1 for r in rows)
    assert rows[0]["predicted_ms"] == pytest.approx(strategy.latency.predicted_ms())  # the search's own network
    for r in rows:
        arch = Architecture.load(tmp_path / f"member_{r['rank']}" / "arch.json")
        assert arch.to_dict() == r["architecture"].to_dict()
    assert (tmp_path / "family.json").is_file() and (tmp_path / "family.png").stat().st_size > 0


def test_asking_for_more_members_than_exist_says_so(searched, caplog):
    _, strategy, table, _ = searched
    with caplog.at_level("WARNING", logger="hmnas_nni"):
        rows = family(strategy.supernet, strategy.hierarchy, 1000, table=table, measure=False)
    assert 1 <= len(rows) < 1000
    assert f"1000 networks asked for; the learned scores give {len(rows)} distinct nested networks" in caplog.text


def test_each_member_has_no_gap_against_the_supernet_at_its_level(searched):
    _, strategy, table, data = searched
    supernet = strategy.supernet
    x = data[1].tensors[0][:16]
    members = family_members(supernet, strategy.hierarchy, 4, LatencyModel.of(supernet, strategy.hierarchy, table))
    assert len(members) >= 2
    learned = kept_entries(strategy.hierarchy)
    supernet.eval()
    for m in members:
        net = derive_network(supernet, m.architecture).eval()
        with member_state(strategy.hierarchy, m), torch.no_grad():
            assert (supernet(x) - net(x)).abs().max() <= 1e-5
    assert kept_entries(strategy.hierarchy) == learned == members[0].kept  # the learned state is back
    first = derive_network(supernet, members[0].architecture).eval()
    with torch.no_grad():
        assert (supernet(x) - first(x)).abs().max() <= 1e-5


def test_export_top_models_returns_the_family(searched):
    experiment, strategy, _, data = searched
    x = data[1].tensors[0][:8]
    nets = experiment.export_top_models(top_k=3, formatter="instance")
    samples = experiment.export_top_models(top_k=3, formatter="dict")
    (own,) = experiment.export_top_models(top_k=1, formatter="instance")
    assert len(nets) == len(samples) == 3
    assert samples[0] == experiment.export_top_models(top_k=1, formatter="dict")[0]
    with torch.no_grad():
        assert (nets[0].eval()(x) - own.eval()(x)).abs().max() <= 1e-6
    sizes = [sum(p.numel() for p in n.parameters()) for n in nets]
    assert sizes == sorted(sizes, reverse=True)


def test_a_latency_target_pushes_the_expected_latency_under_it(searched, tmp_path, caplog):
    _, free, table, data = searched
    model = LatencyModel.of(free.supernet, free.hierarchy, table)
    reached, smallest = model.predicted_ms(), model.smallest_ms()
    target = smallest + 0.5 * (reached - smallest)  # below what the search reaches without a target
    experiment, strategy = _search(data, table, tmp_path, target_ms=target)
    try:
        assert strategy.latency.predicted_ms() <= target < reached
        net = experiment.export_top_models(formatter="instance")[0]
        report = check_latency_target(net, target, table, strategy.latency.predicted_ms())
        assert report["met"] == (report["measured_ms"] <= target)
        assert report["missed_by_ms"] == pytest.approx(max(0.0, report["measured_ms"] - target))
        with caplog.at_level(logging.WARNING):
            missed = check_latency_target(net, 1e-6, table)
        assert not missed["met"] and missed["missed_by_ms"] > 0 and "latency target missed" in caplog.text
    finally:
        experiment.stop()


def test_hmnas_search_with_a_latency_target_writes_the_measured_family(tmp_path, one_thread, capsys):
    """``hmnas latency`` then ``hmnas search --latency-table --latency-target --family 3``, as a user runs them."""
    import json

    from hmnas_nni.cli.main import main

    table = tmp_path / "table.json"
    space = ["--space", "nb201", "--space-args", '{"channels": 4}']
    assert main(["latency", *space, "--exporter", "torchscript", "--repeats", "3", "--out", str(table)]) == 0
    out = tmp_path / "run"
    assert main(["search", *space, "--subset", "256", "--epochs", "3", "--batch-size", "32", "--no-progress",
                 "--latency-table", str(table), "--latency-target", "1000", "--family", "3", "--out", str(out)]) == 0
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["latency"]["met"] and final["latency"]["measured_ms"] > 0 and final["predicted_ms"] > 0
    members = json.loads((out / "family" / "family.json").read_text())["members"]
    assert 2 <= len(members) <= 3 and final["family"] == [{k: m[k] for k in final["family"][0]} for m in members]
    assert final["family_requested"] == 3
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert {"family/family.json", "family/member_0/arch.json", "arch.json", "metrics.json"} <= set(listed)
    for bigger, smaller in zip(members, members[1:]):
        assert all(set(smaller["kept"][k]) <= set(bigger["kept"][k]) for k in bigger["kept"])  # nested
        assert smaller["predicted_ms"] <= bigger["predicted_ms"]  # ordered by latency
    assert all(m["measured_ms"] > 0 and (out / "family" / m["arch"]).is_file() for m in members)  # measured
    assert Architecture.load(out / "family" / "member_0" / "arch.json").to_dict() == \
        Architecture.load(out / "arch.json").to_dict()  # the search's own network leads the family
    assert main(["search", *space, "--strategy", "darts", "--family", "2", "--out", str(tmp_path / "d")]) == 2
    assert "HM-NAS option(s)" in capsys.readouterr().err
