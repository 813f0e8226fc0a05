"""Latency tables are checked like every other input: every field range-checked when read (one line naming the
field and the fix), one rule for when a table fits a search (space, space arguments, input shape, batch, runtime,
device) applied with or without a latency target, and ``hmnas latency --threads 0`` refused in one line."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace

from hmnas_nni import HMNAS
from hmnas_nni.format.latency_table import MATCHED, LatencyTable, LatencyTableError
from hmnas_nni.nas.cost import cost_items
from hmnas_nni.spaces.registry import space_identity

warnings.filterwarnings("ignore")

SHAPE = [1, 8, 8]
RUNTIME = {"provider": "cpu", "threads": 1, "exporter": "dynamo", "opset": 18, "onnxruntime": "1.0",
           "engine": "onnxruntime"}
DEVICE = {"kind": "cpu", "name": "the CPU the table was measured on", "cores": 2}


class ChoiceNet(ModelSpace):
    """One choice between a 3x3 convolution and a skip connection, on 8x8 grey images."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 1)
        self.choice = LayerChoice({"conv": nn.Conv2d(channels, channels, 3, padding=1), "skip": nn.Identity()},
                                  label="choice")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.choice(self.stem(x)))


def table_doc(**change) -> dict:
    """A table document that fits :class:`ChoiceNet` at :data:`SHAPE` (one cost per candidate), with ``change``."""
    space = ChoiceNet()
    HMNAS(edge_level="none").mutate_model(space)
    name, args = space_identity(space)
    table = LatencyTable(space=name, space_args=args, input_shape=SHAPE, batch=1, runtime=RUNTIME, device=DEVICE,
                         costs={item.key: 0.05 for item in cost_items(space)}, base_ms=0.02, full_ms=0.12)
    return {**json.loads(json.dumps(table.to_dict())), **change}


def written(tmp_path, doc: dict):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(doc))  # NaN and Infinity are written as JSON's NaN / Infinity literals
    return path


def searched_space(records_shape: bool = True) -> ChoiceNet:
    space = ChoiceNet()
    if records_shape:
        space.hmnas_input_shape = list(SHAPE)  # as the search's inputs record it
    return space


@pytest.mark.parametrize("field, value, named", [
    ("base_ms", float("nan"), "base_ms is nan"),
    ("base_ms", -0.5, r"base_ms -0.5 makes the table predict -0.5 ms for a network with no candidate"),
    ("base_ms", "x", "base_ms is 'x'"),
    ("full_ms", 0, "full_ms is 0"),
    ("scale", float("inf"), "scale is inf"),
    ("costs", [0.1, 0.2], r"costs is \[0.1, 0.2\], not a JSON object"),
    ("costs", {"op:choice.conv": -1}, r"costs of \['op:choice.conv'\] are not finite numbers"),
    ("costs", {"op:choice.conv": "fast"}, r"costs of \['op:choice.conv'\]"),
    ("input_shape", [1, 0, 8], "input_shape is"),
    ("input_shape", "1x8x8", "input_shape is '1x8x8'"),
    ("batch", 0, "batch is 0, not an integer >= 1"),
    ("batch", True, "batch is True"),
    ("space", "", "space is ''"),
    ("space_args", ["channels", 4], "space_args is"),
    ("runtime", "cpu", "runtime is 'cpu'"),
    ("device", None, "device is None"),
    ("records", {}, "records is {}"),
    ("anchors", {"networks": [{"network": "whole supernet", "candidates_ms": "x", "measured_ms": 1}]}, "anchors is"),
])
def test_every_field_is_range_checked_in_one_line(tmp_path, field, value, named):
    path = written(tmp_path, table_doc(**{field: value}))
    with pytest.raises(LatencyTableError, match=named) as err:
        LatencyTable.load(path)
    assert "\n" not in str(err.value) and "hmnas latency" in str(err.value) and str(path) in str(err.value)


def test_base_ms_may_be_a_fitted_intercept_below_zero_but_never_predict_a_negative_latency(tmp_path):
    def anchored(base_ms: float) -> dict:
        networks = [{"network": "whole supernet", "candidates_ms": 0.1, "measured_ms": 0.12},
                    {"network": "calibration network 1", "candidates_ms": 0.05, "measured_ms": 0.06}]
        return table_doc(base_ms=base_ms, scale=1.2, anchors={"networks": networks})

    assert LatencyTable.load(written(tmp_path, anchored(-0.01))).base_ms == -0.01  # as a least-squares fit gives
    with pytest.raises(LatencyTableError, match="predict -0.04 ms for calibration network 1"):
        LatencyTable.load(written(tmp_path, anchored(-0.1)))


