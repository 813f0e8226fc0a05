"""timm contract of the ``hmnas`` model family on derived networks of every project space."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.data import resolve_data_config

import hmnas_nni.export as export
from hmnas_nni.export.hmnas_timm import ARCH_DIR, HmnasNet, WeightsError, registered_architectures
from hmnas_nni.format.architecture import ArchitectureError
from tests.sample_archs import smoke_architecture

SPACES = ("nb201", "darts", "mobile")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=SPACES)
def arch_file(request, tmp_path_factory):
    """A sampled architecture of each space, saved as JSON."""
    path = tmp_path_factory.mktemp(request.param) / "arch.json"
    smoke_architecture(request.param).save(path)
    return path


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_listed_by_timm():
    assert "hmnas" in timm.list_models("hmnas*")
    assert timm.is_model("hmnas")


def test_arch_as_path_dict_or_object_build_the_same_network(arch_file):
    arch = export.resolve_architecture(arch_file)[0]
    models = [timm.create_model("hmnas", arch=a) for a in (arch_file, str(arch_file), json.loads(arch_file.read_text()),
                                                          arch)]
    keys = [tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models]
    assert all(k == keys[0] for k in keys)
    assert all(isinstance(m, HmnasNet) for m in models)


def test_forward_backward_reaches_every_parameter(arch_file):
    model = timm.create_model("hmnas", arch=arch_file, num_classes=10)
    model.train()
    out = model(_x())
    assert out.shape == (3, 10)
    out.logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_headless_and_unpooled_shapes(arch_file):
    model = timm.create_model("hmnas", arch=arch_file, num_classes=0).eval()
    assert model(_x()).shape == (3, model.num_features)
    unpooled = timm.create_model("hmnas", arch=arch_file, num_classes=0, global_pool="").eval()
    feats = unpooled(_x())
    assert feats.shape == (3, unpooled.num_features, *unpooled.pretrained_cfg["pool_size"])
    with pytest.raises(ValueError, match="num_classes=0"):
        timm.create_model("hmnas", arch=arch_file, num_classes=5, global_pool="")


def test_reset_classifier(arch_file):
    model = timm.create_model("hmnas", arch=arch_file).eval()
    assert model.get_classifier().out_features == 10
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(_x()).shape == (3, 7)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    assert model(_x()).shape == (3, model.num_features)
    model.reset_classifier(0, "")
    assert model(_x()).dim() == 4
    model.reset_classifier(4, "max")
    assert model(_x()).shape == (3, 4)


def test_features_and_head_compose_to_forward(arch_file):
    model = timm.create_model("hmnas", arch=arch_file).eval()
    x = _x()
    feats = model.forward_features(x)
    assert feats.dim() == 4 and feats.shape[1] == model.num_features
    torch.testing.assert_close(model.forward_head(feats), model(x))
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (3, model.num_features) and model.head_hidden_size == model.num_features
    torch.testing.assert_close(model.get_classifier()(pre), model(x))


def test_pretrained_cfg_names_resolve_in_state_dict(arch_file):
    model = timm.create_model("hmnas", arch=arch_file)
    cfg = model.pretrained_cfg
    sd = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in sd
    assert sd[f"{cfg['first_conv']}.weight"].shape[1] == cfg["input_size"][0]
    assert f"{cfg['classifier']}.weight" in sd and f"{cfg['classifier']}.bias" in sd
    assert sd[f"{cfg['classifier']}.weight"].shape[0] == cfg["num_classes"] == model.num_classes
    assert tuple(cfg["pool_size"]) == model.feature_map_size()
    data = resolve_data_config({}, model=model)
    assert data["input_size"] == (1, 8, 8) and len(data["mean"]) == len(data["std"]) == 1


def test_safetensors_round_trip_through_create_model(arch_file, tmp_path):
    src = timm.create_model("hmnas", arch=arch_file).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # weights that differ from any fresh init
    export.save_weights(src, tmp_path / "model.safetensors")
    loaded = timm.create_model("hmnas", arch=arch_file, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    torch.testing.assert_close(loaded(_x()), src(_x()), rtol=0, atol=0)
    # A new head size keeps the body and drops the classifier, as for timm's own models.
    tuned = timm.create_model("hmnas", arch=arch_file, pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    torch.testing.assert_close(tuned.forward_features(_x()), src.forward_features(_x()), rtol=0, atol=0)
    assert tuned(_x()).shape == (3, 3)
    # Three input channels: timm adapts the stem of one-channel weights.
    rgb = timm.create_model("hmnas", arch=arch_file, pretrained=True, in_chans=3,
                            pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    assert rgb(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_torchscript_matches_eager(arch_file):
    model = timm.create_model("hmnas", arch=arch_file).eval()
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(_x()), model(_x()))
    torch.testing.assert_close(scripted.forward_features(_x()), model.forward_features(_x()))


def test_registered_architecture_builds_without_arguments(tmp_path):
    path = tmp_path / "unit_probe.json"
    smoke_architecture("mobile", seed=3).save(path)
    name = export.register_architecture(path)
    assert name == "hmnas_unit_probe" and name in timm.list_models("hmnas*")
    model = timm.create_model(name).eval()
    assert model.pretrained_cfg["architecture"] == name and model(_x()).shape == (3, 10)
    with pytest.raises(TypeError, match="fixed architecture"):
        timm.create_model(name, arch=path)


def test_every_shipped_arch_json_is_registered():
    shipped = {p.resolve() for p in ARCH_DIR.glob("*.json")}
    registered = {p.resolve() for p in registered_architectures().values()}
    assert shipped <= registered
    for name, path in registered_architectures().items():
        if path.parent.resolve() == ARCH_DIR.resolve():
            assert timm.create_model(name).pretrained_cfg["architecture"] == name


def test_generic_name_builds_the_documented_default_architecture():
    model = timm.create_model("hmnas")
    default = timm.create_model("hmnas", arch=export.DEFAULT_ARCH)
    shipped = export.resolve_architecture(export.DEFAULT_ARCH)[0]
    assert model.arch.to_dict() == default.arch.to_dict() == shipped.to_dict()
    assert model.pretrained_cfg["architecture"] == "hmnas"
    assert model.pretrained_cfg["input_size"] == default.pretrained_cfg["input_size"]
    assert export.create_hmnas().arch.to_dict() == model.arch.to_dict()


def test_bad_arch_fails_clearly(tmp_path):
    with pytest.raises(ArchitectureError, match="arch must be a path, a dict or an Architecture"):
        timm.create_model("hmnas", arch=3)
    with pytest.raises(ArchitectureError):
        timm.create_model("hmnas", arch=tmp_path / "missing.json")


def test_foreign_weights_fail_clearly(tmp_path):
    nb = tmp_path / "nb.json"
    mob = tmp_path / "mob.json"
    smoke_architecture("nb201").save(nb)
    smoke_architecture("mobile").save(mob)
    export.save_weights(timm.create_model("hmnas", arch=nb), tmp_path / "nb.safetensors")
    with pytest.raises(WeightsError, match="another architecture"):
        timm.create_model("hmnas", arch=mob, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "nb.safetensors")))
    with pytest.raises(WeightsError, match="another architecture"):
        export.load_weights(timm.create_model("hmnas", arch=mob), tmp_path / "nb.safetensors")


def test_pretrained_backbone_loads_the_weights(arch_file, tmp_path):
    src = timm.create_model("hmnas", arch=arch_file).eval()
    export.save_weights(src, tmp_path / "model.safetensors")
    backbone = timm.create_model("hmnas", arch=arch_file, pretrained=True, features_only=True, out_indices=(1, -1),
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    expected = src.forward_intermediates(_x(), indices=[1, len(src.feature_info) - 1], intermediates_only=True)
    for a, b in zip(backbone(_x()), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert backbone.feature_info.channels() == [t.shape[1] for t in expected]


def test_unsupported_feature_class_fails_clearly(arch_file):
    with pytest.raises(ValueError, match="feature_cls='list' needs a sequential model"):
        timm.create_model("hmnas", arch=arch_file, features_only=True, feature_cls="list")


def test_body_that_is_not_a_derived_network_fails_clearly(arch_file):
    with pytest.raises(ValueError, match="has no `stem`, `cells`/`blocks` and `num_features`"):
        HmnasNet(arch_file, body=torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)))


def test_feature_cfg_passes_through_to_timm(arch_file):
    full = timm.create_model("hmnas", arch=arch_file)
    normed = timm.create_model("hmnas", arch=arch_file, features_only=True, feature_cfg={"norm": True})
    last = full.feature_info[-1]
    assert normed.feature_info.channels()[-1] == last.get("num_chs_norm", last["num_chs"])
    assert [t.shape[1] for t in normed.eval()(_x())] == normed.feature_info.channels()
    fx = timm.create_model("hmnas", arch=arch_file, features_only=True, feature_cfg={"feature_cls": "fx"})
    assert [t.shape[1] for t in fx.eval()(_x())] == [f["num_chs"] for f in full.feature_info]
