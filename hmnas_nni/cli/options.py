"""Command-line options generated from a config schema: ``hmnas search`` and ``hmnas trial`` share one.

Every :class:`~hmnas_nni.search.config.SearchConfig` field becomes ``--field-name`` (plus the extra flags in
its metadata); values are read by :func:`~hmnas_nni.search.config.coerce`, the reader NNI parameters go
through too. Options default to "not given", so :func:`given_values` is exactly what the command line set.
"""

from __future__ import annotations

import argparse
import json
import types as types_module
import typing
from dataclasses import fields
from typing import Any

from hmnas_nni.format.errors import UsageError
from hmnas_nni.search.config import SearchConfig, coerce, field_default, field_types


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose errors can be one ``error: ...`` line (what NNI's trial log should show)."""

    one_line = False

    def error(self, message: str) -> typing.NoReturn:
        if self.one_line:
            self.exit(2, f"error: {message}\n")
        super().error(message)


def json_object(text: str) -> dict:
    """A JSON object option (parsed as data with ``json.loads``, never evaluated)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}); write a JSON object "
                                         'such as \'{"channels": 16}\'') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"channels\": 16}}', "
                                         f"got {type(value).__name__} {text!r}")
    return value


def add_allow_space(parser: argparse.ArgumentParser) -> None:
    """``--allow-space PATH``: a space an architecture file may name beyond the project's and NNI's hub spaces."""
    parser.add_argument("--allow-space", action="append", metavar="IMPORT_PATH", default=None,
                        help="trust the model space at this import path (pkg.module.Class) when an architecture file "
                             "names it; the project's spaces and NNI's hub spaces need nothing (repeatable)")


def _reader(name: str) -> Any:
    """The argparse ``type`` of field ``name``: its schema reader, with argparse's error class."""

    def read(text: str) -> Any:
        try:
            return coerce(name, text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return read


def add_config_options(parser: argparse.ArgumentParser, cls: type = SearchConfig) -> None:
    """One option per field of ``cls``, help and default from the field; nothing set unless given."""
    types = field_types()
    for f in fields(cls):
        flags = (f"--{f.name.replace('_', '-')}", *f.metadata.get("flags", ()))
        default = field_default(f)
        shown = json.dumps(default) if isinstance(default, dict) else default
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": f"{f.metadata.get('help', '')} (default: {shown})"}
        hint = types[f.name]
        if typing.get_origin(hint) in (typing.Union, types_module.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint) or hint
        if origin is bool:  # --flag for an option that is off by default, --flag / --no-flag otherwise
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        else:
            kwargs["type"] = json_object if origin is dict else _reader(f.name)
            kwargs["metavar"] = "JSON" if origin is dict else f.name.upper()
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
                kwargs["metavar"] = None
        parser.add_argument(*flags, **kwargs)


def given_values(args: argparse.Namespace, cls: type = SearchConfig) -> dict[str, Any]:
    """The fields of ``cls`` set on the command line (options added by :func:`add_config_options`)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
