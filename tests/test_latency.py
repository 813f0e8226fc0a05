"""Latency tables measured in ONNX Runtime: they cover every candidate, round-trip through JSON, are refused for
another space, shape or device, and weight the sparsity term by the latency each entry saves."""

from __future__ import annotations

import json
import statistics
import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace

from hmnas_nni import HMNAS
from hmnas_nni.export.latency import (
    Runtime,
    Timer,
    expected_fields,
    latency_table_for,
    measure_table,
    table_for_space,
)
from hmnas_nni.format.latency_table import LatencyTable, LatencyTableError
from hmnas_nni.nas.cost import LatencyModel, cost_items
from hmnas_nni.nas.lightning import HMNASLightningModule
from hmnas_nni.nas.penalty import LatencyPenalty
from tests.helpers import trace

warnings.filterwarnings("ignore")
SHAPE = (3, 16, 16)


class TwoCostNet(ModelSpace):
    """One choice between a 5x5 convolution over 32 channels and a skip connection."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 1)
        self.choice = LayerChoice({"conv": nn.Sequential(nn.Conv2d(channels, channels, 5, padding=2), nn.ReLU()),
                                   "skip": nn.Identity()}, label="choice")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.choice(self.stem(x)))


def supernet(channels: int = 32):
    torch.manual_seed(0)
    space = TwoCostNet(channels)
    strategy = HMNAS(edge_level="none")
    strategy.mutate_model(space)
    trace(space, SHAPE)
    return space, strategy


@pytest.fixture(scope="module")
def measured(tmp_path_factory, one_thread):
    """The table of TwoCostNet, measured with the default (dynamo) exporter on ORT's CPU provider and saved."""
    space, strategy = supernet()
    timer = Timer(Runtime(), repeats=3)
    path = tmp_path_factory.mktemp("latency") / "table.json"
    table = latency_table_for(space, strategy.hierarchy, SHAPE, path, timer=timer)
    return space, strategy, table, path


def test_table_covers_every_candidate_and_round_trips(measured):
    space, strategy, table, path = measured
    assert set(table.costs) == {i.key for i in cost_items(space)} == {"op:choice.conv", "op:choice.skip"}
    assert table.runtime["provider"] == "cpu" and table.runtime["exporter"] == "dynamo"
    assert table.device["kind"] == "cpu" and table.versions["onnxruntime"]
    assert table.scale > 0 and table.full_ms > 0 and len(table.anchors["networks"]) >= 2
    assert all(r["rounds_ms"] and len(r["rounds_ms"]) == 3 for r in table.records)
    loaded = LatencyTable.load(path, **expected_fields(space, SHAPE, 1, Runtime()))
    assert loaded.to_dict() == json.loads(json.dumps(table.to_dict()))
    timer = Timer(Runtime())
    again = latency_table_for(space, strategy.hierarchy, SHAPE, path, timer=timer)
    assert again.costs == table.costs and timer.records == []  # read back, nothing timed again


def test_the_convolution_costs_far_more_than_the_skip(measured):
    _, _, table, _ = measured
    conv, skip = table.costs["op:choice.conv"], table.costs["op:choice.skip"]
    assert conv > 5 * skip, f"conv {conv:.4f} ms vs skip {skip:.4f} ms"


@pytest.mark.parametrize("change, named", [
    ({"space_args": {"channels": 16}}, "space_args"),
    ({"input_shape": [3, 32, 32]}, "input_shape"),
    ({"batch": 8}, "batch"),
    ({"device": {"kind": "cpu", "name": "another CPU", "cores": 64}}, "device"),
    ({"runtime": {**Runtime(exporter="torchscript").describe()}}, "exporter"),
])
def test_a_table_for_another_space_shape_or_device_is_refused(measured, change, named):
    space, _, _, path = measured
    expected = {**expected_fields(space, SHAPE, 1, Runtime()), **change}
    with pytest.raises(LatencyTableError, match=named) as err:
        LatencyTable.load(path, **expected)
    assert "\n" not in str(err.value)


def test_a_table_of_another_space_is_refused_by_the_strategy(measured):
    _, _, table, path = measured
    other = TwoCostNet(16)
    with pytest.raises(LatencyTableError, match=r"space_args channels=32 \(wanted 16\)"):
        HMNAS(edge_level="none", latency_table=path).mutate_model(other)


