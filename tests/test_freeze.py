"""``hmnas_nni.nas.freeze.freeze(space, sample)``: the network of HM-NAS's sample, for users who hold only the space
and the sample, where NNI's own ``space.freeze(sample)`` refuses a sample with several weighted ops per edge."""

from __future__ import annotations

import warnings

import pytest
import torch
from nni.mutable import SampleValidationError
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.hub.pytorch import NasBench201
from nni.nas.nn.pytorch import MutableModule
from nni.nas.strategy import DARTS
from torch.utils.data import TensorDataset

from hmnas_nni import HMNAS
from hmnas_nni.format.errors import UsageError
from hmnas_nni.nas.freeze import freeze
from hmnas_nni.search.data import load_dataset, search_splits
from hmnas_nni.spaces.catalogue import catalogue

warnings.filterwarnings("ignore")


def hub_nb201() -> NasBench201:
    return NasBench201(stem_out_channels=4, num_modules_per_stack=1, num_labels=10)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, one_thread):
    """An HM-NAS search of NNI's hub NasBench201 on digits (grey repeated to RGB): the space it ran on, its dict
    sample, its instance export and validation images."""
    torch.manual_seed(0)
    train, _, _ = load_dataset("digits")
    halves = [TensorDataset(d.tensors[0].repeat(1, 3, 1, 1), d.tensors[1]) for d in search_splits(train, 192, 0)]
    evaluator = Classification(train_dataloaders=DataLoader(halves[0], batch_size=32),
                               val_dataloaders=DataLoader(halves[1], batch_size=32), max_epochs=3, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
    space = hub_nb201()
    experiment = NasExperiment(space, evaluator, HMNAS(warmup_epochs=0, arch_epochs=1, settle_epochs=1,
                                                       mask_learning_rate=2e-2, sparsity=0.5))
    experiment.config.experiment_working_directory = str(tmp_path_factory.mktemp("nni"))
    experiment.run()
    try:
        sample = experiment.export_top_models(formatter="dict")[0]
        net = experiment.export_top_models(formatter="instance")[0]
    finally:
        experiment.stop()
    return space, sample, net, halves[1].tensors[0][:8]


def _outputs(*nets, x):
    with torch.no_grad():
        return [n.eval()(x) for n in nets]


def test_nni_freeze_refuses_the_sample_and_hmnas_freeze_gives_the_searched_network(searched):
    space, sample, net, x = searched
    assert any(len(entries) != 1 for entries in sample.values())  # outside NNI's one-choice sample space
    with pytest.raises(SampleValidationError):  # SampleMissingError is one too
        hub_nb201().freeze(sample)
    frozen = freeze(space, sample)
    assert not any(isinstance(m, MutableModule) and m.mutables for m in frozen.modules())
    got, expected, supernet = _outputs(frozen, net, space, x=x)
    assert torch.equal(got, expected) and (got - supernet).abs().max() <= 1e-5


def test_a_fresh_space_gives_the_same_network_with_its_own_weights(searched):
    _, sample, net, x = searched
    torch.manual_seed(1)
    fresh = hub_nb201()
    frozen = freeze(fresh, sample, input_shape=[3, 8, 8])
    assert {k: v.shape for k, v in frozen.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert not any(isinstance(m, MutableModule) and m.mutables for m in frozen.modules())
    assert not any(m is f for m in frozen.modules() for f in fresh.modules())  # the space is left as it was
    assert _outputs(frozen, x=x)[0].shape == (8, 10)


def test_bad_calls_are_one_line_usage_errors(searched):
    space, sample, _, _ = searched
    removed = {**sample, "cell/0_1": []}
    with pytest.raises(UsageError, match="pass input_shape"):
        freeze(hub_nb201(), removed)
    with pytest.raises(UsageError, match="does not fit this space"):
        freeze(hub_nb201(), {"no-such-label": []})
    with pytest.raises(UsageError, match="positive integers"):
        freeze(hub_nb201(), sample, input_shape=[3, 0, 8])
    darts_supernet = hub_nb201()
    DARTS().mutate_model(darts_supernet)
    with pytest.raises(UsageError, match="another one-shot strategy's supernet") as err:
        freeze(darts_supernet, sample)
    assert "\n" not in str(err.value)


def test_a_fresh_space_whose_sample_removes_no_edge_is_built_without_a_supernet(searched, monkeypatch):
    _, sample, _, x = searched
    cat = catalogue(hub_nb201())
    kept = {label: entries or [{"op": cat[label].candidates[1], "weight": 1.0}] for label, entries in sample.items()}
    monkeypatch.setattr(HMNAS, "mutate_model", lambda self, model: pytest.fail("a supernet was made"))
    frozen = freeze(hub_nb201(), kept)
    assert not any(isinstance(m, MutableModule) and m.mutables for m in frozen.modules())
    assert _outputs(frozen, x=x)[0].shape == (8, 10)
