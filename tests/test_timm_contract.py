"""timm's model contract (what timm's own tests/test_models.py checks) on every registered ``hmnas*`` model."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import timm.optim
import torch
from timm.models import create_feature_extractor, group_parameters

import hmnas_nni.export  # noqa: F401  (registers the hmnas models)

MODELS = timm.list_models("hmnas*")
FEATURE_CLASSES = ("getter", "hook", "fx")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.parametrize("name", MODELS)]


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    """A seeded batch at the model's default input size (the smallest the architecture was searched at)."""
    return torch.randn(batch, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))


def _seeded(name: str, **kwargs) -> torch.nn.Module:
    """Create ``name`` from a fixed seed, so two creations (with or without features) hold the same weights."""
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def test_builds_from_its_name_alone(name):
    model = timm.create_model(name)
    assert isinstance(model, hmnas_nni.export.HmnasNet)
    assert model.pretrained_cfg["architecture"] == name
    assert timm.is_model(name) and timm.models.get_pretrained_cfg_value(name, "input_size") is not None


def test_forward_shape_finite_and_unchanged_by_checkpointing(name):
    model = timm.create_model(name).eval()
    x = _input(model, 1)
    out = model(x)
    assert out.shape == (1, model.num_classes)
    assert torch.isfinite(out).all()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


def test_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(_input(model))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_default_cfg_matches_the_model(name):
    model = timm.create_model(name).eval()
    cfg = model.default_cfg
    assert model.num_classes == cfg["num_classes"] > 0 and model.num_features > 0 and model.head_hidden_size > 0
    x = _input(model, 1)
    assert x.shape[1] == cfg["input_size"][0] == model.in_chans
    feats = model.forward_features(x)
    assert feats.shape == (1, model.num_features, *cfg["pool_size"])
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape
    model.reset_classifier(0, "")
    assert model(x).shape == feats.shape
    unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
    assert unpooled(x).shape == feats.shape
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and state[f"{cfg['first_conv']}.weight"].shape[1] == model.in_chans
    full = timm.create_model(name).state_dict()
    assert f"{cfg['classifier']}.weight" in full and full[f"{cfg['classifier']}.weight"].shape[0] == cfg["num_classes"]


def test_get_and_reset_classifier(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    assert model.get_classifier().out_features == model.num_classes
    model.reset_classifier(5, "avgmax")
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0, "catavgmax")
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    assert model(x).shape == (2, model.head_hidden_size) == (2, 2 * model.num_features)