def test_a_corrupt_table_is_named(tmp_path):
    bad = tmp_path / "table.json"
    bad.write_text("{not json")
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        LatencyTable.load(bad)
    with pytest.raises(LatencyTableError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")


def test_weighted_sparsity_removes_the_expensive_entry_first(measured):
    table = measured[2]
    space, strategy = supernet()
    model = LatencyModel.of(space, strategy.hierarchy, table)
    module = HMNASLightningModule(pl.LightningModule(), strategy.hierarchy, sparsity=1.0,
                                  penalty=LatencyPenalty.of(model))
    (weights,) = model.sparsity_weights()
    conv, skip = space.choice.names.index("conv"), space.choice.names.index("skip")
    assert weights.mean() == pytest.approx(1.0) and weights[conv] > 5 * weights[skip]
    scores = strategy.hierarchy.masks["ops:choice"].scores
    optimizer = torch.optim.SGD([scores], lr=1e-3)
    while bool((scores >= strategy.tau).all()):
        optimizer.zero_grad()
        module.sparsity_loss().backward()
        optimizer.step()
    assert scores[conv] < strategy.tau <= scores[skip]
    strategy.hierarchy.apply()
    assert strategy.hierarchy.masks["ops:choice"].live == [skip]


def test_with_equal_costs_the_weighted_term_is_the_plain_one():
    space, strategy = supernet()
    plain = HMNASLightningModule(pl.LightningModule(), strategy.hierarchy, sparsity=0.3)
    equal = LatencyModel(space, strategy.hierarchy, {"op:choice.conv": 2.0, "op:choice.skip": 2.0})
    weighted = HMNASLightningModule(pl.LightningModule(), strategy.hierarchy, sparsity=0.3,
                                    penalty=LatencyPenalty.of(equal))
    with torch.no_grad():
        strategy.hierarchy.masks["ops:choice"].scores.copy_(torch.tensor([0.02, -0.01]))
    assert float(weighted.sparsity_loss().detach()) == pytest.approx(float(plain.sparsity_loss().detach()))


def test_expected_latency_is_the_table_prediction_with_savings_as_gradient(measured):
    table = measured[2]
    space, strategy = supernet()
    model = LatencyModel.of(space, strategy.hierarchy, table)
    costs = {k: table.scale * v for k, v in table.costs.items()}
    assert model.predicted_ms() == pytest.approx(table.base_ms + costs["op:choice.conv"] + costs["op:choice.skip"])
    (saved,) = model.savings()
    names = space.choice.names
    assert saved.tolist() == pytest.approx([costs[f"op:choice.{n}"] for n in names])
    with torch.no_grad():
        strategy.hierarchy.masks["ops:choice"].scores[names.index("conv")] = 0.0
    strategy.hierarchy.apply()
    assert model.predicted_ms() == pytest.approx(table.base_ms + costs["op:choice.skip"])


def test_measuring_a_nas_bench_201_supernet_covers_every_op(one_thread):
    torch.manual_seed(0)
    from tests.helpers import hmnas_supernet

    space, strategy = hmnas_supernet("nb201")
    table = measure_table(space, strategy.hierarchy, (1, 8, 8), timer=Timer(Runtime(exporter="torchscript"),
                                                                            repeats=2), calibration=3)
    assert len(table.costs) == 3 * 6 * 5  # three cells, six edges, five ops
    assert len(table.records) < len(table.costs)  # the same op at the same shape is timed once
    conv = [v for k, v in table.costs.items() if k.endswith("conv_3x3")]
    skip = [v for k, v in table.costs.items() if k.endswith("skip_connect")]
    assert statistics.median(conv) > statistics.median(skip)  # microseconds each: medians, not extremes


def test_table_for_space_measures_once_then_reads_back(tmp_path, one_thread):
    runtime = Runtime(exporter="torchscript")
    path = tmp_path / "nb201.json"
    first = table_for_space("nb201", {"channels": 4, "input_size": 8}, (1, 8, 8), path, runtime=runtime, repeats=2)
    assert path.is_file() and first.space == "nb201" and first.space_args["channels"] == 4
    again = table_for_space("nb201", {"channels": 4, "input_size": 8}, (1, 8, 8), path, runtime=runtime)
    assert again.costs == first.costs
    with pytest.raises(LatencyTableError, match=r"space_args channels=4 \(wanted 6\)"):
        table_for_space("nb201", {"channels": 6, "input_size": 8}, (1, 8, 8), path, runtime=runtime)
