"""Find and build a model space by name: the project's own (``nb201``, ``darts``, ``mobile``) or any NNI model
space given as an import path (``nni.nas.hub.pytorch.DARTS``, ``my_package.spaces:MySpace``)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import ModelSpace

from .adapt import RepeatChannels
from .base import ProjectSpace
from .darts import DartsSpace
from .meta_cells import MetaCellSpace
from .mobile import MobileSpace
from .nasbench201 import NasBench201Space
from .superkernel_spaces import MobileSuperKernelSpace, NasBench201SuperKernelSpace

SPACES: dict[str, type[ProjectSpace]] = {cls.name: cls for cls in (DartsSpace, NasBench201Space, MobileSpace,
                                                                     NasBench201SuperKernelSpace,
                                                                     MobileSuperKernelSpace)}
#: Spaces for multi-trial strategies only (no choice HM-NAS relaxes), by name.
MULTI_TRIAL_SPACES: dict[str, type[ModelSpace]] = {"meta-cells": MetaCellSpace}
#: Constructor arguments an imported space may take, filled from the data when the user does not give them.
DATA_ARGS = {"num_classes": "num_classes", "num_labels": "num_classes", "in_channels": "in_channels",
             "in_chans": "in_channels", "input_size": "input_size"}


#: Import paths the user gave (as an argument or through :func:`register_space`) -> their class or factory.
_ALLOWED: dict[str, Callable[..., nn.Module]] = {}


class SpaceError(ValueError):
    """A space name, import path or argument set that does not give a model space; the message says why."""


def is_import_path(name: str) -> bool:
    """``module.Class`` or ``module:Class`` (a project space name has neither)."""
    return ":" in name or "." in name


def space_factory(name: str) -> Callable[..., nn.Module]:
    """The class (or factory) behind ``name``, which the caller gave (an argument, not a file): an import path
    is imported, and allowed from then on in the documents this process reads."""
    if name in SPACES:
        return SPACES[name]
    if name in MULTI_TRIAL_SPACES:
        return MULTI_TRIAL_SPACES[name]
    if not is_import_path(name):
        known = sorted({**SPACES, **MULTI_TRIAL_SPACES})
        raise SpaceError(f"unknown search space {name!r}; choose one of {known} or give an NNI model space as an "
                         "import path, e.g. nni.nas.hub.pytorch.NasBench201 or my_module:MySpace")
    factory = _ALLOWED.get(name) or _import_factory(name)
    allow_space(name, factory)
    return factory


def _import_factory(name: str) -> Callable[..., nn.Module]:
    """Import the class or function an import path names, with a one-line error naming the user's module."""
    module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SpaceError(f"space {name!r}: cannot import module {module_name!r} ({e}); check the path, and that "
                         "the module's folder is importable (installed, or on PYTHONPATH)") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing: say where, in one line
        raise SpaceError(f"space {name!r}: importing your module {module_name!r} failed at {_where(e)}: "
                         f"{type(e).__name__}: {e}; fix the module and run again") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise SpaceError(f"space {name!r}: module {module_name!r} has no class or function {attr!r}")
    return factory


def _where(error: BaseException) -> str:
    """``file:line`` of the innermost frame of ``error`` (the user's own code, for a failing space module)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "an unknown line"


def allow_space(name: str, factory: Callable[..., nn.Module] | None = None) -> None:
    """Let documents (``arch.json``, a timm ``config.json``) name the space ``name`` in this process; ``factory``
    registers the class under that name without importing anything."""
    _ALLOWED[name] = factory or _import_factory(name)


def register_space(space: type[ModelSpace] | str) -> str:
    """Allow an NNI model space class (or its import path) in the architecture documents this process reads, as
    ``nni.nas.hub.pytorch`` spaces and the project's own are; returns the name documents use."""
    if isinstance(space, str):
        allow_space(space)
        return space
    name = f"{space.__module__}.{space.__qualname__}"
    allow_space(name, space)
    return name


def document_space_factory(name: str, where: str = "the document") -> Callable[..., nn.Module]:
    """The factory of a space an architecture document names, refused before any import unless allowed: a file
    names data, never code to call."""
    if name in SPACES:
        return SPACES[name]
    if name in _ALLOWED:
        return _ALLOWED[name]
    hub = _hub_spaces()
    if name in hub:
        return hub[name]
    raise SpaceError(f"{where} names the space {name!r}, which is not an allowed space (the project's "
                     f"{sorted(SPACES)}, NNI's hub spaces, or one you allowed); nothing was imported. If you trust it, "
                     f"allow it: --allow-space {name} on the command line, or "
                     f"hmnas_nni.spaces.register_space({name!r}) in Python")


