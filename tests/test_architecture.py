"""Architecture JSON: round trip, conversion from NNI samples, and a clear error for each bad input."""

import json

import pytest

from hmnas_nni.format.architecture import Architecture, ArchitectureError
from hmnas_nni.nas.samples import architecture_from_nni
from hmnas_nni.spaces import catalogue
from tests.helpers import export, hmnas_supernet, random_masks, tiny_space


@pytest.fixture(scope="module")
def nb201():
    space, strategy = hmnas_supernet("nb201")
    random_masks(space, strategy, 0)  # keeps edge 2->3 (and removes 0->3)
    return space, export(space)


def test_round_trip(tmp_path, nb201):
    space, arch = nb201
    path = arch.save(tmp_path / "arch.json")
    loaded = Architecture.load(path)
    assert loaded == arch
    assert loaded.validate(catalogue(space)) is loaded
    doc = json.loads(path.read_text())
    assert doc["format"] == "hmnas-architecture/2" and doc["input_shape"] == [1, 8, 8]


def test_version_1_documents_still_load():
    doc = {"format": "hmnas-architecture/1", "space": "nb201", "space_args": {}, "ops": {"cell/0_1": []}}
    assert Architecture.from_dict(doc).ops == {"cell/0_1": []}


def test_from_nni_sample_of_a_cell_gives_unit_weights():
    space = tiny_space("darts")
    sample = {}
    for label, mutable in space.simplify().items():
        sample[label] = [0] if label.split("/")[1].startswith("input") else mutable.values[1]
    sample["normal/input_2_1"] = [1]  # node 2: slots from inputs 0 and 1; node 3: both from input 0, one op
    arch = architecture_from_nni(sample, space, "darts")
    op = catalogue(space)["normal"].candidates[1]
    assert arch.cells["normal"]["3"] == [{"input": 0, "weight": 1.0, "ops": [{"op": op, "weight": 2.0}]}]
    assert [e["input"] for e in arch.cells["normal"]["2"]] == [0, 1]
    assert arch.cells["normal"]["2"][0]["ops"] == [{"op": op, "weight": 1.0}]


def _doc(arch):
    return json.loads(arch.to_json())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["ops"]["cell/2_3"].append({"op": "conv_9x9", "weight": 0.1}), "unknown op 'conv_9x9'"),
    (lambda d: d["ops"].__setitem__("cell/7_8", []), "unknown operation choice 'cell/7_8'"),
    (lambda d: d["ops"]["cell/2_3"].append({"op": "conv_3x3", "weight": float("nan")}), "non-finite"),
    (lambda d: d["ops"]["cell/2_3"].append({"op": "conv_3x3", "weight": "heavy"}), "non-numeric"),
    (lambda d: d["ops"]["cell/2_3"].append({"op": "conv_3x3", "weight": 0.0}), "must be in (0, 100]"),
    (lambda d: d["ops"]["cell/2_3"].append({"op": "conv_3x3", "weight": -1.0}), "must be in (0, 100]"),
    (lambda d: d["ops"]["cell/2_3"].append({"op": "conv_3x3", "weight": 1e308}), "must be in (0, 100]"),
    (lambda d: d["ops"]["cell/2_3"].extend(d["ops"]["cell/2_3"][:1]), "more than once"),
    (lambda d: d["ops"].pop("cell/0_1"), "no decision for choices"),
    (lambda d: d.__setitem__("format", "other/2"), "unknown format"),
    (lambda d: d.pop("space"), "missing field 'space'"),
    (lambda d: d["ops"].__setitem__("cell/0_1", "conv_3x3"), "must be a list"),
    (lambda d: d.__setitem__("input_shape", [1, -8]), "input_shape"),
])
def test_bad_documents_name_the_problem(nb201, mutate, message):
    space, arch = nb201
    doc = _doc(arch)
    assert doc["ops"]["cell/2_3"], "the fixture keeps edge 2->3"
    mutate(doc)
    with pytest.raises(ArchitectureError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Architecture.from_dict(doc).validate(catalogue(space))


def test_bad_cell_documents_name_the_problem():
    space = tiny_space("darts")
    cat = catalogue(space)
    good = {"space": "darts", "ops": {}, "cells": {c: {"2": [{"input": 0, "weight": 1.0,
                                                              "ops": [{"op": "skip_connect", "weight": 1.0}]}]}
                                                   for c in ("normal", "reduce")}}
    Architecture.from_dict(good).validate(cat)
    for change, message in [({"input": 5}, "out of range 0..1"), ({"ops": []}, "keeps no op"),
                            ({"ops": [{"op": "conv_9x9", "weight": 1.0}]}, "unknown op")]:
        doc = json.loads(json.dumps(good))
        doc["cells"]["normal"]["2"][0].update(change)
        with pytest.raises(ArchitectureError, match=message):
            Architecture.from_dict(doc).validate(cat)
    doc = json.loads(json.dumps(good))
    doc["cells"]["normal"] = {"9": doc["cells"]["normal"]["2"]}
    with pytest.raises(ArchitectureError, match="has no node 9"):
        Architecture.from_dict(doc).validate(cat)


def test_unreadable_files(tmp_path):
    with pytest.raises(ArchitectureError, match="does not exist"):
        Architecture.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        Architecture.load(bad)
