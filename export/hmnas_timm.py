"""HM-NAS derived networks as a timm model family.

Every ``export/archs/<name>.json`` shipped with the package is registered as ``hmnas_<name>`` (like
timm's ``hardcorenas_a..f``); ``hmnas`` builds any architecture (``arch=``) and, given none, the
documented default :data:`~hmnas_nni.export.archs.DEFAULT_ARCH`. Every name builds from its name alone.
:class:`HmnasNet` has timm's whole CNN interface: ``feature_info`` and ``features_only=True``,
``forward_intermediates``, ``prune_intermediate_layers``, ``group_matcher``, gradient checkpointing,
TorchScript and FX tracing. Weights are safetensors files (:mod:`hmnas_nni.export.weights`).

This module deliberately has no ``from __future__ import annotations``: FX copies ``forward``'s
annotations into generated code, and TorchScript cannot read them back as strings.
"""

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from hmnas_nni.format.architecture import Architecture, ArchitectureError
from hmnas_nni.nas.rebuild import network_from_architecture

from .archs import ARCH_DIR, DEFAULT_ARCH, shipped_architectures
from .stages import body_layout, measure_levels, recorded_levels, run_steps
from .weights import (
    WEIGHTS_FORMAT,
    WeightsError,
    check_state_dict,
    checkpoint_filter_fn,
    load_weights,
    read_state_dict,
    save_weights,
)

__all__ = [
    "HmnasNet", "WeightsError", "ArchLike", "ARCH_DIR", "DEFAULT_ARCH", "WEIGHTS_FORMAT", "resolve_architecture",
    "arch_pretrained_cfg", "build_body", "checkpoint_filter_fn", "read_state_dict", "check_state_dict",
    "load_weights", "save_weights", "register_architecture", "registered_architectures", "create_hmnas",
]

ArchLike = str | os.PathLike | Mapping | Architecture


# --------------------------------------------------------------------------- architecture documents
def resolve_architecture(arch: ArchLike) -> tuple[Architecture, dict[str, Any]]:
    """Turn a path, dict or :class:`Architecture` into a validated-on-build document plus its raw extras."""
    if isinstance(arch, Architecture):
        return arch, {}
    if isinstance(arch, Mapping):
        doc = dict(arch)
        return Architecture.from_dict(doc, where="architecture dict"), _extras(doc)
    if isinstance(arch, (str, os.PathLike)):
        path = Path(arch)
        parsed = Architecture.load(path)  # clear errors for missing / invalid files
        return parsed, _extras(json.loads(path.read_text()))
    raise ArchitectureError(f"arch must be a path, a dict or an Architecture, got {type(arch).__name__}")


def _extras(doc: dict[str, Any]) -> dict[str, Any]:
    """Optional data-config block (``dataset``: name, mean, std) that retrain writes beside the architecture."""
    ds = doc.get("dataset")
    return {"dataset": dict(ds)} if isinstance(ds, dict) else {}


def _data_config(arch: Architecture, extras: dict[str, Any]) -> dict[str, Any]:
    """Input size (the recorded input shape, else the space's arguments), mean and std (the ``dataset`` block,
    else neutral 0.5 / 0.5) of an architecture."""
    a = arch.space_args
    c = int(a.get("in_channels", arch.input_shape[0] if arch.input_shape else 3))
    size = int(a.get("input_size", arch.input_shape[-1] if arch.input_shape else 32))
    ds = extras.get("dataset", {})
    mean = tuple(float(v) for v in ds.get("mean", (0.5,) * c))
    std = tuple(float(v) for v in ds.get("std", (0.5,) * c))
    if len(mean) != c or len(std) != c:
        raise ArchitectureError(f"dataset block has {len(mean)} mean / {len(std)} std values for {c} input channels")
    return {"input_size": (c, size, size), "mean": mean, "std": std}


def arch_pretrained_cfg(arch: ArchLike, architecture: str = "hmnas", **overrides: Any) -> dict[str, Any]:
    """timm ``pretrained_cfg`` for an architecture; ``pool_size`` is measured once a model is built."""
    parsed, extras = resolve_architecture(arch)
    data = _data_config(parsed, extras)
    cfg = {
        "url": "",
        "architecture": architecture,
        "num_classes": int(parsed.space_args.get("num_classes", 10)),
        "input_size": data["input_size"],
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": data["mean"],
        "std": data["std"],
        "first_conv": "body.stem.0",
        "classifier": "classifier",
        "fixed_input_size": False,
        "license": "mit",
        "description": f"HM-NAS derived network of the {parsed.space!r} space ({parsed.strategy} strategy)",
    }
    if "name" in extras.get("dataset", {}):
        cfg["notes"] = (f"dataset: {extras['dataset']['name']}",)
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- the body
def build_body(arch: Architecture, space_args: Mapping[str, Any]) -> nn.Module:
    """The derived network of ``arch`` (stem, cells/blocks, lastact/conv_head, classifier), freshly initialised and
    built with ``space_args`` (e.g. other in_channels): every body is built here."""
    doc = arch.to_dict() | {"space_args": dict(space_args)}
    if arch.input_shape is not None and "in_channels" in space_args:
        doc["input_shape"] = [space_args["in_channels"], *arch.input_shape[1:]]
    return network_from_architecture(Architecture.from_dict(doc))


