"""HMNAS(penalty=...): a LatencyPenalty gives exactly the latency-weighted sparsity and target term of the
latency model it is bound to; any NNI ExpectationProfilerPenalty (experiments/front.py's table penalty) is applied to
every architecture step's loss as NNI's DARTS applies it, its details logged; anything else is refused in one line."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.oneshot.pytorch.profiler import ExpectationProfilerPenalty, SampleProfilerPenalty

from hmnas_nni import HMNAS
from hmnas_nni.format.latency_table import LatencyTable, LatencyTableError
from hmnas_nni.nas.cost import LatencyModel, cost_items
from hmnas_nni.nas.lightning import HMNASLightningModule
from hmnas_nni.nas.penalty import LatencyPenalty
from hmnas_nni.search.data import load_dataset, search_splits
from hmnas_nni.spaces.registry import space_identity

warnings.filterwarnings("ignore")
SHAPE = [1, 8, 8]
RUNTIME = {"provider": "cpu", "threads": 1, "exporter": "dynamo", "opset": 18, "onnxruntime": "1.0",
           "engine": "onnxruntime"}
DEVICE = {"kind": "cpu", "name": "the CPU the table was measured on", "cores": 2}
COSTS = {"conv": 0.30, "pool": 0.08, "skip": 0.01}  # ms per op, wherever it is


class TwoChoiceNet(ModelSpace):
    """Two choices between a 3x3 convolution, a 3x3 average pool and a skip connection, on 8x8 grey images."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 1)
        self.first = LayerChoice(self._ops(channels), label="first")
        self.second = LayerChoice(self._ops(channels), label="second")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))
        self.hmnas_input_shape = list(SHAPE)

    @staticmethod
    def _ops(channels: int) -> dict[str, nn.Module]:
        return {"conv": nn.Conv2d(channels, channels, 3, padding=1), "pool": nn.AvgPool2d(3, 1, 1),
                "skip": nn.Identity()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(self.stem(x))))


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    """A table of :class:`TwoChoiceNet` with unequal costs (conv dearest), as if measured at :data:`SHAPE`."""
    space = TwoChoiceNet(channels=4)
    HMNAS().mutate_model(space)
    name, args = space_identity(space)
    costs = {item.key: COSTS[item.entry] for item in cost_items(space)}
    return LatencyTable(space=name, space_args=args, input_shape=list(SHAPE), batch=1, runtime=RUNTIME,
                        device=DEVICE, costs=costs, base_ms=0.02, full_ms=0.02 + sum(costs.values()))


def searched(penalty=None, **kwargs) -> tuple[TwoChoiceNet, HMNAS]:
    torch.manual_seed(0)
    space = TwoChoiceNet(channels=4)
    strategy = HMNAS(penalty=penalty, **kwargs)
    strategy.mutate_model(space)
    return space, strategy


def test_a_latency_penalty_gives_the_latency_models_weights_and_target_term(table):
    target, weight, sparsity = 0.25, 0.7, 0.3
    space, strategy = searched(LatencyPenalty(table, baseline=target, scale=weight))
    module = strategy.configure_oneshot_module(pl.LightningModule())
    module.sparsity = sparsity
    reference = LatencyModel.of(space, strategy.hierarchy, table)  # what HMNAS built before it took a penalty
    masks = strategy.hierarchy.all_masks()

    weights = strategy.penalty.sparsity_weights()
    assert len(weights) == len(masks)
    assert all(torch.equal(w, r) for w, r in zip(weights, reference.sparsity_weights()))
    flat = torch.cat([w.reshape(-1) for w in weights])
    assert flat.mean() == pytest.approx(1.0)
    first = strategy.hierarchy.masks["ops:first"]
    conv, skip = space.first.names.index("conv"), space.first.names.index("skip")
    assert weights[masks.index(first)][conv] > 10 * weights[masks.index(first)][skip]  # the dear op goes first
    scores = torch.cat([m.scores.detach().reshape(-1) for m in masks])
    assert float(module.sparsity_loss().detach()) == pytest.approx(sparsity * float((flat * scores.abs()).mean()))

    expected = reference.expected_ms()
    assert float(expected.detach()) == pytest.approx(0.02 + 2 * sum(COSTS.values()))  # every op on at the start
    ms = float(expected.detach())
    assert float(strategy.penalty.profile().detach()) == ms and strategy.latency.predicted_ms() == ms
    loss = torch.tensor(1.5)
    total = module.masking_loss(loss)
    term = weight * torch.relu(expected / target - 1)
    assert float(total.detach()) == pytest.approx(float((loss + module.sparsity_loss() + term).detach()))
    for m in masks:
        m.scores.grad = None
    strategy.penalty(torch.zeros(()))[0].backward()  # the target term's gradient: each entry's saving
    grads = [m.scores.grad if m.scores.grad is not None else torch.zeros_like(m.scores) for m in masks]
    for g, saved in zip(grads, reference.savings()):
        assert torch.allclose(g, weight / target * saved)
    assert strategy.latency_table_input_shape() == SHAPE


