"""The path a call takes through the package's layers: which modules it enters, in what order, and how often it
comes back to one it had left.

    python -m hmnas_nni.experiments.call_walk create-model [--name hmnas_nb201_fmnist]
    python -m hmnas_nni.experiments.call_walk retrain [--name hmnas_nb201_fmnist]

Every Python call into the package is recorded (``sys.setprofile``) while the call runs, after the imports. A *visit*
is a stay in one module: the calls made inside it, and the visits it makes in turn to other modules (a tree). Printed:
the tree with each module's layer (as README's layout table numbers them), the *returns* (a stay that calls a module,
leaves it for another, then calls it again) and the calls back up the layers. A walk that goes down the layers once
makes no returns and no calls up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

#: Layer of each subpackage, as README's layout table and tests/test_layers.py number them.
LAYERS = {"hmnas_nni.format": 0, "hmnas_nni.spaces": 1, "hmnas_nni.common": 2, "hmnas_nni.nas": 2,
          "hmnas_nni.strategy": 3, "hmnas_nni.search": 3, "hmnas_nni.export": 4, "hmnas_nni.experiments": 4,
          "hmnas_nni.cli": 5}


def layer_of(module: str) -> int | None:
    """The layer of a package module, or ``None`` outside the layered subpackages."""
    return next((n for p, n in LAYERS.items() if module == p or module.startswith(p + ".")), None)


@dataclass
class Visit:
    """A stay in one module: the calls made inside it, and the visits it made to other modules, in order."""

    module: str
    layer: int
    children: list[Visit] = field(default_factory=list)

    def returns(self) -> int:
        """Visits to a module this stay had already left for another (a helper module called, left, called again),
        here and below."""
        seen, back = set(), 0
        for k, child in enumerate(self.children):
            back += child.module in seen and self.children[k - 1].module != child.module
            seen.add(child.module)
        return back + sum(c.returns() for c in self.children)

    def upward(self) -> int:
        """Visits to a higher layer than the caller's (a call back up the layers), here and below."""
        return sum((c.layer > self.layer) + c.upward() for c in self.children)

    def lines(self, depth: int = 0, limit: int = 4) -> list[str]:
        """The visit tree, indented, down to ``limit`` levels."""
        out = [f"{'  ' * depth}{self.layer} {self.module.removeprefix('hmnas_nni.')}"]
        return out + [line for c in self.children for line in c.lines(depth + 1, limit)] if depth < limit else out


@dataclass
class Walk:
    """The visits of one call: a tree of stays in the package's modules, calls inside a network's forward left out."""

    root: Visit = field(default_factory=lambda: Visit("<caller>", 99))
    _stays: dict[int, Visit] = field(default_factory=dict)
    _forwards: int = 0

    def record(self, frame: FrameType, event: str, _arg: Any) -> None:
        """``sys.setprofile`` hook: each Python call into a layered module joins its caller's stay or opens a new
        one; what runs inside a network's ``forward`` is the network computing, not the walk, and is left out."""
        if frame.f_code.co_name == "forward":
            self._forwards += {"call": 1, "return": -1}.get(event, 0)
        if event == "return":
            self._stays.pop(id(frame), None)
        if event != "call" or self._forwards:
            return
        module = frame.f_globals.get("__name__", "")
        n = layer_of(module)
        if n is None or module == __name__:
            return
        self._stays[id(frame)] = self._stay(self._caller(frame), module, n)

    def _caller(self, frame: FrameType) -> Visit:
        """The stay of the nearest calling frame inside the package (the root when there is none)."""
        f = frame.f_back
        while f is not None and id(f) not in self._stays:
            f = f.f_back
        return self.root if f is None else self._stays[id(f)]

    @staticmethod
    def _stay(caller: Visit, module: str, n: int) -> Visit:
        """The caller's own stay for a call inside its module, its last visit when that went to the same module,
        else a new visit."""
        if caller.module == module:
            return caller
        if caller.children and caller.children[-1].module == module:
            return caller.children[-1]
        caller.children.append(Visit(module, n))
        return caller.children[-1]

    def stays(self) -> int:
        """How many visits the walk made."""
        def count(v: Visit) -> int:
            return len(v.children) + sum(count(c) for c in v.children)
        return count(self.root)


def trace(call: Callable[[], Any]) -> Walk:
    """Run ``call`` under the profiler and return its walk."""
    walk = Walk()
    sys.setprofile(walk.record)
    try:
        call()
    finally:
        sys.setprofile(None)
    return walk


def create_model(name: str) -> Callable[[], Any]:
    """``timm.create_model(name)``."""
    import timm

    import hmnas_nni.export  # noqa: F401  (registers the hmnas names)

    return lambda: timm.create_model(name)


def retrain_call(name: str) -> Callable[[], Any]:
    """``hmnas_nni.export.retrain.retrain`` of a shipped architecture on Fashion-MNIST, zero epochs (the network is
    built, evaluated and written)."""
    from hmnas_nni.export.hmnas_timm import registered_architectures
    from hmnas_nni.export.retrain import retrain

    path = registered_architectures()[name]
    out = Path(tempfile.mkdtemp()) / "retrain"
    return lambda: retrain(path, "fashion-mnist", 0, out, limit_train=64, progress=False)


CALLS = {"create-model": create_model, "retrain": retrain_call}


def main(argv: list[str] | None = None) -> int:
    """Trace one call and print its walk."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("call", choices=sorted(CALLS))
    parser.add_argument("--name", default="hmnas_nb201_fmnist", help="a shipped hmnas model name")
    parser.add_argument("--depth", type=int, default=3, help="levels of the visit tree to print")
    a = parser.parse_args(argv)
    walk = trace(CALLS[a.call](a.name))
    print(f"{a.call} {a.name}: {walk.stays()} visits, {walk.root.returns()} returns to a module already left, "
          f"{walk.root.upward()} calls up the layers")
    for child in walk.root.children:
        print("\n".join(child.lines(limit=a.depth)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