# --------------------------------------------------------------------------- the model
class HmnasNet(nn.Module):
    """A derived HM-NAS network behind timm's CNN interface (features, intermediates, head, classifier reset)."""

    def __init__(
        self,
        arch: ArchLike,
        num_classes: int | None = None,
        in_chans: int | None = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        body: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"HmnasNet got unexpected argument(s) {sorted(kwargs)}")
        self.arch, extras = resolve_architecture(arch)
        args = dict(self.arch.space_args)
        if in_chans is not None and ("in_channels" in args or int(in_chans) != _data_config(self.arch, extras)[
                "input_size"][0]):
            args["in_channels"] = int(in_chans)  # a space without the argument refuses it, naming it
        if body is None:
            body = build_body(self.arch, args)
        self._layout = body_layout(body)
        self.in_chans = int(args.get("in_channels", 3))
        self.num_classes = int(args.get("num_classes", 10)) if num_classes is None else int(num_classes)
        self.num_features = int(body.num_features)
        self.drop_rate = float(drop_rate)
        self.grad_checkpointing = False
        old_fc = body.classifier
        # The body keeps only its features: pooling and classifier live here so reset_classifier can swap them.
        body.global_pool = nn.Identity()
        body.classifier = nn.Identity()
        self.body = body
        cfg = arch_pretrained_cfg(self.arch.to_dict() | extras, num_classes=self.num_classes)
        shape = (self.in_chans, *cfg["input_size"][1:])
        levels = recorded_levels(body, self._layout, shape) or measure_levels(body, self._layout, shape)
        self.feature_info = levels.info
        self._level_steps = levels.steps
        self._levels_kept = len(levels.steps)
        self.global_pool, self.head_drop, self.classifier = self._make_head(self.num_classes, global_pool)
        if isinstance(old_fc, nn.Linear) and isinstance(self.classifier, nn.Linear) \
                and old_fc.weight.shape == self.classifier.weight.shape:
            self.classifier = old_fc  # keep inherited head weights (e.g. from a supernet)
        self.pool_size = levels.final_size
        self.pretrained_cfg = cfg | {"pool_size": levels.final_size}
        self.default_cfg = self.pretrained_cfg

    def _make_head(self, num_classes: int, global_pool: str) -> tuple[nn.Module, nn.Module, nn.Module]:
        """Pooling, dropout and classifier from timm's own head factory, on the body's device and dtype."""
        if not global_pool and num_classes > 0:
            raise ValueError("global_pool='' keeps the features unpooled, so it needs num_classes=0 (no classifier)")
        p = next(self.body.parameters())
        self.global_pool_type = global_pool
        pool, drop, fc = create_classifier(self.num_features, num_classes, pool_type=global_pool,
                                           drop_rate=self.drop_rate, device=p.device, dtype=p.dtype)
        self.head_hidden_size = self.num_features * pool.feat_mult()
        return pool, drop, fc

    # -- head
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final classifier module (``nn.Identity`` when there are no classes)."""
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0 removes it), optionally changing the pooling."""
        pool_type = self.global_pool_type if global_pool is None else global_pool
        self.num_classes = int(num_classes)
        self.global_pool, self.head_drop, self.classifier = self._make_head(self.num_classes, pool_type)
        for m in (self.global_pool, self.head_drop, self.classifier):
            m.train(self.training)

    # -- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features, shape (N, num_features, H', W')."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_steps(x)
        return self.body.forward_features(x)

    def _forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_features`` one step at a time, each cell checkpointed when gradient checkpointing is on."""
        for out in run_steps(self.body, self._layout.steps, x, self.grad_checkpointing):
            x = out
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, drop and classify; ``pre_logits`` stops before the classifier."""
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or pooled features when ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))

    # -- intermediates
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Features of the ``feature_info`` levels in ``indices`` (last n if int, all if None), as timm's CNNs.

        ``norm`` passes the last level through the body's final layers (``lastact``/``conv_head``) as
        ``forward_features`` does; ``stop_early`` (or ``intermediates_only``) stops after the last level taken.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not available: HmnasNet features are NCHW only")
        take, max_index = self._take_levels(indices)
        last_level = len(self.feature_info) - 1
        steps = self._layout.steps
        end = self._level_steps[max_index] + 1 if stop_early or intermediates_only else len(steps)
        level_at = {s: k for k, s in enumerate(self._level_steps)}
        intermediates: list[torch.Tensor] = []
        for i, out in enumerate(run_steps(self.body, steps[:end], x, self.grad_checkpointing)):
            x = out
            level = level_at.get(i)
            if level in take:
                tail = self._layout.tail
                intermediates.append(self.body.get_submodule(tail)(out) if norm and tail and level == last_level
                                     else out)
        return intermediates if intermediates_only else (x, intermediates)

    def _take_levels(self, indices: int | list[int] | tuple[int, ...] | None) -> tuple[list[int], int]:
        """timm's level selection, refusing levels that :meth:`prune_intermediate_layers` removed."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        if max_index >= self._levels_kept:
            raise ValueError(f"feature level {max_index} was removed by prune_intermediate_layers; "
                             f"levels 0..{self._levels_kept - 1} remain")
        return take, max_index

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] | None = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the cells after the last level in ``indices`` (and the final layers / head); returns the levels kept."""
        take, max_index = self._take_levels(indices)
        last_step = self._level_steps[max_index]
        cells = getattr(self.body, self._layout.sequence)
        setattr(self.body, self._layout.sequence, cells[:last_step])  # step k >= 1 is cell k - 1
        prune_end = max_index < len(self.feature_info) - 1
        tail = self._layout.tail
        if tail is not None and (prune_norm or prune_end):
            setattr(self.body, tail, nn.Identity())
        if prune_end or (tail is not None and prune_norm):  # the features now end at level max_index, untailed
            self.num_features = self.feature_info[max_index]["num_chs"]
        self._layout = body_layout(self.body)
        self._levels_kept = max_index + 1
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        elif isinstance(self.classifier, nn.Linear) and self.classifier.in_features != self.num_features:
            self.reset_classifier(self.num_classes)
        return take

    # -- training helpers
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups (stem, then one per cell or per stage, then the final layers) for layer-wise lr decay."""
        seq = rf"^body\.{self._layout.sequence}\."
        tail = [(rf"^body\.{self._layout.tail}\.", (99999,))] if self._layout.tail else []
        if not coarse:
            return {"stem": r"^body\.stem\.", "blocks": [(seq + r"(\d+)\.", None), *tail]}
        stages = []
        for k in range(1, self._levels_kept):
            first, last = self._level_steps[k - 1], self._level_steps[k] - 1  # cells of stage k, as cell indices
            cells = "|".join(str(c) for c in range(first, last + 1))
            stages.append((seq + rf"(?:{cells})\.", (k,)))
        return {"stem": r"^body\.stem\.", "blocks": [*stages, *tail]}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each cell's activations in backward instead of storing them (less memory, more compute)."""
        self.grad_checkpointing = bool(enable)

    @torch.jit.ignore
    def feature_map_size(self) -> tuple[int, int]:
        """Spatial size of ``forward_features`` at the architecture's input size (measured, not assumed)."""
        c, h, w = self.pretrained_cfg["input_size"]
        p = next(self.parameters())
        was_training = self.training
        self.eval()
        with torch.no_grad():
            f = self.forward_features(torch.zeros(1, self.in_chans, h, w, dtype=p.dtype, device=p.device))
        self.train(was_training)
        return int(f.shape[-2]), int(f.shape[-1])


