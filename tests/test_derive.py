"""A derived network with inherited weights computes exactly what the masked supernet computes."""

import pytest
import torch
from nni.nas.strategy import DARTS

from hmnas_nni.format.architecture import ArchitectureError
from hmnas_nni.nas.derive import WeightsMismatch, derive_network, network_weights
from hmnas_nni.nas.derived import KeptOps
from hmnas_nni.nas.rebuild import architecture_of, derived_of, network_from_architecture, network_of
from hmnas_nni.spaces.catalogue import catalogue
from tests.helpers import export, hmnas_supernet, random_masks, tiny_space, warm_batchnorm


def _no_nni(net: torch.nn.Module) -> bool:
    return not any(type(m).__module__.split(".")[0] == "nni" for m in net.modules())


@pytest.mark.parametrize("name", ["nb201", "darts", "mobile", "nb201-sk", "mobile-sk"])
@pytest.mark.parametrize("seed", [0, 1])
def test_inherited_network_matches_masked_supernet(name, seed):
    space, strategy = hmnas_supernet(name, seed)
    random_masks(space, strategy, seed)
    warm_batchnorm(space)
    arch = export(space)
    net = derive_network(space, arch).eval()
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert (space(x) - net(x)).abs().max() <= 1e-5
    assert _no_nni(net)
    compiled = torch.jit.script(net)
    assert (compiled(x) - net(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["nb201", "darts", "nb201-sk", "mobile-sk"])
def test_rebuilt_from_files_equals_derived(name):
    space, strategy = hmnas_supernet(name, 2)
    random_masks(space, strategy, 2)
    warm_batchnorm(space)
    arch = export(space)
    direct = derive_network(space, arch).eval()
    rebuilt = network_from_architecture(arch, network_weights(space)).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(direct(x), rebuilt(x))


def test_derived_network_holds_only_what_was_kept():
    space, strategy = hmnas_supernet("nb201")
    random_masks(space, strategy, 3, keep=0.5)
    arch = export(space)
    net = derive_network(space, arch)
    seen = 0
    for path, module in net.named_modules():
        if isinstance(module, KeptOps):
            label = "cell/" + path.rsplit(".", 1)[-1]
            assert list(module.ops) == [o["op"] for o in arch.ops[label]]
            seen += 1
    live_edges = sum(1 for v in arch.ops.values() if v)
    assert 0 < seen <= live_edges * 3
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in tiny_space("nb201").parameters())


def test_weights_from_another_space_are_refused():
    space, strategy = hmnas_supernet("nb201")
    arch = export(space)
    other, _ = hmnas_supernet("mobile")
    with pytest.raises(WeightsMismatch, match="do not fit this space"):
        network_from_architecture(arch, network_weights(other))


def test_a_strategys_export_that_ignores_the_input_is_measured_a_file_that_does_is_refused():
    """NNI's DARTS may keep ``none`` on every edge: its network (a constant) is built from its live supernet and
    from its weights, so a search and a comparison measure it; the same document read as a user's file is refused."""
    torch.manual_seed(0)
    supernet = tiny_space("nb201")
    DARTS().mutate_model(supernet)
    sample = {label: "none" for label, spec in catalogue(supernet).items() if spec.kind == "op"}
    arch = architecture_of(sample, supernet, "darts", [1, 8, 8])
    x = torch.randn(2, 1, 8, 8)
    for net in (derived_of(supernet, arch), network_of(arch, network_weights(supernet), require_path=False)):
        with torch.no_grad():
            out = net.eval()(x)
        assert torch.equal(out[0], out[1])
    with pytest.raises(ArchitectureError, match="removes every path"):
        network_of(arch)
