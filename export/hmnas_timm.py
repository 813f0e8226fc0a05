"""HM-NAS derived networks as a timm model family.

``timm.create_model('hmnas', arch='arch.json')`` builds the derived network of any project space;
every ``export/archs/<name>.json`` shipped with the package is registered as ``hmnas_<name>``
(like timm's ``hardcorenas_a..f``) and builds with no other argument. Weights are safetensors
files keyed like :class:`HmnasNet`'s ``state_dict``; plain derived-network state dicts
(``stem.0.weight`` ... ``classifier.weight``) load too, through :func:`checkpoint_filter_fn`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from hmnas_nni.format.architecture import Architecture, ArchitectureError
from hmnas_nni.format.files import publish
from hmnas_nni.format.weights import check_weights

__all__ = [
    "HmnasNet", "WeightsError", "ArchLike", "ARCH_DIR", "resolve_architecture", "arch_pretrained_cfg",
    "checkpoint_filter_fn", "read_state_dict", "check_state_dict", "load_weights", "save_weights",
    "register_architecture", "registered_architectures", "create_hmnas",
]

ARCH_DIR = Path(__file__).parent / "archs"
WEIGHTS_FORMAT = "hmnas-weights/1"
ArchLike = str | os.PathLike | Mapping | Architecture

# Number of stride-2 reductions each space applies; only used for the registry's ``pool_size``
# before a model is built (a built model measures its own; tests check the two agree).
_REDUCTIONS = {"nb201": lambda a: 2, "mobile": lambda a: 2, "darts": lambda a: 2 if a.get("num_cells", 3) >= 3 else 0}


class WeightsError(ValueError):
    """A weights file that cannot be used with this architecture; the message says why and how to fix it."""


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
    """Input size, mean and std for an architecture: from its ``dataset`` block, else neutral 0.5 / 0.5."""
    a = arch.space_args
    c = int(a.get("in_channels", 3))
    size = int(a.get("input_size", 32))
    ds = extras.get("dataset", {})
    mean = tuple(float(v) for v in ds.get("mean", (0.5,) * c))
    std = tuple(float(v) for v in ds.get("std", (0.5,) * c))
    if len(mean) != c or len(std) != c:
        raise ArchitectureError(f"dataset block has {len(mean)} mean / {len(std)} std values for {c} input channels")
    return {"input_size": (c, size, size), "mean": mean, "std": std}


def arch_pretrained_cfg(arch: ArchLike, architecture: str = "hmnas", **overrides: Any) -> dict[str, Any]:
    """timm ``pretrained_cfg`` for an architecture: input config, head names and expected feature map size."""
    parsed, extras = resolve_architecture(arch)
    data = _data_config(parsed, extras)
    size = data["input_size"][1]
    red = _REDUCTIONS.get(parsed.space)
    side = size if red is None else _reduce(size, red(parsed.space_args))
    cfg = {
        "url": "",
        "architecture": architecture,
        "num_classes": int(parsed.space_args.get("num_classes", 10)),
        "input_size": data["input_size"],
        "pool_size": (side, side),
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


def _reduce(size: int, n: int) -> int:
    """Spatial side after ``n`` stride-2 convolutions with 'same' padding (each rounds up)."""
    for _ in range(n):
        size = math.ceil(size / 2)
    return size


# --------------------------------------------------------------------------- the model
class HmnasNet(nn.Module):
    """A derived HM-NAS network behind timm's CNN interface (features, head, classifier reset)."""

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
        if in_chans is not None:
            args["in_channels"] = int(in_chans)
        if body is None:
            from hmnas_nni.spaces import build_space

            body = build_space(self.arch.space, **args).derived_network(self.arch)
        self.in_chans = int(args.get("in_channels", 3))
        self.num_classes = int(args.get("num_classes", 10)) if num_classes is None else int(num_classes)
        self.num_features = self.head_hidden_size = int(body.num_features)
        self.drop_rate = float(drop_rate)
        old_fc = body.classifier
        # The body keeps only its features: pooling and classifier live here so reset_classifier can swap them.
        body.global_pool = nn.Identity()
        body.classifier = nn.Identity()
        self.body = body
        self.global_pool, self.head_drop, self.classifier = self._make_head(self.num_classes, global_pool)
        if isinstance(old_fc, nn.Linear) and isinstance(self.classifier, nn.Linear) \
                and old_fc.weight.shape == self.classifier.weight.shape:
            self.classifier = old_fc  # keep inherited head weights (e.g. from a supernet)
        self.pretrained_cfg = arch_pretrained_cfg(self.arch.to_dict() | extras, num_classes=self.num_classes)
        self.default_cfg = self.pretrained_cfg

    def _make_head(self, num_classes: int, global_pool: str) -> tuple[nn.Module, nn.Module, nn.Module]:
        """Pooling, dropout and classifier from timm's own head factory."""
        if not global_pool and num_classes > 0:
            raise ValueError("global_pool='' keeps the features unpooled, so it needs num_classes=0 (no classifier)")
        self.global_pool_type = global_pool
        pool, drop, fc = create_classifier(self.num_features, num_classes, pool_type=global_pool,
                                           drop_rate=self.drop_rate)
        return pool, drop, fc

    # -- timm interface
    def get_classifier(self) -> nn.Module:
        """The final classifier module (``nn.Identity`` when there are no classes)."""
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0 removes it), optionally changing the pooling."""
        pool_type = self.global_pool_type if global_pool is None else global_pool
        self.num_classes = int(num_classes)
        self.global_pool, self.head_drop, self.classifier = self._make_head(self.num_classes, pool_type)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features, shape (N, num_features, H', W')."""
        return self.body.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, drop and classify; ``pre_logits`` stops before the classifier."""
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or pooled features when ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay, as timm's optimizers expect."""
        return {"stem": r"^body\.stem", "blocks": r"^body\.(cells|blocks|conv_head|lastact)\.?(\d+)?"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing is not implemented for derived cells."""
        if enable:
            raise NotImplementedError("HmnasNet does not support gradient checkpointing")

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


# --------------------------------------------------------------------------- weights
def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file, turning every failure into a one-line :class:`WeightsError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; pass the model.safetensors written by `hmnas retrain`")
    if path.stat().st_size < 8:
        raise WeightsError(f"weights file {path} is empty or truncated; re-run `hmnas retrain` to write it again")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(
            f"weights file {path} is not a readable safetensors file ({msg}); it may be truncated or of another "
            "format: re-run `hmnas retrain` or pass the model.safetensors it wrote"
        ) from None
    check_weights(sd, path, WeightsError)
    return sd, meta


def _arch_key(arch: Architecture) -> dict[str, Any]:
    """What must match between weights and an architecture (head size and input channels may be adapted)."""
    args = {k: v for k, v in arch.space_args.items() if k not in ("num_classes", "in_channels", "input_size")}
    return {"space": arch.space, "space_args": args, "ops": arch.ops, "inputs": arch.inputs}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map plain derived-network keys onto :class:`HmnasNet` keys and reject weights of another architecture."""
    check_weights(state_dict, "pretrained weights", WeightsError)
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if not k.startswith(("body.", "classifier.")):
            k = "body." + k
        if k.startswith(("body.classifier.", "body.global_pool.")):
            k = k[len("body."):]
        out[k] = v
    skip = {"classifier.weight", "classifier.bias"}
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if first_conv:
        skip.add(f"{first_conv}.weight")  # timm adapts the stem to other input channel counts
    check_state_dict(model, out, "pretrained weights", skip=skip)
    return out


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str,
                     skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Raise a one-line :class:`WeightsError` when ``sd`` does not fit ``model`` key for key and shape for shape."""
    own = {k: v for k, v in model.state_dict().items() if k not in skip}
    theirs = {k: v for k, v in sd.items() if k not in skip}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shape = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} of another shape (e.g. {k}: {tuple(theirs[k].shape)} vs {tuple(own[k].shape)})")
        raise WeightsError(
            f"{where} belong to another architecture: {'; '.join(parts)}; "
            "pass the arch.json the weights were trained with (retrain writes it beside model.safetensors)"
        )


def load_weights(model: HmnasNet, path: str | os.PathLike) -> dict[str, str]:
    """Load a safetensors file into ``model`` strictly, with one-line errors; returns the file's metadata."""
    sd, meta = read_state_dict(path)
    if "architecture" in meta:
        try:
            saved = Architecture.from_dict(json.loads(meta["architecture"]))
        except (ValueError, ArchitectureError):
            saved = None
        if saved is not None and _arch_key(saved) != _arch_key(model.arch):
            raise WeightsError(
                f"weights file {path} was written for another architecture (space {saved.space!r}, "
                f"{saved.ops_kept()} ops kept) than the one given (space {model.arch.space!r}, "
                f"{model.arch.ops_kept()} ops kept); pass the arch.json from the same run as the weights"
            )
    sd = checkpoint_filter_fn(sd, model) if any(not k.startswith(("body.", "classifier.")) for k in sd) else sd
    check_state_dict(model, sd, f"weights in {path}")
    model.load_state_dict(sd, strict=True)
    return meta


def save_weights(model: HmnasNet, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict as safetensors atomically, with the architecture in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": WEIGHTS_FORMAT, "architecture": json.dumps(model.arch.to_dict())}
    for k, v in (extra or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".weights-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------- timm registration
def create_hmnas(variant: str, pretrained: bool = False, arch: ArchLike | None = None, **kwargs: Any) -> HmnasNet:
    """Build through timm's ``build_model_with_cfg`` so pretrained loading, head and stem adaptation are timm's."""
    if arch is None:
        raise ArchitectureError(
            f"{variant}: pass arch=<arch.json | dict | Architecture>, e.g. timm.create_model('hmnas', arch='arch.json')"
        )
    parsed, extras = resolve_architecture(arch)
    if kwargs.get("pretrained_cfg") is None:
        kwargs["pretrained_cfg"] = arch_pretrained_cfg(parsed.to_dict() | extras, architecture=variant)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and overlay.get("file"):
        read_state_dict(overlay["file"])  # a missing or truncated file fails here with a clear message
    model = build_model_with_cfg(
        HmnasNet, variant, pretrained, arch=parsed.to_dict() | extras,
        pretrained_filter_fn=checkpoint_filter_fn, **kwargs,
    )
    return model


_ARCHS: dict[str, Path] = {}


def _model_name(stem: str) -> str:
    """``hmnas_<stem>`` with the stem made a Python identifier."""
    s = re.sub(r"[^0-9a-zA-Z_]+", "_", stem).strip("_").lower()
    return s if s.startswith("hmnas_") else f"hmnas_{s}"


def register_architecture(path: str | os.PathLike, name: str | None = None) -> str:
    """Register an architecture JSON as timm model ``hmnas_<name>`` and return the model name."""
    path = Path(path)
    model_name = _model_name(name or path.stem)
    cfg = arch_pretrained_cfg(path, architecture=model_name)
    default_cfgs[model_name] = generate_default_cfgs({model_name: cfg})[model_name]

    def entry(pretrained: bool = False, **kwargs: Any) -> HmnasNet:
        if "arch" in kwargs:
            raise TypeError(f"{model_name} is a fixed architecture ({path.name}); use 'hmnas' to pass arch=")
        return create_hmnas(model_name, pretrained, arch=path, **kwargs)

    entry.__name__ = entry.__qualname__ = model_name
    entry.__module__ = __name__
    entry.__doc__ = f"HM-NAS architecture shipped as {path.name}."
    globals()[model_name] = entry
    register_model(entry)
    _ARCHS[model_name] = path
    return model_name


def registered_architectures() -> dict[str, Path]:
    """Model name -> architecture file for every registered ``hmnas_<name>``."""
    return dict(_ARCHS)


default_cfgs = generate_default_cfgs({
    "hmnas": {
        "url": "", "num_classes": 10, "input_size": (1, 28, 28), "pool_size": (7, 7), "crop_pct": 1.0,
        "mean": (0.5,), "std": (0.5,), "first_conv": "body.stem.0", "classifier": "classifier",
        "license": "mit", "description": "HM-NAS derived network; the real config comes from the arch passed",
    },
})


@register_model
def hmnas(pretrained: bool = False, arch: ArchLike | None = None, **kwargs: Any) -> HmnasNet:
    """Any derived architecture: ``timm.create_model('hmnas', arch='arch.json')``."""
    return create_hmnas("hmnas", pretrained, arch=arch, **kwargs)


for _path in sorted(ARCH_DIR.glob("*.json")):
    register_architecture(_path)
