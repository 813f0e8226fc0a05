"""No file the project reads runs code, and no option deletes or overwrites what the project did not write.

The command-line cases (``hmnas show/retrain/export/bench`` of an architecture naming ``os.system``, ``--png`` over
an architecture, ``--force`` over the user's folders, ...) are rows of ``test_bad_inputs.py``; these are the same
rules from Python: timm's loading of a model folder, the space allow-list, and the output folder's manifest.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import timm

import hmnas_nni.export  # noqa: F401 - registers the hmnas models with timm
from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.outputs import OutputBusy, OutputExists, OutputFolder, check_file_output, is_png, read_manifest
from hmnas_nni.spaces.registry import SpaceError, document_space_factory, register_space

SENTINEL = "EVALUATED"


def test_a_timm_model_folder_naming_code_is_refused_before_anything_runs(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    arch = {"format": "hmnas-architecture/2", "space": "os.system",
            "space_args": {"command": f"touch {tmp_path / SENTINEL}"}, "ops": {}}
    (folder / "config.json").write_text(json.dumps({"architecture": "hmnas", "num_classes": 10,
                                                    "model_args": {"arch": arch}, "pretrained_cfg": {}}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(SpaceError, match="not an allowed space"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert not (tmp_path / SENTINEL).exists()


def test_documents_name_only_allowed_spaces_and_import_nothing_else(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_space_mod.py").write_text(
        "from nni.nas.nn.pytorch import ModelSpace\n\nclass Space(ModelSpace):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpaceError, match=r"--allow-space user_space_mod\.Space"):
        document_space_factory("user_space_mod.Space", "arch.json")
    assert "user_space_mod" not in sys.modules  # refused before any import
    assert register_space("user_space_mod.Space") == "user_space_mod.Space"
    assert document_space_factory("user_space_mod.Space").__name__ == "Space"
    # NNI's hub spaces and the project's own need nothing, by either name a document may use
    assert document_space_factory("nni.nas.hub.pytorch.NasBench201").__name__ == "NasBench201"
    assert document_space_factory("nni.nas.hub.pytorch.nasbench201.NasBench201").__name__ == "NasBench201"
    assert document_space_factory("nb201").name == "nb201"


def test_force_replaces_only_what_the_manifest_lists(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputFolder(out, "test") as folder:
        folder.clear_previous(writes=("checkpoints",))
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
        (folder.staged("family") / "0").mkdir(parents=True)
        (folder.staged("family") / "0" / "arch.json").write_text("{}")
        (folder.staged("results.json")).write_text("{}")
        folder.commit("results.json")
    manifest = read_manifest(out)
    assert {"family/0/arch.json", "results.json"} <= set(manifest["files"])
    assert {"checkpoints", "family", "results.json"} <= set(manifest["owned"])
    (out / "runs").mkdir()
    (out / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists, match="runs, which no hmnas command wrote there"):
        OutputFolder(out, "test", force=True).__enter__()
    assert (out / "runs" / "notes.txt").read_text() == "mine" and (out / "checkpoints" / "last.ckpt").exists()
    os.rename(out / "runs", tmp_path / "runs")
    with OutputFolder(out, "test", force=True) as folder:  # the project's own results are replaced as a whole
        folder.clear_previous()
        folder.staged("results.json").write_text("[]")
        folder.commit("results.json")
    assert not (out / "family").exists() and not (out / "checkpoints").exists()


def test_a_staged_result_never_replaces_a_users_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("mine")
    with pytest.raises(OutputExists, match="notes, which no hmnas command wrote there"), \
            OutputFolder(out, "test") as folder:
        (folder.staged("notes")).mkdir()
        folder.commit("notes")
    assert (out / "notes" / "a.txt").read_text() == "mine"


def test_a_busy_folder_is_reported_before_its_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputFolder(out, "first") as folder:
        folder.staged("results.json").write_text("{}")
        folder.commit("results.json")
    with OutputFolder(out, "holder", force=True), pytest.raises(OutputBusy, match="being written by another run"):
        OutputFolder(out, "second").__enter__()


def test_a_single_file_output_replaces_only_its_own_kind(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 8)
    assert check_file_output(png, "--png", "PNG image", is_png) == png
    doc = tmp_path / "arch.json"
    doc.write_text("{}")
    with pytest.raises(UsageError, match="exists and is not a PNG image; nothing was overwritten"):
        check_file_output(doc, "--png", "PNG image", is_png)
    with pytest.raises(UsageError, match="is a folder"):
        check_file_output(tmp_path, "--png", "PNG image", is_png)
    assert doc.read_text() == "{}"