# --------------------------------------------------------------------------- timm registration
_FEATURE_CLASSES = ("getter", "hook", "fx")


def _feature_cfg(kwargs: dict[str, Any], arch_doc: dict[str, Any]) -> dict[str, Any]:
    """timm's ``feature_cfg`` for ``features_only``: every level by default, through ``forward_intermediates``."""
    cfg = dict(kwargs.pop("feature_cfg", None) or {})
    cls = kwargs.get("feature_cls", cfg.get("feature_cls", "getter"))
    if isinstance(cls, str) and cls.lower() not in _FEATURE_CLASSES and "hook" not in cls.lower():
        raise ValueError(f"feature_cls={cls!r} needs a sequential model; hmnas models take "
                         f"feature_cls={' / '.join(repr(c) for c in _FEATURE_CLASSES)} (default 'getter')")
    cfg["feature_cls"] = cls
    if "out_indices" in kwargs or "out_indices" in cfg:
        return cfg
    if cls == "getter":
        return cfg | {"out_indices": None}  # None: every level (FeatureGetterNet asks the model)
    with torch.random.fork_rng(devices=[]):  # counting the levels must not change the model's initial weights
        levels = len(HmnasNet(arch_doc, in_chans=kwargs.get("in_chans")).feature_info)
    return cfg | {"out_indices": tuple(range(levels))}


