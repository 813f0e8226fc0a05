"""Architecture JSON: round trip, conversion from NNI samples, and a clear error for each bad input."""

import json

import pytest

from hmnas_nni.format.architecture import Architecture, ArchitectureError
from tests.helpers import export, hmnas_supernet, random_masks, tiny_space


@pytest.fixture(scope="module")
def nb201():
    space, strategy = hmnas_supernet("nb201")
    random_masks(strategy, 1)
    return space, export(space, strategy)


def test_round_trip(tmp_path, nb201):
    space, arch = nb201
    path = arch.save(tmp_path / "arch.json")
    loaded = Architecture.load(path)
    assert loaded == arch
    assert loaded.validate(space.catalogue()) is loaded
    assert json.loads(path.read_text())["format"] == "hmnas-architecture/1"


def test_from_nni_sample_gives_unit_weights():
    space = tiny_space("darts")
    cat = space.catalogue()
    sample = {k: (v.candidates[1] if v.kind == "op" else [0, 1]) for k, v in cat.items()}
    arch = Architecture.from_nni_sample(sample, "darts", space.space_args, "darts", cat)
    assert arch.ops["normal/op_0_2"] == [{"op": cat["normal/op_0_2"].candidates[1], "weight": 1.0}]
    assert arch.inputs["normal/input_3"] == [{"input": 0, "weight": 1.0}, {"input": 1, "weight": 1.0}]


def _doc(arch):
    return json.loads(arch.to_json())


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["ops"]["cell/0_1"].append({"op": "conv_9x9", "weight": 0.1}), "unknown op 'conv_9x9'"),
    (lambda d: d["ops"].__setitem__("cell/7_8", []), "unknown operation choice 'cell/7_8'"),
    (lambda d: d["ops"]["cell/0_1"].append({"op": "conv_3x3", "weight": float("nan")}), "non-finite"),
    (lambda d: d["ops"]["cell/0_1"].append({"op": "conv_3x3", "weight": "heavy"}), "non-numeric"),
    (lambda d: d["ops"].pop("cell/0_1"), "no decision for choices"),
    (lambda d: d.__setitem__("format", "other/2"), "unknown format"),
    (lambda d: d.pop("space"), "missing field 'space'"),
    (lambda d: d["ops"].__setitem__("cell/0_1", "conv_3x3"), "must be a list"),
])
def test_bad_documents_name_the_problem(nb201, mutate, message):
    space, arch = nb201
    doc = _doc(arch)
    mutate(doc)
    with pytest.raises(ArchitectureError, match=message.replace("(", r"\(")):
        Architecture.from_dict(doc).validate(space.catalogue())


def test_input_out_of_range_and_wrong_space():
    space = tiny_space("darts")
    cat = space.catalogue()
    sample = {k: (v.candidates[0] if v.kind == "op" else [0, 1]) for k, v in cat.items()}
    doc = json.loads(Architecture.from_nni_sample(sample, "darts", space.space_args, "darts", cat).to_json())
    doc["inputs"]["normal/input_2"] = [{"input": 5, "weight": 1.0}]
    with pytest.raises(ArchitectureError, match="input 5, out of range 0..1"):
        Architecture.from_dict(doc).validate(cat)
    with pytest.raises(ArchitectureError, match="searched on space 'darts', not 'nb201'"):
        tiny_space("nb201").derived_network(Architecture.from_dict(doc))


def test_unreadable_files(tmp_path):
    with pytest.raises(ArchitectureError, match="does not exist"):
        Architecture.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        Architecture.load(bad)
