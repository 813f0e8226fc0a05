"""The derived multi-level architecture: a JSON document, validated on load.

One document describes a whole network: the space it came from (name and constructor
arguments, so it can be rebuilt anywhere), and for every choice of that space what was
kept with its learned weight:

- ``ops``: per ``LayerChoice`` label, a list of ``{"op": name, "weight": w}``;
  an empty list means the edge was removed;
- ``inputs``: per ``InputChoice`` label, a list of ``{"input": index, "weight": w}``;
  an empty list means the node was removed.

NNI's own strategies export ``{label: "op"}`` / ``{label: [i, j]}`` samples; :meth:`Architecture.from_nni_sample`
turns those into the same document so every strategy is evaluated through one path.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "hmnas-architecture/1"


class ArchitectureError(ValueError):
    """An architecture document that does not fit its space; the message says what and how to fix it."""


@dataclass(frozen=True)
class ChoiceSpec:
    """What a space offers at one label: candidate op names, or a number of candidate inputs."""

    kind: str  # "op" or "input"
    candidates: tuple[Any, ...]
    n_chosen: int | None = None


@dataclass
class Architecture:
    space: str
    space_args: dict[str, Any]
    ops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    inputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    strategy: str = "hmnas"
    channels: dict[str, list[int]] = field(default_factory=dict)

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "space": self.space,
            "space_args": self.space_args,
            "strategy": self.strategy,
            "ops": self.ops,
            "inputs": self.inputs,
        }
        if self.channels:
            doc["channels"] = self.channels
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a crash never leaves a half-written file behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".arch-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, doc: Any, where: str = "architecture") -> Architecture:
        if not isinstance(doc, dict):
            raise ArchitectureError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        fmt = doc.get("format", FORMAT)
        if fmt != FORMAT:
            raise ArchitectureError(f"{where}: unknown format {fmt!r}; this version reads {FORMAT!r}")
        for key in ("space", "ops"):
            if key not in doc:
                raise ArchitectureError(f"{where}: missing field {key!r}; export the architecture with `hmnas search`")
        if not isinstance(doc["space"], str):
            raise ArchitectureError(f"{where}: field 'space' must be a string, got {doc['space']!r}")
        space_args = doc.get("space_args", {})
        if not isinstance(space_args, dict):
            raise ArchitectureError(f"{where}: field 'space_args' must be an object, got {space_args!r}")
        arch = cls(
            space=doc["space"],
            space_args=dict(space_args),
            ops=_entries(doc.get("ops", {}), "op", where),
            inputs=_entries(doc.get("inputs", {}), "input", where),
            strategy=str(doc.get("strategy", "unknown")),
            channels={str(k): [int(c) for c in v] for k, v in doc.get("channels", {}).items()},
        )
        return arch

    @classmethod
    def load(cls, path: str | os.PathLike) -> Architecture:
        path = Path(path)
        if not path.is_file():
            raise ArchitectureError(
                f"architecture file {path} does not exist; pass the arch.json written by `hmnas search`"
            )
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ArchitectureError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        return cls.from_dict(doc, where=str(path))

    # ------------------------------------------------------------ conversion
    @classmethod
    def from_nni_sample(
        cls, sample: dict[str, Any], space: str, space_args: dict[str, Any], strategy: str,
        catalogue: dict[str, ChoiceSpec],
    ) -> Architecture:
        """Turn an NNI export (``{label: op}`` / ``{label: [indices]}``) into a document with unit weights."""
        ops: dict[str, list[dict[str, Any]]] = {}
        inputs: dict[str, list[dict[str, Any]]] = {}
        for label, value in sample.items():
            spec = catalogue.get(label)
            if spec is None:
                raise ArchitectureError(f"NNI sample has label {label!r}, which the space {space!r} does not define")
            if spec.kind == "op":
                ops[label] = [{"op": value, "weight": 1.0}]
            else:
                chosen = value if isinstance(value, (list, tuple)) else [value]
                inputs[label] = [{"input": int(i), "weight": 1.0} for i in chosen]
        arch = cls(space=space, space_args=dict(space_args), ops=ops, inputs=inputs, strategy=strategy)
        arch.validate(catalogue)
        return arch

    # ------------------------------------------------------------ validation
    def validate(self, catalogue: dict[str, ChoiceSpec]) -> Architecture:
        """Check every label, op name, input index and weight against the space's choices."""
        where = f"architecture for space {self.space!r}"
        for label, entries in self.ops.items():
            spec = catalogue.get(label)
            if spec is None or spec.kind != "op":
                raise ArchitectureError(
                    f"{where}: unknown operation choice {label!r}; the space defines {_labels(catalogue, 'op')}. "
                    "Was this architecture searched on another space or with other space_args?"
                )
            for e in entries:
                if e["op"] not in spec.candidates:
                    raise ArchitectureError(
                        f"{where}: choice {label!r} names unknown op {e['op']!r}; "
                        f"candidates are {list(spec.candidates)}"
                    )
        for label, entries in self.inputs.items():
            spec = catalogue.get(label)
            if spec is None or spec.kind != "input":
                raise ArchitectureError(
                    f"{where}: unknown input choice {label!r}; the space defines {_labels(catalogue, 'input')}"
                )
            n = len(spec.candidates)
            for e in entries:
                if not 0 <= e["input"] < n:
                    raise ArchitectureError(
                        f"{where}: choice {label!r} keeps input {e['input']}, out of range 0..{n - 1}"
                    )
        missing = [label for label, spec in catalogue.items()
                   if label not in (self.ops if spec.kind == "op" else self.inputs)]
        if missing:
            raise ArchitectureError(f"{where}: no decision for choices {missing}; every choice of the space needs one")
        return self

    # ------------------------------------------------------------ summaries
    def ops_kept(self) -> int:
        return sum(len(v) for v in self.ops.values())

    def edges_kept(self) -> int:
        """Edges that carry at least one op (InputChoice entries, or non-empty LayerChoice lists without inputs)."""
        if self.inputs:
            return sum(len(v) for v in self.inputs.values())
        return sum(1 for v in self.ops.values() if v)

    def op_weights(self, label: str) -> dict[str, float]:
        return {e["op"]: float(e["weight"]) for e in self.ops.get(label, [])}

    def input_weights(self, label: str) -> dict[int, float]:
        return {int(e["input"]): float(e["weight"]) for e in self.inputs.get(label, [])}


