"""Choices inside choices: a ``LayerChoice`` in a candidate of another is searched at every edge level, never
silently switched off; every entry the hierarchy rules remove is listed with the rule that removed it; HMNAS's
refusals say "not supported", as NNI's own strategy tests expect."""

from __future__ import annotations

import warnings

import nni
import pytest
import torch
import torch.nn as nn
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import (
    InputChoice,
    LayerChoice,
    ModelSpace,
    MutableConv2d,
    MutableLayerNorm,
    MutableModule,
)

from hmnas_nni import HMNAS
from hmnas_nni.experiments.nni_spaces import CustomOpNet
from hmnas_nni.nas.derive import derive_network
from hmnas_nni.nas.strategy import EDGE_LEVELS
from hmnas_nni.search.data import load_dataset, search_splits
from tests.helpers import export, trace

warnings.filterwarnings("ignore")

#: The inner choice inside each op of the outer one.
INNER = {"conv": "act", "narrow": "mix"}


class NestedNet(ModelSpace):
    """A chain whose one ``LayerChoice`` holds another ``LayerChoice`` in each candidate; no ``InputChoice``, so
    HMNAS's edge level ``"auto"`` resolves to ``"layer"`` (every choice an edge with its own gate)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        act = LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="act")
        mix = LayerChoice({"pool": nn.MaxPool2d(3, 1, 1), "conv1": nn.Conv2d(8, 8, 1)}, label="mix")
        self.outer = LayerChoice({"conv": nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), act),
                                  "narrow": nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), mix)}, label="outer")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.outer(self.stem(x)))


@pytest.fixture(scope="module")
def digits():
    """Real data at test size: scikit-learn's 8x8 digits, the two search halves."""
    train, _, _ = load_dataset("digits")
    return search_splits(train, 192, 0)


def _supernet(edge_level: str):
    torch.manual_seed(0)
    space = NestedNet()
    strategy = HMNAS(edge_level=edge_level)
    strategy.mutate_model(space)
    trace(space)
    return space, strategy


def _switch_off(strategy: HMNAS, mask: str, entry: int) -> None:
    with torch.no_grad():
        strategy.hierarchy.masks[mask].scores[entry] = 0.0
    strategy.hierarchy.apply()


