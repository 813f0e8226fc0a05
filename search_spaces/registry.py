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
from .mobile import MobileSpace
from .nasbench201 import NasBench201Space

SPACES: dict[str, type[ProjectSpace]] = {cls.name: cls for cls in (DartsSpace, NasBench201Space, MobileSpace)}
#: Constructor arguments an imported space may take, filled from the data when the user does not give them.
DATA_ARGS = {"num_classes": "num_classes", "num_labels": "num_classes", "in_channels": "in_channels",
             "in_chans": "in_channels", "input_size": "input_size"}


class SpaceError(ValueError):
    """A space name, import path or argument set that does not give a model space; the message says why."""


def is_import_path(name: str) -> bool:
    """``module.Class`` or ``module:Class`` (a project space name has neither)."""
    return ":" in name or "." in name


def space_factory(name: str) -> Callable[..., nn.Module]:
    """The class (or factory) behind ``name``, with a one-line error when it cannot be found."""
    if name in SPACES:
        return SPACES[name]
    if not is_import_path(name):
        raise SpaceError(f"unknown search space {name!r}; choose one of {sorted(SPACES)} or give an NNI model space "
                         "as an import path, e.g. nni.nas.hub.pytorch.NasBench201 or my_module:MySpace")
    module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SpaceError(f"space {name!r}: cannot import module {module_name!r} ({e}); check the path, and that "
                         "the module's folder is importable (installed, or on PYTHONPATH)") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise SpaceError(f"space {name!r}: module {module_name!r} has no class or function {attr!r}")
    return factory


def constructor_parameters(factory: Callable[..., nn.Module]) -> Mapping[str, inspect.Parameter]:
    """The arguments a space's constructor takes (NNI wraps ``ModelSpace.__init__``; its original is kept)."""
    init = getattr(factory, "_init_wrapped", None)
    params = inspect.signature(init if init is not None else factory).parameters
    return {k: v for k, v in params.items() if k != "self"}


def build_space(name: str, **args: Any) -> nn.Module:
    """Create the space ``name`` with JSON-able constructor arguments; it must be an NNI ``ModelSpace``."""
    factory = space_factory(name)
    try:
        space = factory(**args)
    except TypeError as e:
        raise SpaceError(f"space {name!r} does not take arguments {sorted(args)}: {e}") from None
    if not isinstance(space, ModelSpace):
        raise SpaceError(f"space {name!r} built a {type(space).__name__}, not an nni.nas.nn.pytorch.ModelSpace; "
                         "HM-NAS and NNI's strategies search ModelSpace subclasses")
    return space


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
