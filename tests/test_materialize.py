"""A derived network with inherited weights computes exactly what the masked supernet computes."""

import pytest
import torch
from hmnas_nni.spaces.derived import DerivedOps

from hmnas_nni.nas.materialize import WeightsMismatch, materialize
from tests.helpers import export, hmnas_supernet, random_masks, tiny_space, warm_batchnorm


@pytest.mark.parametrize("name", ["nb201", "darts", "mobile"])
@pytest.mark.parametrize("seed", [0, 1])
def test_inherited_network_matches_masked_supernet(name, seed):
    space, strategy = hmnas_supernet(name, seed)
    random_masks(strategy, seed)
    warm_batchnorm(space)
    arch = export(space, strategy)
    net = materialize(arch, space).eval()
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert (space(x) - net(x)).abs().max() <= 1e-5
    assert not any(type(m).__module__.split(".")[0] == "nni" for m in net.modules())
    scripted = torch.jit.script(net)
    assert (scripted(x) - net(x)).abs().max() <= 1e-5


def test_derived_network_holds_only_what_was_kept():
    space, strategy = hmnas_supernet("nb201")
    random_masks(strategy, 3, keep=0.5)
    arch = export(space, strategy)
    net = materialize(arch)
    seen = 0
    for name, module in net.named_modules():
        if isinstance(module, DerivedOps):
            label = "cell/" + name.rsplit(".", 1)[-1]
            assert list(module.ops) == [o["op"] for o in arch.ops[label]]
            seen += 1
    live_edges = sum(1 for v in arch.ops.values() if v)
    assert 0 < seen <= live_edges * space.space_args["cells_per_stage"] * 3
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in tiny_space("nb201").parameters())


def test_weights_from_another_space_are_refused():
    space, strategy = hmnas_supernet("nb201")
    arch = export(space, strategy)
    other = tiny_space("mobile")
    with pytest.raises(WeightsMismatch, match="no weight"):
        materialize(arch, other)
