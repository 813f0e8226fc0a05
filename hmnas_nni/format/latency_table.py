"""The latency table: what each candidate of a supernet costs on one runtime and device, as a JSON document.

A table is measured once per space (name + constructor arguments), input shape, batch size, runtime (ONNX
Runtime provider, threads, exporter, opset, ORT version) and device, and reused by every search that targets
them. ``costs`` maps each candidate's key (see :mod:`hmnas_nni.nas.cost`) to its own latency in milliseconds, timed
alone. A derived network's latency is predicted as ``base_ms + scale * sum of its kept candidates' costs``:
``base_ms`` and ``scale`` are fitted through two whole networks timed whole (``anchors``: the supernet with
everything on and its cheapest network), so they carry what candidates timed alone miss (the fixed stem, head
and blocks, one runtime call, and weights that no longer stay in cache in a large network). ``records`` keep
every raw measurement behind the costs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import write_json

FORMAT = "hmnas-latency/1"
#: The fields a table must match to be reused, in the order mismatches are reported.
MATCHED = ("space", "space_args", "input_shape", "batch", "runtime", "device")


class LatencyTableError(ValueError):
    """A latency table that is missing, corrupt, or measured for another space, shape, runtime or device."""


@dataclass
class LatencyTable:
    space: str
    space_args: dict[str, Any]
    input_shape: list[int]
    batch: int
    runtime: dict[str, Any]
    device: dict[str, Any]
    costs: dict[str, float]
    base_ms: float
    full_ms: float
    scale: float = 1.0
    anchors: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    def predict(self, candidates_ms: float) -> float:
        """A network's latency from the sum of its kept candidates' costs."""
        return self.base_ms + self.scale * candidates_ms

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a reader never sees half a table)."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, doc: Any, where: str = "latency table") -> LatencyTable:
        if not isinstance(doc, dict):
            raise LatencyTableError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != FORMAT:
            raise LatencyTableError(f"{where}: format {doc.get('format')!r} is not {FORMAT!r}; measure the table "
                                    "again with `hmnas latency`")
        names = [f for f in cls.__dataclass_fields__ if f != "format"]
        missing = [f for f in ("space", "input_shape", "batch", "runtime", "device", "costs", "base_ms", "full_ms")
                   if f not in doc]
        if missing:
            raise LatencyTableError(f"{where}: missing field(s) {missing}; measure the table again")
        table = cls(**{k: doc[k] for k in names if k in doc})
        bad = [k for k, v in table.costs.items() if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0]
        if bad:
            raise LatencyTableError(f"{where}: costs of {bad[:3]} are not finite numbers >= 0")
        if not (isinstance(table.scale, (int, float)) and math.isfinite(table.scale) and table.scale > 0):
            raise LatencyTableError(f"{where}: scale {table.scale!r} is not a finite number > 0")
        return table

    @classmethod
    def load(cls, path: str | os.PathLike, **expected: Any) -> LatencyTable:
        """Read a table; with ``expected`` fields (``space``, ``space_args``, ``input_shape``, ``batch``,
        ``runtime``, ``device``), refuse one that was measured for anything else."""
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table {path} does not exist; measure it with `hmnas latency`")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LatencyTableError(f"latency table {path} is not valid JSON ({e}); measure it again") from None
        table = cls.from_dict(doc, where=str(path))
        problem = table.mismatch(**expected)
        if problem:
            raise LatencyTableError(f"latency table {path} {problem}; measure a table for this setting "
                                    "(`hmnas latency`) or pass the matching one")
        return table

    def mismatch(self, **expected: Any) -> str | None:
        """The first field that differs from ``expected`` (``None`` if all match), as a phrase for an error."""
        unknown = sorted(set(expected) - set(MATCHED))
        if unknown:
            raise TypeError(f"a latency table is matched on {list(MATCHED)}, not {unknown}")
        for name in MATCHED:
            if name not in expected or expected[name] is None:
                continue
            want, have = _plain(expected[name]), _plain(getattr(self, name))
            if want != have:
                if isinstance(want, dict) and isinstance(have, dict):
                    keys = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
                    detail = ", ".join(f"{k}={have.get(k)!r} (wanted {want.get(k)!r})" for k in keys)
                    return f"was measured with {name} {detail}"
                return f"was measured for {name} {have!r}, not {want!r}"
        return None


def _plain(value: Any) -> Any:
    """A value as JSON would give it back (tuples as lists), so that fresh and loaded values compare equal."""
    return json.loads(json.dumps(value))
