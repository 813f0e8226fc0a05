"""Superkernels: sub-kernels read one shared tensor (cropped, dilated), the ``nb201-sk`` / ``mobile-sk`` spaces are
searched by HM-NAS and NNI's DARTS end to end (tests/test_derive.py checks their derived networks like every
space's), and a derived network's shared weights save and load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nni.nas.nn.pytorch import ModelSpace

from hmnas_nni import Architecture
from hmnas_nni.nas.derive import derive_network
from hmnas_nni.search.config import TINY_SPACE_ARGS, SearchConfig
from hmnas_nni.search.run import run_search
from hmnas_nni.spaces import build_space
from hmnas_nni.spaces.superkernel import SubKernelConv, SuperKernel, superkernel_choice
from tests.helpers import export, hmnas_supernet, random_masks, warm_batchnorm

SK_SPACES = ("nb201-sk", "mobile-sk")


def test_sub_kernel_is_the_dilated_centre_crop() -> None:
    kernel = SuperKernel(3, 4, 5)
    x = torch.randn(2, 3, 9, 9)
    conv = SubKernelConv(kernel, 3, dilation=2)
    expected = F.conv2d(x, kernel.weight[:, :, 1:4, 1:4], padding=2, dilation=2)
    assert torch.equal(conv(x), expected) and conv(x).shape == x.shape[:1] + (4, 9, 9)
    conv(x).sum().backward()
    grad = kernel.weight.grad
    assert grad[:, :, 1:4, 1:4].abs().sum() > 0 and grad[:, :, 0].abs().sum() == 0  # only the crop learns here


def test_candidates_share_one_tensor_in_a_users_space() -> None:
    class UserSpace(ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.conv = superkernel_choice(2, 2, sizes=(1, 3, 5), dilations=(1, 2), label="conv")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    space = UserSpace()
    assert space.conv.names == ["k1d1", "k3d1", "k3d2", "k5d1", "k5d2"]  # 1x1 once
    kernels = {id(m.kernel) for m in space.modules() if isinstance(m, SubKernelConv)}
    assert len(kernels) == 1
    assert sum(p.numel() for p in space.parameters()) == 2 * 2 * 25 + 5 * 2 * 2  # one 5x5 tensor + the BNs
    chosen = space.freeze({"conv": "k3d2"})
    assert isinstance(chosen.conv[1], SubKernelConv) and chosen.conv[1].dilation == 2


def test_spaces_offer_more_candidates_for_no_more_weights() -> None:
    sk, plain = build_space("mobile-sk", channels=4), build_space("mobile", channels=4)
    assert len(sk.catalogue()["block_1"].candidates) == 13 and len(plain.catalogue()["block_1"].candidates) == 7
    assert sum(p.numel() for p in sk.parameters()) < sum(p.numel() for p in plain.parameters())
    assert len(build_space("nb201-sk", channels=4).catalogue()["cell/0_1"].candidates) == 8
    with pytest.raises(ValueError, match="max_kernel"):
        build_space("nb201-sk", max_kernel=4)


@pytest.mark.parametrize("name", SK_SPACES)
@pytest.mark.parametrize("strategy", ["hmnas", "darts"])
def test_superkernel_space_is_searched(tmp_path, one_thread, name, strategy) -> None:
    config = SearchConfig(space=name, dataset="digits", strategy=strategy, epochs=2, subset=128, batch_size=32,
                          space_args=TINY_SPACE_ARGS[name], out=str(tmp_path), progress=False)
    final = run_search(config).final
    arch = Architecture.load(tmp_path / "arch.json")
    assert arch.space == name and final["params"] > 0
    if strategy == "hmnas":
        assert abs(final["derivation_gap"]) < 1e-9


def test_a_derived_superkernel_network_saves_and_loads_its_shared_weights(tmp_path) -> None:
    from hmnas_nni.export.derived_model import DerivedModel
    from hmnas_nni.export.weights import load_weights, save_weights

    space, strategy = hmnas_supernet("nb201-sk", 1)
    random_masks(space, strategy, 1)
    warm_batchnorm(space)
    arch = export(space)
    model = DerivedModel(arch, body=derive_network(space, arch)).eval()
    path = save_weights(model, tmp_path / "model.safetensors")  # safetensors refuses tensors sharing storage
    again = DerivedModel(arch, body=derive_network(space, arch)).eval()
    for p in again.parameters():
        p.data.zero_()
    load_weights(again, path)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