def _labels(catalogue: dict[str, ChoiceSpec], kind: str) -> list[str]:
    labels = [k for k, v in catalogue.items() if v.kind == kind]
    return labels if len(labels) <= 8 else labels[:8] + [f"... ({len(labels)} in all)"]


def _entries(raw: Any, key: str, where: str) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(raw, dict):
        raise ArchitectureError(f"{where}: field '{key}s' must be an object of label -> list, got {type(raw).__name__}")
    out: dict[str, list[dict[str, Any]]] = {}
    for label, entries in raw.items():
        if not isinstance(entries, list):
            raise ArchitectureError(f"{where}: {key}s[{label!r}] must be a list of {{{key!r}, 'weight'}} objects")
        clean = []
        for e in entries:
            if not isinstance(e, dict) or key not in e or "weight" not in e:
                raise ArchitectureError(f"{where}: {key}s[{label!r}] entry {e!r} needs keys {key!r} and 'weight'")
            w = e["weight"]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ArchitectureError(f"{where}: {key}s[{label!r}] has non-finite or non-numeric weight {w!r}")
            value = e[key]
            if key == "input" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ArchitectureError(f"{where}: inputs[{label!r}] index {value!r} must be an integer")
            if key == "op" and not isinstance(value, str):
                raise ArchitectureError(f"{where}: ops[{label!r}] op {value!r} must be a string")
            clean.append({key: value, "weight": float(w)})
        out[str(label)] = clean
    return out
