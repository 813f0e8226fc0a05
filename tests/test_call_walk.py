"""The call-walk tracer sees timm.create_model go down the package's layers and never call back up them."""

from __future__ import annotations

from hmnas_nni.experiments.call_walk import create_model, trace


def test_create_model_walks_down_the_layers() -> None:
    walk = trace(create_model("hmnas_nb201_fmnist"))
    top = [v.module for v in walk.root.children]
    assert top == ["hmnas_nni.export.hmnas_timm"]
    assert walk.root.upward() == 0
    modules = {line.split()[1] for line in walk.root.children[0].lines(limit=10)}
    assert {"nas.rebuild", "nas.build", "format.architecture"} <= modules
    assert "nas.strategy" not in modules  # built from the document: no search strategy, no supernet
