"""The deployable instance-aware model: InstaNAS's controller plus the family members it chooses among.

- :class:`InstanceModel` (PyTorch): the controller picks a member per image (its most likely one), the images are
  grouped by member and each group runs through its member; logits come back in input order.
- :func:`save_instance` writes a folder: ``instance.json`` (the manifest), ``model.safetensors`` (the whole
  module), ``member_<k>.arch.json``, and ONNX files ``controller.onnx`` and ``member_<k>.onnx`` (dynamic batch).
- :class:`Dispatcher` serves that folder with ONNX Runtime: one session for the controller and one per member.
  A batch runs the controller once, then each member once on the images that chose it (batched serving groups
  inputs by chosen member); batch 1 is two session calls.
- :func:`check_parity` runs both on real images: the same choices, and logits within 1e-4.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from hmnas_nni.format.errors import CheckFailed, UsageError
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.search.instance import Controller, InstaNAS

from .derived_model import derived_model
from .onnx_export import FP32_TOL, export_onnx, ort_session

MANIFEST = "instance.json"
FORMAT = "hmnas-instance-1"


class InstanceModel(nn.Module):
    """Controller + members: each image runs through the member the controller picks for it."""

    def __init__(self, controller: Controller, members: list[nn.Module], latency_ms: list[float]) -> None:
        super().__init__()
        if controller.head.out_features != len(members):
            raise ValueError(f"the controller chooses among {controller.head.out_features} members, "
                             f"{len(members)} given")
        self.controller = controller
        self.members = nn.ModuleList(members)
        self.latency_ms = list(latency_ms)

    @torch.no_grad()
    def choose(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen member of every image."""
        return self.controller.eval()(x).argmax(1)

    @torch.no_grad()
    def forward_with_choices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, chosen member) of every image; one member call per member chosen in the batch."""
        self.eval()
        pick = self.choose(x)
        out: torch.Tensor | None = None
        for k in pick.unique().tolist():
            rows = pick == k
            logits = self.members[k](x[rows])
            if out is None:
                out = logits.new_zeros(len(x), logits.shape[1])
            out[rows] = logits
        assert out is not None
        return out, pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every image from its chosen member."""
        return self.forward_with_choices(x)[0]


def instance_model(insta: InstaNAS) -> InstanceModel:
    """The deployable model of a trained :class:`InstaNAS`: its controller and its members as derived models."""
    fam = insta.family
    members = [derived_model(m.architecture.to_dict(), body=copy.deepcopy(net).eval())
               for m, net in zip(fam.members, insta.nets)]
    controller = Controller(fam.input_shape[0], len(members), insta.size)
    controller.load_state_dict(insta.controller.state_dict())
    return InstanceModel(controller.eval(), members, fam.latency_ms).eval()


# --------------------------------------------------------------------------- the folder
def save_instance(model: InstanceModel, folder: str | Path, input_shape: list[int],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write the model folder (see the module docstring): weights, member architectures, ONNX files, manifest."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = tuple(input_shape)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    write_atomic(folder / "model.safetensors", save(state, metadata={"format": FORMAT}))
    export_onnx(model.controller, folder / "controller.onnx", shape)
    members = []
    for k, member in enumerate(model.members):
        write_atomic(folder / f"member_{k}.arch.json", member.arch.to_json() + "\n")
        export_onnx(member, folder / f"member_{k}.onnx", shape)
        members.append({"arch": f"member_{k}.arch.json", "onnx": f"member_{k}.onnx",
                        "latency_ms": model.latency_ms[k]})
    c = model.controller
    doc = {"format": FORMAT, "input_shape": list(shape), "members": members,
           "controller": {"onnx": "controller.onnx", "size": c.size, "width": c.head.in_features // 2,
                          "in_channels": c.features[0].in_channels},
           "dispatch": "controller logits -> argmax member per image -> images grouped by member, one member "
                       "session call per group -> logits scattered back in input order", **(extra or {})}
    write_json(folder / MANIFEST, doc)
    return folder


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """A model folder's manifest, or a one-line error."""
    path = Path(folder) / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{path}: no instance-aware model manifest there; pass a folder `hmnas instance` wrote "
                         "(its model/ folder)") from None
    if doc.get("format") != FORMAT:
        raise UsageError(f"{path} is not an instance-aware model manifest (format {doc.get('format')!r})")
    return doc


def load_instance(folder: str | Path) -> InstanceModel:
    """The :class:`InstanceModel` a model folder holds."""
    from safetensors.torch import load_file

    folder = Path(folder)
    doc = read_manifest(folder)
    c = doc["controller"]
    controller = Controller(c["in_channels"], len(doc["members"]), c["size"], c["width"])
    members = [derived_model(folder / m["arch"]) for m in doc["members"]]
    model = InstanceModel(controller, members, [m["latency_ms"] for m in doc["members"]])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


# --------------------------------------------------------------------------- ONNX Runtime
class Dispatcher:
    """The model folder served by ONNX Runtime: the controller session, then one member session per group."""

    def __init__(self, folder: str | Path, threads: int = 1, providers: list[Any] | None = None) -> None:
        folder = Path(folder)
        self.manifest = read_manifest(folder)
        self.controller = ort_session(folder / self.manifest["controller"]["onnx"], providers, threads)
        self.members = [ort_session(folder / m["onnx"], providers, threads) for m in self.manifest["members"]]
        self.input_name = self.controller.get_inputs()[0].name

    def choose(self, x: np.ndarray) -> np.ndarray:
        """The chosen member of every image."""
        return self.controller.run(None, {self.input_name: x})[0].argmax(1)

    def run_member(self, k: int, x: np.ndarray) -> np.ndarray:
        """Logits of member ``k`` alone."""
        return self.members[k].run(None, {self.input_name: x})[0]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, chosen member) of a batch: images grouped by member, one session call per group."""
        pick = self.choose(x)
        out: np.ndarray | None = None
        for k in np.unique(pick):
            rows = pick == k
            logits = self.run_member(int(k), x[rows])
            if out is None:
                out = np.zeros((len(x), logits.shape[1]), dtype=logits.dtype)
            out[rows] = logits
        assert out is not None
        return out, pick


def check_parity(model: InstanceModel, dispatcher: Dispatcher, x: torch.Tensor, batch_size: int = 64) -> dict[str, Any]:
    """PyTorch against ONNX Runtime on ``x``: choices must agree and logits stay within ``FP32_TOL``; raises
    :class:`CheckFailed` otherwise, else returns the record."""
    same, diff, n = 0, 0.0, 0
    for chunk in x.split(batch_size):
        ref, ref_pick = model.forward_with_choices(chunk)
        got, pick = dispatcher(chunk.numpy())
        same += int((pick == ref_pick.numpy()).sum())
        diff = max(diff, float(np.abs(got - ref.numpy()).max()))
        n += len(chunk)
    record = {"images": n, "same_choice": same / n, "max_abs_diff": diff, "tolerance": FP32_TOL}
    if same != n or not diff <= FP32_TOL:
        raise CheckFailed(f"instance-aware model: ONNX Runtime differs from PyTorch ({n - same} of {n} choices "
                          f"differ, largest logit difference {diff:.2e} > {FP32_TOL:g})")
    return record
