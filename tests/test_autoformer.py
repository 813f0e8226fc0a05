"""Transformer spaces at the weight level: NNI's hub ``AutoFormer`` (its own class-token and position-embedding
hooks kept, LayerNorm widths, heads, MLP ratios and depth) and ``MutableMultiheadAttention`` are searched by HMNAS
and give a plain network whose output is the masked supernet's."""

from __future__ import annotations

import itertools
import warnings

import nni
import pytest
import torch
import torch.nn as nn
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.hub.pytorch import AutoFormer
from nni.nas.nn.pytorch import ModelSpace, MutableLayerNorm, MutableLinear, MutableModule, MutableMultiheadAttention

from hmnas_nni import HMNAS
from hmnas_nni.nas.derive import derive_network
from hmnas_nni.nas.samples import architecture_from_export, export_sample
from hmnas_nni.search.data import load_dataset, search_splits

warnings.filterwarnings("ignore")


def tiny_autoformer() -> AutoFormer:
    """AutoFormer at its smallest: two embedding widths, heads, MLP ratios and depths, 8x8 grey images in 4x4
    patches (NNI fixes each head at 64 dimensions)."""
    return AutoFormer(search_embed_dim=(8, 16), search_mlp_ratio=(1.0, 2.0), search_num_heads=(1, 2),
                      search_depth=(1, 2), img_size=8, patch_size=4, in_channels=1, num_labels=10, drop_path_rate=0.0)


class AttentionNet(ModelSpace):
    """A token mixer on 8x8 images: ``MutableMultiheadAttention`` with a choice of width and of heads, a residual
    add and a ``MutableLayerNorm`` of the same width."""

    def __init__(self) -> None:
        super().__init__()
        width = nni.choice("width", [8, 16])
        self.embed = MutableLinear(8, width)
        self.attn = MutableMultiheadAttention(width, nni.choice("heads", [1, 2]), batch_first=True)
        self.norm = MutableLayerNorm(width)
        self.head = MutableLinear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(2).transpose(1, 2))
        mixed, _ = self.attn(tokens, tokens, tokens)
        return self.head(self.norm(tokens + mixed).mean(1))


@pytest.fixture(scope="module")
def digits():
    """Real data at test size: scikit-learn's 8x8 digits, the two search halves."""
    train, _, _ = load_dataset("digits")
    return search_splits(train, 192, 0)


def _gap(supernet: nn.Module, net: nn.Module, x: torch.Tensor) -> float:
    supernet.eval()
    net.eval()
    with torch.no_grad():
        return float((supernet(x) - net(x)).abs().max())


def _supernet(space: ModelSpace, shape: tuple[int, ...]) -> tuple[ModelSpace, HMNAS]:
    torch.manual_seed(0)
    strategy = HMNAS()
    strategy.mutate_model(space)
    space.train()
    space(torch.randn(4, *shape)).sum().backward()
    return space, strategy


def test_autoformer_is_searched_and_its_network_is_the_masked_supernet(digits, tmp_path, one_thread):
    torch.manual_seed(0)
    evaluator = Classification(train_dataloaders=DataLoader(digits[0], batch_size=32),
                               val_dataloaders=DataLoader(digits[1], batch_size=32), max_epochs=3, num_classes=10,
                               enable_progress_bar=False, logger=False, enable_checkpointing=False)
    strategy = HMNAS(warmup_epochs=0, arch_epochs=1, settle_epochs=1, mask_learning_rate=2e-2, sparsity=0.5)
    experiment = NasExperiment(tiny_autoformer(), evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path)
    experiment.run()
    try:
        net = experiment.export_top_models(formatter="instance")[0]
        sample = experiment.export_top_models(formatter="dict")[0]
        supernet = experiment.strategy.supernet
    finally:
        experiment.stop()
    assert sample["embed_dim"] in (8, 16) and sample["depth"] in (1, 2)
    assert {f"num_head_{i}" for i in range(2)} <= set(sample)
    assert not any(isinstance(m, MutableModule) and m.mutables for m in net.modules())
    assert not any(type(m).__module__.startswith("nni.nas.oneshot") for m in net.modules())
    assert _gap(supernet, net, digits[1].tensors[0][:16]) <= 1e-5


@pytest.mark.parametrize("embed_on, heads_on, ratio_on, depth_on",
                         [(False, False, True, True), (True, True, False, False), (False, True, False, True)])
def test_every_autoformer_choice_derives_with_zero_gap(embed_on, heads_on, ratio_on, depth_on):
    space, strategy = _supernet(tiny_autoformer(), (1, 8, 8))
    with torch.no_grad():
        for label, on in (("embed_dim", embed_on), ("num_head_0", heads_on), ("mlp_ratio_1", ratio_on),
                          ("depth", depth_on)):
            strategy.hierarchy.masks[f"values:{label}"].scores[0] = 1.0 if on else 0.0
    strategy.hierarchy.apply()
    sample = export_sample(space)
    assert sample["embed_dim"] == (16 if embed_on else 8) and sample["depth"] == (2 if depth_on else 1)
    net = derive_network(space, architecture_from_export(sample, space, input_shape=[1, 8, 8]))
    norms = [m for m in net.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.normalized_shape == (sample["embed_dim"],) for m in norms)
    assert len(net.blocks.blocks) == sample["depth"]
    assert net.blocks.blocks[0].attn.q.out_features == 64 * sample["num_head_0"]
    assert _gap(space, net, torch.randn(4, 1, 8, 8)) <= 1e-5


def test_multi_head_attention_widths_and_heads_derive_with_zero_gap_and_train_their_masks():
    space, strategy = _supernet(AttentionNet(), (8, 8, 8))
    masks = strategy.hierarchy.masks
    assert all(masks[f"values:{label}"].scores.grad.abs().sum() > 0 for label in ("width", "heads"))
    x = torch.randn(4, 8, 8, 8)
    for width_on, heads_on in itertools.product([True, False], repeat=2):
        with torch.no_grad():
            masks["values:width"].scores[0] = 1.0 if width_on else 0.0
            masks["values:heads"].scores[0] = 1.0 if heads_on else 0.0
        strategy.hierarchy.apply()
        sample = export_sample(space)
        assert sample == {"width": 16 if width_on else 8, "heads": 2 if heads_on else 1}
        net = derive_network(space, architecture_from_export(sample, space, input_shape=[8, 8, 8]))
        attn = next(m for m in net.modules() if isinstance(m, nn.MultiheadAttention))
        assert (attn.embed_dim, attn.num_heads) == (sample["width"], sample["heads"])
        assert _gap(space, net, x) <= 1e-5