def _hub_spaces() -> dict[str, Callable[..., nn.Module]]:
    """NNI's hub model spaces by both names documents use: ``nni.nas.hub.pytorch.X`` and the class's own path."""
    import nni.nas.hub.pytorch as hub

    found: dict[str, Callable[..., nn.Module]] = {}
    for attr in dir(hub):
        cls = getattr(hub, attr)
        if inspect.isclass(cls) and issubclass(cls, ModelSpace):
            found[f"nni.nas.hub.pytorch.{attr}"] = cls
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def constructor_parameters(factory: Callable[..., nn.Module]) -> Mapping[str, inspect.Parameter]:
    """The arguments a space's constructor takes (NNI wraps ``ModelSpace.__init__``; its original is kept)."""
    init = getattr(factory, "_init_wrapped", None)
    params = inspect.signature(init if init is not None else factory).parameters
    return {k: v for k, v in params.items() if k != "self"}


def build_space(name: str, *, document: str | None = None, **args: Any) -> nn.Module:
    """Create the space ``name`` with JSON-able constructor arguments; it must be an NNI ``ModelSpace``.

    ``document`` (the path or kind of file the name was read from) admits only allowed spaces, before any import.
    """
    factory = space_factory(name) if document is None else document_space_factory(name, document)
    _check_arguments(name, factory, args)
    try:
        space = factory(**args)
    except Exception as e:  # noqa: BLE001 - the space's own constructor failed: say where, in one line
        raise SpaceError(f"space {name!r} with arguments {args} failed to build at {_where(e)}: "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(space, ModelSpace):
        raise SpaceError(f"space {name!r} built a {type(space).__name__}, not an nni.nas.nn.pytorch.ModelSpace; "
                         "HM-NAS and NNI's strategies search ModelSpace subclasses")
    return space


def _check_arguments(name: str, factory: Callable[..., nn.Module], args: dict[str, Any]) -> None:
    """Refuse arguments the constructor does not take, or required ones missing, naming them."""
    try:
        params = constructor_parameters(factory)
    except (TypeError, ValueError):
        return  # no signature to check against: the constructor will say
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown: list[str] = []
    else:
        unknown = sorted(set(args) - set(params))
    missing = sorted(k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in args
                     and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    if unknown:
        raise SpaceError(f"space {name!r} does not take argument(s) {unknown}; it takes {sorted(params)}")
    if missing:
        raise SpaceError(f"space {name!r} needs argument(s) {missing}; give them in space_args (--space-args)")


def data_args(name: str, given: dict[str, Any], data: dict[str, int], dataset: str = "the data") -> dict[str, Any]:
    """``given`` completed with what the data decides (classes, channels, size) where the space takes it.

    ``data`` holds ``in_channels``, ``input_size`` and ``num_classes`` of the dataset. A value the user gave
    that contradicts the data is an error naming both.
    """
    factory = space_factory(name)
    if name in SPACES:
        accepted = {k: k for k in SPACES[name].default_args() if k in data}
    else:
        params = constructor_parameters(factory)
        accepted = {arg: key for arg, key in DATA_ARGS.items() if arg in params}
    out = dict(given)
    for arg, key in accepted.items():
        if arg in given and given[arg] != data[key]:
            raise SpaceError(f"space_args {arg}={given[arg]!r} does not fit {dataset} ({key}={data[key]}); leave "
                             f"{arg} out of --space-args, it is taken from the data")
        out[arg] = data[key]
    return out


def fit_input(space: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``space`` as is when it takes inputs of ``shape`` (C, H, W); wrapped to repeat a grey channel when it
    expects colour images (NNI's hub spaces have a fixed 3-channel stem)."""
    if _runs(space, shape):
        return space
    if shape[0] == 1:
        wrapped = RepeatChannels(space, 3)
        if _runs(wrapped, shape):
            return wrapped
    raise SpaceError(f"{type(space).__name__} does not run on inputs of shape {tuple(shape)}; pick a dataset of "
                     "that shape or pass --space-args that size the space for it")


def _runs(space: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether a dry forward of two inputs of ``shape`` goes through (NNI spaces run their default choice)."""
    was_training = space.training
    space.eval()
    try:
        with torch.no_grad():
            space(torch.zeros(2, *shape))
        return True
    except RuntimeError:
        return False
    finally:
        space.train(was_training)


def space_identity(space: nn.Module) -> tuple[str, dict[str, Any]]:
    """How to build ``space`` again: its registry name or import path, and its JSON-able constructor arguments."""
    if isinstance(space, RepeatChannels):
        return space_identity(space.space)  # the input shape an architecture records brings the adapter back
    if isinstance(space, ProjectSpace):
        return space.name, dict(space.space_args)
    name = f"{type(space).__module__}.{type(space).__qualname__}"
    args = dict(getattr(space, "trace_kwargs", {}) or {})
    if getattr(space, "trace_args", ()):
        raise SpaceError(f"space {name} was built with positional arguments {space.trace_args!r}; build it with "
                         "keyword arguments so that its architectures can name them")
    return name, args