def test_a_missing_field_is_named(tmp_path):
    doc = table_doc()
    del doc["space_args"]
    with pytest.raises(LatencyTableError, match=r"missing field\(s\) \['space_args'\]"):
        LatencyTable.load(written(tmp_path, doc))


def test_the_one_rule_compares_every_field_and_needs_them_all(tmp_path):
    table = LatencyTable.load(written(tmp_path, table_doc()))
    fits = {name: getattr(table, name) for name in MATCHED}
    table.check_fits(**fits)
    for name, other in (("space", "nb201"), ("space_args", {"channels": 8}), ("input_shape", [1, 16, 16]),
                        ("batch", 8), ("runtime", {**RUNTIME, "provider": "tensorrt"}),
                        ("device", {**DEVICE, "name": "another CPU"})):
        with pytest.raises(LatencyTableError, match=name) as err:
            table.check_fits(**{**fits, name: other})
        assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="device"):
        table.check_fits(**{k: v for k, v in fits.items() if k != "device"})


@pytest.mark.parametrize("target", [None, 1.0])
@pytest.mark.parametrize("field, other", [("batch", 8), ("runtime", {**RUNTIME, "provider": "tensorrt"}),
                                          ("device", {**DEVICE, "name": "another CPU"})])
def test_a_table_for_another_batch_runtime_or_device_is_refused_with_or_without_a_target(tmp_path, field, other,
                                                                                         target):
    serving = {name: table_doc()[name] for name in ("batch", "runtime", "device")}
    path = written(tmp_path, table_doc(**{field: other}))
    strategy = HMNAS(edge_level="none", latency_table=str(path), latency_target_ms=target, latency_serving=serving)
    with pytest.raises(LatencyTableError, match=field):
        strategy.mutate_model(searched_space())


@pytest.mark.parametrize("target", [None, 1.0])
def test_a_table_for_another_input_shape_is_refused_with_or_without_a_target(tmp_path, target):
    path = written(tmp_path, table_doc(input_shape=[1, 16, 16]))
    with pytest.raises(LatencyTableError, match=r"input_shape \[1, 16, 16\], not \[1, 8, 8\]"):
        HMNAS(edge_level="none", latency_table=str(path), latency_target_ms=target).mutate_model(searched_space())


def test_a_space_without_a_recorded_shape_is_checked_on_its_first_batch(tmp_path):
    path = written(tmp_path, table_doc())
    space = searched_space(records_shape=False)
    HMNAS(edge_level="none", latency_table=str(path)).mutate_model(space)
    with pytest.raises(LatencyTableError, match=r"inputs of shape \[1, 16, 16\]"):
        space(torch.randn(2, 1, 16, 16))
    space(torch.randn(2, 1, 16, 16))  # checked once: later batches run as they come


def test_a_fitting_table_is_used_and_the_log_says_where_it_was_measured(tmp_path, caplog):
    path = written(tmp_path, table_doc())
    strategy = HMNAS(edge_level="none", latency_table=str(path))
    with caplog.at_level(logging.INFO, logger="hmnas_nni.nas.cost"):
        strategy.mutate_model(searched_space())
    assert strategy.latency.predicted_ms() == pytest.approx(0.02 + 0.05 + 0.05)
    assert any("the CPU the table was measured on" in r.getMessage() for r in caplog.records)


def test_serving_names_exactly_the_batch_runtime_and_device(tmp_path):
    path = written(tmp_path, table_doc())
    with pytest.raises(TypeError, match="batch"):
        HMNAS(edge_level="none", latency_table=str(path), latency_serving={"device": DEVICE}).mutate_model(
            searched_space())


@pytest.mark.parametrize("option", ["--threads", "--batch", "--repeats"])
def test_hmnas_latency_refuses_zero_in_one_line(tmp_path, capsys, option):
    from hmnas_nni.cli.main import main

    status = main(["latency", option, "0", "--out", str(tmp_path / "table.json")])
    err = capsys.readouterr().err.strip()
    assert status != 0 and f"{option} must be an integer >= 1, got 0" in err and "\n" not in err
    assert not (tmp_path / "table.json").exists()