def test_forward_features_and_head_compose_to_forward(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    feats = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    torch.testing.assert_close(model.get_classifier()(model.forward_head(feats, pre_logits=True)), model(x))


def test_torchscript_matches_eager(name):
    with timm.layers.set_layer_config(scriptable=True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model, 1)
    torch.testing.assert_close(scripted(x), model(x))


def _check_maps(maps: list[torch.Tensor], info, size: int, batch: int) -> None:
    """Feature maps agree with ``feature_info``: count, channels and reduction."""
    assert len(maps) == len(info.channels())
    for t, c, r in zip(maps, info.channels(), info.reduction()):
        assert t.shape == (batch, c, math.ceil(size / r), math.ceil(size / r))
        assert torch.isfinite(t).all()


def test_features_only_matches_feature_info(name):
    full = _seeded(name)
    feats = _seeded(name, features_only=True)
    x = _input(full)
    info = feats.feature_info
    assert len(info.channels()) >= 3 and info.channels() == [f["num_chs"] for f in full.feature_info]
    modules = dict(full.named_modules())
    assert all(f["module"] in modules for f in full.feature_info)
    maps = feats(x)
    _check_maps(maps, info, x.shape[-1], 2)
    for cls in FEATURE_CLASSES[1:]:
        other = _seeded(name, features_only=True, feature_cls=cls)
        assert other.feature_info.channels() == info.channels()
        for a, b in zip(other(x), maps):
            torch.testing.assert_close(a, b)


def test_features_only_out_indices_prunes_what_is_not_needed(name):
    full = timm.create_model(name)
    first_two = _seeded(name, features_only=True, out_indices=(0, 1))
    assert first_two.feature_info.channels() == [f["num_chs"] for f in full.feature_info[:2]]
    _check_maps(first_two(_input(full)), first_two.feature_info, full.pretrained_cfg["input_size"][-1], 2)
    assert sum(p.numel() for p in first_two.parameters()) < sum(p.numel() for p in full.parameters())
    last = _seeded(name, features_only=True, out_indices=(-1,))
    assert last.feature_info.channels() == [full.feature_info[-1]["num_chs"]]


def test_forward_intermediates_match_features_and_forward_features(name):
    model = _seeded(name)
    x = _input(model)
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    for a, b in zip(inter, _seeded(name, features_only=True)(x)):
        torch.testing.assert_close(a, b)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2 and all(torch.equal(a, b) for a, b in zip(last_two, inter[-2:]))
    early, first = model.forward_intermediates(x, indices=[0], stop_early=True)
    assert len(first) == 1 and torch.equal(first[0], inter[0]) and torch.equal(early, inter[0])
    normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
    torch.testing.assert_close(normed[0], final)
    assert normed[0].shape[1] == model.feature_info[-1].get("num_chs_norm", model.feature_info[-1]["num_chs"])
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_prune_intermediate_layers(name):
    model = _seeded(name)
    x = _input(model)
    expected = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert model.num_features == model.feature_info[1]["num_chs"] and model.num_classes == 0
    for a, b in zip(model.forward_intermediates(x, indices=[0, 1], intermediates_only=True), expected):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(model(x), expected[-1])
    with pytest.raises(ValueError, match="removed by prune_intermediate_layers"):
        model.forward_intermediates(x, indices=[2])


def test_fx_forward_and_backward(name):
    eager = _seeded(name, num_classes=42)
    x = _input(eager)
    # timm's FX helper, asked for every feature level and the classifier named in the cfg
    nodes = [*(f["module"] for f in eager.feature_info), eager.default_cfg["classifier"]]
    graph = create_feature_extractor(eager, nodes)
    with torch.inference_mode():
        outs = list(graph.eval()(x).values())
        assert torch.equal(outs[-1], eager(x))
        for a, b in zip(outs[:-1], eager.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(a, b)
    logits = list(graph.train()(x).values())[-1]
    assert logits.shape == (2, 42)
    logits.mean().backward()
    missing = [n for n, p in graph.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.numel() for p in graph.parameters()) == sum(p.numel() for p in eager.parameters())


def test_grad_checkpointing_gives_the_same_outputs_and_gradients(name):
    plain = timm.create_model(name).eval()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = _input(plain)
    final, _ = ckpt.forward_intermediates(x)
    torch.testing.assert_close(final, plain.forward_features(x))
    plain.train()
    ckpt.train()
    out, out_ckpt = plain(x), ckpt(x)
    torch.testing.assert_close(out_ckpt, out)
    out.square().mean().backward()
    out_ckpt.square().mean().backward()
    grads = dict(ckpt.named_parameters())
    for n, p in plain.named_parameters():
        torch.testing.assert_close(grads[n].grad, p.grad, rtol=1e-4, atol=1e-6)


def test_group_matcher_orders_stem_cells_and_head(name):
    model = timm.create_model(name)
    names = [n for n, _ in model.named_parameters()]
    for coarse in (False, True):
        layer = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        ids = [layer[n] for n in names]
        assert ids == sorted(ids), "groups must follow the order of the network"
        assert ids[0] == 0 and all(layer[n] == 0 for n in names if n.startswith("body.stem."))
        assert all(layer[n] == ids[-1] for n in names if n.startswith("classifier."))
    stages = len(set(group_parameters(model, model.group_matcher(coarse=True), reverse=True).values()))
    assert stages <= len(model.feature_info) + 2  # stem, one group per stage, final layers, head
    timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, layer_decay=0.7)
