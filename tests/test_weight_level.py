"""The weight and block levels: width, kernel and depth choices under HM-NAS's step masks, physically pruned at
export. Small models of our own built from NNI's primitives, and NNI's hub mobile spaces at tiny sizes, searched
through ``NasExperiment`` and derived with ``export_top_models(formatter="instance")``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.hub.pytorch import MobileNetV3Space, ProxylessNAS, ShuffleNetSpace

from hmnas_nni import HMNAS
from hmnas_nni.experiments.nni_spaces import WidthNet, rgb_digits
from hmnas_nni.export.onnx_export import export_onnx, ort_session
from hmnas_nni.nas.derive import derive_network
from hmnas_nni.nas.samples import architecture_from_export
from hmnas_nni.nas.supermodules import ValueMasks
from tests.helpers import export_sample, trace

warnings.filterwarnings("ignore")


SPACES = {
    "width-kernel-depth-net": (WidthNet, 8),
    "hub-proxylessnas": (lambda: ProxylessNAS(num_labels=10, base_widths=(8, 8, 8, 8, 16, 16, 24, 32, 64)), 16),
    "hub-mobilenetv3": (lambda: MobileNetV3Space(num_labels=10, base_widths=(8, 8, 8, 8, 16, 16, 24, 32, 64),
                                                 width_multipliers=(0.5, 1.0), expand_ratios=(1.0, 3.0, 6.0),
                                                 dropout_rate=0.0), 16),
    "hub-shufflenet": (lambda: ShuffleNetSpace(num_labels=10, channel_search=True), 16),
}


def _max_params(space_factory) -> int:
    """Parameters of the largest network of the space (every value choice at its largest candidate)."""
    space = space_factory()
    HMNAS().mutate_model(space)
    trace(space, (3, 8, 8) if space_factory is WidthNet else (3, 16, 16))
    arch = architecture_from_export(export_sample(space), space)
    return sum(p.numel() for p in derive_network(space, arch).parameters())


@pytest.mark.parametrize("name", list(SPACES))
def test_searched_pruned_and_derived_with_zero_gap(name, tmp_path, one_thread):
    factory, size = SPACES[name]
    torch.manual_seed(0)
    data = rgb_digits(size)
    evaluator = Classification(train_dataloaders=DataLoader(data[0], batch_size=32),
                               val_dataloaders=DataLoader(data[1], batch_size=32), max_epochs=3, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
    strategy = HMNAS(warmup_epochs=0, arch_epochs=1, settle_epochs=1, mask_learning_rate=0.05, sparsity=5.0)
    experiment = NasExperiment(factory(), evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path)
    experiment.run()
    try:
        net = experiment.export_top_models(formatter="instance")[0]
        values = experiment.export_top_models(formatter="dict")[0]
        supernet = experiment.strategy.supernet
    finally:
        experiment.stop()
    x = data[1].tensors[0][:16]
    supernet.eval()
    net.eval()
    with torch.no_grad():
        expected, got = supernet(x), net(x)
    assert (expected - got).abs().max() <= 1e-5
    assert not any(type(m).__module__.startswith(("nni.nas.nn", "nni.nas.oneshot")) for m in net.modules())
    masks = [m for m in strategy.hierarchy.all_masks() if isinstance(m, ValueMasks)]
    assert any(m.chosen() < max(m.values) for m in masks), "the sparsity term pruned no width, kernel or depth"
    assert sum(p.numel() for p in net.parameters()) < _max_params(factory)
    assert all(values[m.label] == m.chosen() for m in masks)
    session = ort_session(export_onnx(net, tmp_path / "model.onnx", tuple(x.shape[1:])))
    onnx_out = session.run(None, {"input": x.numpy()})
    assert np.abs(onnx_out[0] - got.numpy()).max() <= 1e-4


def _set_chosen(space: nn.Module, strategy: HMNAS, chosen: dict[str, int]) -> None:
    with torch.no_grad():
        for m in strategy.hierarchy.all_masks():
            if isinstance(m, ValueMasks) and m.label in chosen:
                k = m.values.index(chosen[m.label])
                m.scores.copy_(torch.tensor([2 * m.tau if i < k else 0.0 for i in range(m.scores.numel())]))
    strategy.hierarchy.apply()


def test_masks_slice_layers_physically():
    torch.manual_seed(0)
    space = WidthNet()
    strategy = HMNAS()
    strategy.mutate_model(space)
    trace(space, (3, 8, 8))
    _set_chosen(space, strategy, {"width": 8, "shared": 8, "stem_kernel": 5, "depth": 2})
    space.eval()
    arch = architecture_from_export(export_sample(space), space)
    assert arch.values == {"width": 8, "stem_kernel": 5, "shared": 8, "depth": 2}
    net = derive_network(space, arch).eval()
    assert tuple(net.stem[0].weight.shape) == (8, 3, 5, 5)  # out channels sliced, the 5x5 centre of the 7x7
    assert net.stem[0].padding == (2, 2)  # one ring less of padding: the same output size as the 7x7 it came from
    assert tuple(net.widen.weight.shape) == (8, 8, 1, 1) and tuple(net.head.weight.shape) == (10, 8)
    assert len(net.body.blocks) == 2 and tuple(net.body.blocks[1].conv[0].weight.shape) == (8, 8, 3, 3)
    assert type(net.stem[0]) is nn.Conv2d and type(net.stem[1]) is nn.BatchNorm2d
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert (space(x) - net(x)).abs().max() <= 1e-5


def test_depth_never_goes_below_its_minimum_and_removed_blocks_take_their_choices():
    space = ProxylessNAS(num_labels=10, base_widths=(8, 8, 8, 8, 16, 16, 24, 32, 64))
    strategy = HMNAS()
    strategy.mutate_model(space)
    trace(space, (3, 16, 16))
    with torch.no_grad():
        for m in strategy.hierarchy.all_masks():
            if isinstance(m, ValueMasks) and m.label == "s2_depth":
                m.scores.zero_()  # every step off: the minimum depth stays
    strategy.hierarchy.apply()
    assert next(m for m in strategy.hierarchy.all_masks() if getattr(m, "label", "") == "s2_depth").chosen() == 1
    dropped = strategy.hierarchy.masks["ops:s2_i1"]  # the second block of stage 2
    assert dropped.live == [] and strategy.hierarchy.masks["ops:s2_i0"].live
    kept, total = strategy.hierarchy.blocks_kept()
    assert kept < total
