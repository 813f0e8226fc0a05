"""A network built from its document and a fresh space (no supernet, no forward pass) is the network a supernet derives:
the same modules under the same names, and with the same weights the same outputs."""

from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch
import torch.nn as nn

import hmnas_nni.export  # noqa: F401  (registers the hmnas timm models)
from hmnas_nni import HMNAS
from hmnas_nni.experiments.nni_spaces import SPACES
from hmnas_nni.export import hmnas_timm
from hmnas_nni.export.archs import shipped_architectures
from hmnas_nni.export.stages import measure_levels
from hmnas_nni.format.architecture import Architecture, ArchitectureError
from hmnas_nni.nas import rebuild
from hmnas_nni.nas.build import NotBuildable, build_network
from hmnas_nni.nas.derive import derive_network
from hmnas_nni.nas.derived import RemovedEdge
from tests.helpers import export, hmnas_supernet, random_masks, trace, warm_batchnorm
from tests.test_autoformer import AttentionNet, tiny_autoformer
from tests.test_nested_choices import NestedNet

warnings.filterwarnings("ignore")


def _same_network(derived: nn.Module, built: nn.Module, x: torch.Tensor) -> None:
    """Same parameter and buffer names and shapes; with the derived network's weights, the same outputs."""
    a, b = derived.state_dict(), built.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    built.load_state_dict(a)
    derived.eval()
    built.eval()
    with torch.no_grad():
        assert torch.equal(derived(x), built(x))


@pytest.fixture
def no_supernet(monkeypatch):
    """Fail any attempt to make a supernet from a document."""
    def refuse(arch):
        raise AssertionError("a supernet was made")
    monkeypatch.setattr(rebuild, "supernet_of", refuse)


@pytest.mark.parametrize("name", ["nb201", "darts", "mobile", "nb201-sk", "mobile-sk"])
def test_project_spaces_build_without_a_supernet(name, no_supernet):
    space, strategy = hmnas_supernet(name, 4)
    random_masks(space, strategy, 4, keep=0.5)
    warm_batchnorm(space)
    arch = export(space)
    built = rebuild.network_from_architecture(arch)
    _same_network(derive_network(space, arch), built, torch.randn(4, 1, 8, 8))


def _searched(space: nn.Module, shape: tuple[int, ...], seed: int) -> Architecture:
    """``space`` made an HM-NAS supernet with random masks, and its exported document."""
    torch.manual_seed(seed)
    strategy = HMNAS()
    strategy.mutate_model(space)
    trace(space, shape)
    random_masks(space, strategy, seed, keep=0.5)
    return export(space, input_shape=list(shape))


#: Users' spaces and NNI's hub spaces the builder builds (one-shot hooks of their own send the rest to a supernet).
BUILT = ["layerchoice-net", "mixed-choice-net", "cell-net", "width-kernel-depth-net", "hub-nasbench201", "hub-darts",
         "hub-enas", "hub-proxylessnas", "hub-mobilenetv3", "hub-shufflenet"]


@pytest.mark.parametrize("name", BUILT)
def test_users_and_hub_spaces_build_from_a_fresh_space(name):
    factory, size = SPACES[name]
    supernet = factory()
    arch = _searched(supernet, (3, size, size), 5)
    _same_network(derive_network(supernet, arch), build_network(factory(), arch), torch.randn(2, 3, size, size))


def test_a_nested_choice_builds_inside_its_kept_op():
    supernet = NestedNet()
    arch = _searched(supernet, (1, 8, 8), 6)
    _same_network(derive_network(supernet, arch), build_network(NestedNet(), arch), torch.randn(2, 1, 8, 8))


def test_attention_widths_and_heads_build_as_plain_layers():
    supernet = AttentionNet()
    arch = _searched(supernet, (8, 8, 8), 7)
    _same_network(derive_network(supernet, arch), build_network(AttentionNet(), arch), torch.randn(2, 8, 8, 8))


def test_a_space_of_its_own_mixed_operations_goes_through_a_supernet():
    arch = _searched(tiny_autoformer(), (1, 8, 8), 7)
    with pytest.raises(NotBuildable):
        build_network(tiny_autoformer(), arch)


def test_removed_edges_take_their_shape_from_the_document(no_supernet):
    space, strategy = hmnas_supernet("nb201", 8)
    random_masks(space, strategy, 8, keep=0.3)
    arch = export(space)
    removed = [label for label, kept in arch.ops.items() if not kept]
    assert removed and set(arch.edge_shapes) == set(removed)
    net = rebuild.network_from_architecture(arch)
    assert sum(isinstance(m, RemovedEdge) for m in net.modules()) >= len(removed)


def test_a_document_without_edge_shapes_is_derived_through_a_supernet_and_can_record_them():
    space, strategy = hmnas_supernet("nb201", 9)
    random_masks(space, strategy, 9, keep=0.3)
    arch = export(space)
    older = Architecture.from_dict({k: v for k, v in arch.to_dict().items() if k != "edge_shapes"})
    assert rebuild.built_network(older) is None
    _same_network(rebuild.network_from_architecture(older), rebuild.network_from_architecture(arch),
                  torch.randn(2, 1, 8, 8))
    assert rebuild.with_edge_shapes(older).edge_shapes == arch.edge_shapes


@pytest.mark.parametrize("path", shipped_architectures(), ids=lambda p: p.stem)
def test_every_shipped_model_is_created_without_a_supernet(path, no_supernet):
    model = timm.create_model(f"hmnas_{path.stem}")
    assert not any(type(m).__module__.startswith(("nni.", "hmnas_nni.nas.supermodules")) for m in model.modules())


@pytest.mark.parametrize("shapes, message", [
    ("x", "must be an object"),
    ({"cell/0_2": [[8, 8, 8]]}, "must be \\[input shape, output shape\\]"),
    ({"cell/0_2": [[8, 8, 8], [8, 0, 8]]}, "positive integers"),
    ({"cell/0_2": [[8, 8, 8], [8, 8]]}, "of one length"),
])
def test_malformed_edge_shapes_are_one_line_errors(shapes, message):
    doc = json.loads(shipped_architectures()[2].read_text()) | {"edge_shapes": shapes}
    with pytest.raises(ArchitectureError, match=message):
        Architecture.from_dict(doc)


def test_a_shape_for_a_kept_edge_is_refused():
    doc = json.loads(shipped_architectures()[2].read_text())
    doc["edge_shapes"]["cell/0_1"] = [[8, 8, 8], [8, 8, 8]]
    with pytest.raises(ArchitectureError, match="keeps ops; only a removed edge"):
        rebuild.network_from_architecture(Architecture.from_dict(doc))


@pytest.mark.parametrize("path", shipped_architectures(), ids=lambda p: p.stem)
def test_feature_levels_are_recorded_while_building_and_match_a_dry_forward(path, monkeypatch):
    measured = []
    monkeypatch.setattr(hmnas_timm, "measure_levels", lambda *a: measured.append(1) or measure_levels(*a))
    model = timm.create_model(f"hmnas_{path.stem}")
    assert not measured
    shape = tuple(model.pretrained_cfg["input_size"])
    levels = measure_levels(model.body, model._layout, shape)
    assert model.feature_info == levels.info
    assert model._level_steps == levels.steps
    assert tuple(model.pretrained_cfg["pool_size"]) == levels.final_size == model.feature_map_size()