def test_the_shorthand_arguments_build_the_same_penalty(table):
    _, short = searched(latency_table=table, latency_target_ms=0.25, latency_weight=0.7)
    _, full = searched(LatencyPenalty(table, baseline=0.25, scale=0.7))
    assert isinstance(short.penalty, LatencyPenalty)
    assert (short.penalty.baseline, short.penalty.scale) == (full.penalty.baseline, full.penalty.scale)
    assert short.latency.predicted_ms() == full.latency.predicted_ms()
    assert all(torch.equal(a, b) for a, b in zip(short.penalty.sparsity_weights(), full.penalty.sparsity_weights()))
    _, plain = searched(LatencyPenalty(table))  # no target: weighted sparsity only, the loss left as it is
    loss = torch.tensor(2.0)
    assert plain.penalty(loss)[0] is loss


def test_a_latency_penalty_refuses_a_table_of_another_space(table):
    other = TwoChoiceNet(channels=8)
    with pytest.raises(LatencyTableError, match=r"space_args channels=4 \(wanted 8\)"):
        HMNAS(penalty=LatencyPenalty(table)).mutate_model(other)


def test_an_unbound_latency_penalty_says_what_binds_it(table):
    penalty = LatencyPenalty(table, baseline=1.0)
    with pytest.raises(RuntimeError, match=r"pass it to HMNAS\(penalty=...\)"):
        penalty.profile()
    space, strategy = searched()
    with pytest.raises(ValueError, match="not bound"):
        HMNASLightningModule(pl.LightningModule(), strategy.hierarchy, penalty=penalty)


@pytest.mark.parametrize("penalty", ["latency", 0.5, SampleProfilerPenalty(None, 1.0)])
def test_a_penalty_of_another_type_is_refused_in_one_line(penalty):
    with pytest.raises(TypeError, match="is not supported; pass a LatencyPenalty") as err:
        HMNAS(penalty=penalty)
    assert "ExpectationProfilerPenalty" in str(err.value) and "\n" not in str(err.value)


def test_a_penalty_and_the_shorthand_together_are_refused(table):
    with pytest.raises(ValueError, match="not both"):
        HMNAS(penalty=LatencyPenalty(table), latency_table=table)
    with pytest.raises(ValueError, match=r"latency_target_ms=1.0 needs a latency_table .*\(`hmnas latency`\)"):
        HMNAS(latency_target_ms=1.0)
    with pytest.raises(ValueError, match=r"scale \(latency_weight, --latency-weight\) must be >= 0"):
        LatencyPenalty(table, scale=-1.0)


class PenaltyRecorder(pl.Callback):
    """Per training step: the epoch, the NNI penalty's profile of ``export_probs()`` as the step starts, and what
    was logged under ``penalty/`` by its end."""

    def __init__(self, penalty: ExpectationProfilerPenalty) -> None:
        self.penalty, self.steps = penalty, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = float(self.penalty.profile(pl_module.export_probs()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("penalty/")}
        self.steps.append((trainer.current_epoch, self._before, logged))


def test_an_nni_penalty_is_applied_to_every_architecture_step_and_logged(table, one_thread, tmp_path):
    from hmnas_nni.experiments.front import latency_penalty

    space = TwoChoiceNet(channels=4)
    baseline, scale = 0.03, 0.5  # below the cheapest network (0.04 ms): the term is positive at every step
    penalty = latency_penalty(space, table, baseline, scale)
    assert type(penalty) is ExpectationProfilerPenalty
    recorder = PenaltyRecorder(penalty)
    train, _, _ = load_dataset("digits")
    data = search_splits(train, 128, 0)
    torch.manual_seed(0)
    evaluator = Classification(train_dataloaders=DataLoader(data[0], batch_size=32),
                               val_dataloaders=DataLoader(data[1], batch_size=32), max_epochs=3, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False,
                               callbacks=[recorder])
    strategy = HMNAS(warmup_epochs=1, arch_epochs=1, settle_epochs=0, penalty=penalty)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path)
    try:
        experiment.run()
        assert strategy.penalty is penalty and strategy.latency is None  # no table: plain sparsity, no ranking
        assert strategy.latency_table_input_shape() is None
        assert strategy.oneshot_module.penalty is penalty
        arch = experiment.export_top_models(formatter="dict")[0]
        assert set(arch) >= {"first", "second"}
    finally:
        experiment.stop()

    epochs = [epoch for epoch, _, _ in recorder.steps]
    assert epochs.count(0) == epochs.count(1) == epochs.count(2) == 2  # 64 images, batches of 32
    for epoch, before, logged in recorder.steps:
        if epoch == 0:  # warm-up: no architecture step, no penalty
            assert logged == {}
            continue
        assert set(logged) == {"penalty/loss_original", "penalty/penalty", "penalty/normalized_penalty",
                               "penalty/loss_final"}
        cheapest, dearest = 0.02 + 2 * COSTS["skip"], 0.02 + 2 * COSTS["conv"]
        assert cheapest < logged["penalty/penalty"] < dearest
        assert logged["penalty/penalty"] == pytest.approx(before)  # the profile of the step's own export_probs()
        assert logged["penalty/normalized_penalty"] == pytest.approx(logged["penalty/penalty"] / baseline - 1)
        assert logged["penalty/loss_final"] == pytest.approx(
            logged["penalty/loss_original"] + scale * logged["penalty/normalized_penalty"], rel=1e-5)