def create_hmnas(arch: ArchLike | None = None, pretrained: bool = False, variant: str = "hmnas",
                 **kwargs: Any) -> nn.Module:
    """Build ``arch`` (default :data:`DEFAULT_ARCH`) through timm's ``build_model_with_cfg`` (loading, features)."""
    parsed, extras = resolve_architecture(DEFAULT_ARCH if arch is None else arch)
    doc = parsed.to_dict() | extras
    if arch is not None and kwargs.get("pretrained_cfg") is None:  # no arch: the registered default cfg applies
        kwargs["pretrained_cfg"] = arch_pretrained_cfg(doc, architecture=variant)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and overlay.get("file"):
        read_state_dict(overlay["file"])  # a missing or truncated file fails here with a clear message
    feature_cfg = _feature_cfg(kwargs, doc) if kwargs.get("features_only") else None
    model = build_model_with_cfg(
        HmnasNet, variant, pretrained, arch=doc, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg, **kwargs,
    )
    if isinstance(model, HmnasNet):
        model.pretrained_cfg["pool_size"] = model.pool_size  # timm's builder sets the cfg after __init__
    return model


_ARCHS: dict[str, Path] = {}


def _model_name(stem: str) -> str:
    """``hmnas_<stem>`` with the stem made a Python identifier."""
    s = re.sub(r"[^0-9a-zA-Z_]+", "_", stem).strip("_").lower()
    return s if s.startswith("hmnas_") else f"hmnas_{s}"


def _fixed(model_name: str, path: Path, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """The network of one registered architecture file; ``arch=`` belongs to the generic ``hmnas`` name."""
    if "arch" in kwargs:
        raise TypeError(f"{model_name} is a fixed architecture ({path.name}); use 'hmnas' to pass arch=")
    return create_hmnas(path, pretrained, variant=model_name, **kwargs)


def register_architecture(path: str | os.PathLike, name: str | None = None) -> str:
    """Register a user's architecture JSON as timm model ``hmnas_<name>`` and return the model name."""
    path = Path(path)
    model_name = _model_name(name or path.stem)
    cfg = arch_pretrained_cfg(path, architecture=model_name)
    default_cfgs[model_name] = generate_default_cfgs({model_name: cfg})[model_name]

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _fixed(model_name, path, pretrained, kwargs)

    entry.__name__ = entry.__qualname__ = model_name
    entry.__module__ = __name__
    entry.__doc__ = f"HM-NAS architecture registered from {path.name}."
    register_model(entry)
    _ARCHS[model_name] = path
    return model_name


def registered_architectures() -> dict[str, Path]:
    """Model name -> architecture file for every registered ``hmnas_<name>``."""
    return dict(_ARCHS)


#: The architectures shipped in :data:`ARCH_DIR`, each registered below under ``hmnas_<file stem>``.
SHIPPED = {_model_name(p.stem): p for p in shipped_architectures()}
_ARCHS.update(SHIPPED)

default_cfgs = generate_default_cfgs({
    "hmnas": arch_pretrained_cfg(
        DEFAULT_ARCH, description=f"HM-NAS derived network: arch= if given, else the shipped {DEFAULT_ARCH.name}"),
    **{name: arch_pretrained_cfg(path, architecture=name) for name, path in SHIPPED.items()},
})


@register_model
def hmnas(pretrained: bool = False, arch: ArchLike | None = None, **kwargs: Any) -> nn.Module:
    """Any derived architecture, ``timm.create_model('hmnas', arch='arch.json')``; without ``arch`` the default."""
    return create_hmnas(arch, pretrained, variant="hmnas", **kwargs)


@register_model
def hmnas_darts_digits_smoke(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A DARTS-space cell network searched on digits at smoke size (darts_digits_smoke.json)."""
    return _fixed("hmnas_darts_digits_smoke", SHIPPED["hmnas_darts_digits_smoke"], pretrained, kwargs)


@register_model
def hmnas_mobile_digits_smoke(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A mobile-space network (widths, kernels, depths) searched on digits at smoke size (mobile_digits_smoke.json)."""
    return _fixed("hmnas_mobile_digits_smoke", SHIPPED["hmnas_mobile_digits_smoke"], pretrained, kwargs)


@register_model
def hmnas_nb201_digits_smoke(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """An NB201-space cell network searched on digits at smoke size (nb201_digits_smoke.json)."""
    return _fixed("hmnas_nb201_digits_smoke", SHIPPED["hmnas_nb201_digits_smoke"], pretrained, kwargs)


@register_model
def hmnas_nb201_fmnist(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The README's main job: the NB201-space network searched on Fashion-MNIST (nb201_fmnist.json)."""
    return _fixed("hmnas_nb201_fmnist", SHIPPED["hmnas_nb201_fmnist"], pretrained, kwargs)