def _assert_no_gap(space: nn.Module, x: torch.Tensor) -> None:
    net = derive_network(space, export(space))
    space.eval()
    net.eval()
    with torch.no_grad():
        assert (space(x) - net(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("edge_level", EDGE_LEVELS)
def test_a_searched_nested_choice_keeps_an_op_and_the_derived_network_computes_the_supernet(edge_level, digits,
                                                                                            tmp_path, one_thread):
    torch.manual_seed(0)
    evaluator = Classification(train_dataloaders=DataLoader(digits[0], batch_size=32),
                               val_dataloaders=DataLoader(digits[1], batch_size=32), max_epochs=3, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
    strategy = HMNAS(edge_level=edge_level, warmup_epochs=0, arch_epochs=1, settle_epochs=1, mask_learning_rate=2e-2,
                     sparsity=0.5)
    experiment = NasExperiment(NestedNet(), evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path)
    experiment.run()
    try:
        sample = experiment.export_top_models(formatter="dict")[0]
        net = experiment.export_top_models(formatter="instance")[0]
        supernet = experiment.strategy.supernet
    finally:
        experiment.stop()
    kept = [entry["op"] for entry in sample["outer"]]
    assert kept, sample
    for op in kept:  # the op an inner choice sits in is kept: that choice keeps at least one op
        assert sample[INNER[op]], f"edge level {edge_level!r}: {INNER[op]!r} inside kept op {op!r} exports {sample}"
    assert not any(isinstance(m, MutableModule) and m.mutables for m in net.modules())
    x = digits[1].tensors[0][:16]
    supernet.eval()
    net.eval()
    with torch.no_grad():
        assert (supernet(x) - net(x)).abs().max() <= 1e-5
    for entries in experiment.strategy.hierarchy.removed().values():
        assert all(why.startswith("rule ") for why in entries.values())


@pytest.mark.parametrize("edge_level", EDGE_LEVELS)
def test_a_removed_op_takes_the_choice_inside_it_and_says_why(edge_level):
    space, strategy = _supernet(edge_level)
    _switch_off(strategy, "ops:outer", 1)  # 'narrow', which holds 'mix'
    assert strategy.hierarchy.masks["ops:mix"].live == []
    removed = strategy.hierarchy.removed()["ops:mix"]
    assert set(removed) == {"pool", "conv1"} and all(why.startswith("rule 5") for why in removed.values())
    assert strategy.hierarchy.masks["ops:act"].live == [0, 1]
    assert export(space).ops["mix"] == []
    _assert_no_gap(space, torch.randn(4, 1, 8, 8))


def test_an_op_whose_inner_edge_is_removed_goes_with_the_rule_named():
    space, strategy = _supernet("layer")
    _switch_off(strategy, "edge:act", 0)  # the gate of the choice inside 'conv'
    h = strategy.hierarchy
    assert h.masks["ops:outer"].live == [1] and h.masks["ops:act"].live == []
    removed = h.removed()
    assert removed["ops:outer"]["conv"].startswith("rule 2") and "passes nothing on" in removed["ops:outer"]["conv"]
    assert set(removed["ops:act"]) == {"relu", "tanh"}
    assert all(why.startswith("rule 1") for why in removed["ops:act"].values())
    _assert_no_gap(space, torch.randn(4, 1, 8, 8))


def test_when_every_inner_edge_is_off_a_path_is_kept_through_one(caplog):
    space, strategy = _supernet("layer")
    h = strategy.hierarchy
    with torch.no_grad():
        h.masks["edge:act"].scores[0] = 0.004  # highest score below tau: the edge kept by force
        h.masks["edge:mix"].scores[0] = 0.001
    with caplog.at_level("WARNING"):
        h.apply()
    assert h.masks["edge:act"].live == [0] and h.masks["ops:act"].live == [0, 1]
    assert h.masks["ops:outer"].live == [0] and h.masks["edge:mix"].live == []
    assert any("kept edge" in r.getMessage() for r in caplog.records)
    _assert_no_gap(space, torch.randn(4, 1, 8, 8))


def test_a_resumed_search_reads_the_nesting_back():
    space, strategy = _supernet("layer")
    state = strategy.hierarchy.state()
    again = HMNAS(edge_level="layer")
    fresh = NestedNet()
    again.mutate_model(fresh)
    again.hierarchy.load_state(state)
    assert again.hierarchy.traced.within == strategy.hierarchy.traced.within
    assert again.hierarchy.traced.op_sources == strategy.hierarchy.traced.op_sources
    assert len(again.hierarchy.traced.within) == 2


class ConcatNet(ModelSpace):
    """An ``InputChoice`` that concatenates: a reduction HM-NAS's weighted sum cannot express."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 3, padding=1)
        self.node = InputChoice(2, 1, reduction="concat", label="node")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.node([self.a(x), self.b(x)])


class StrideNet(ModelSpace):
    """A choice of stride: not a width, so HM-NAS's masks cannot relax it (NNI samples it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = MutableConv2d(1, 4, 3, stride=nni.choice("stride", [1, 2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class EpsNet(ModelSpace):
    """A choice of LayerNorm's epsilon, which NNI's mixed LayerNorm does not take."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = MutableLayerNorm(4, eps=nni.choice("eps", [1e-5, 1e-3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


@pytest.mark.parametrize("space", [CustomOpNet, ConcatNet, StrideNet, EpsNet])
def test_refusals_say_not_supported_as_nni_strategies_do(space):
    with pytest.raises(TypeError, match="not supported") as err:
        HMNAS().mutate_model(space())
    assert "\n" not in str(err.value)
