"""The latency table: what each candidate of a supernet costs on one runtime and device, as a JSON document.

A table is measured once per space (name + constructor arguments), input shape, batch size, runtime (ONNX
Runtime provider, threads, exporter, opset, ORT version) and device, and reused by every search that targets
them. ``costs`` maps each candidate's key (see :mod:`hmnas_nni.nas.cost`) to its own latency in milliseconds, timed
alone. A derived network's latency is predicted as ``base_ms + scale * sum of its kept candidates' costs``:
``base_ms`` and ``scale`` are fitted through two whole networks timed whole (``anchors``: the supernet with
everything on and its cheapest network), so they carry what candidates timed alone miss (the fixed stem, head
and blocks, one runtime call, and weights that no longer stay in cache in a large network). ``records`` keep
every raw measurement behind the costs.

A search uses a table only when it fits (:meth:`LatencyTable.check_fits`, the one rule): the same space, space
arguments and input shape as the search, and the batch, runtime and device the searched network will run on. Every
field is range-checked when a table is read.
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
#: The fields a table must match to serve a search, in the order mismatches are reported: what is searched (the space,
#: its arguments, the input shape) and where the network will run (the batch, the runtime, the device).
MATCHED = ("space", "space_args", "input_shape", "batch", "runtime", "device")
#: The fields of where the network will run.
SERVING = ("batch", "runtime", "device")
#: The fields every table has.
REQUIRED = ("space", "space_args", "input_shape", "batch", "runtime", "device", "costs", "base_ms", "full_ms")
#: Advice at the end of every error about a table's contents.
#: What measures a table: the Python function, then the command.
MEASURE = "hmnas_nni.export.latency.table_for_space (`hmnas latency`)"
REMEASURE = f"measure the table again with {MEASURE}"


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
        """A table from its JSON document, every field checked: a bad one is a one-line error naming it."""
        if not isinstance(doc, dict):
            raise LatencyTableError(f"{where}: expected a JSON object, got {type(doc).__name__}; {REMEASURE}")
        if doc.get("format") != FORMAT:
            raise LatencyTableError(f"{where}: format {doc.get('format')!r} is not {FORMAT!r}; {REMEASURE}")
        missing = [f for f in REQUIRED if f not in doc]
        if missing:
            raise LatencyTableError(f"{where}: missing field(s) {missing}; {REMEASURE}")
        for name, (valid, what) in FIELD_CHECKS.items():
            if name in doc and not valid(doc[name]):
                raise LatencyTableError(f"{where}: {name} is {_short(doc[name])}, not {what}; {REMEASURE}")
        bad = [k for k, v in doc["costs"].items() if not (_number(v) and v >= 0)]
        if bad:
            raise LatencyTableError(f"{where}: costs of {bad[:3]} are not finite numbers of milliseconds >= 0; "
                                    f"{REMEASURE}")
        table = cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})
        table._check_base(where)
        return table

    def _check_base(self, where: str) -> None:
        """``base_ms`` is the intercept of a line fitted through whole networks, so it may be a little below 0; it
        must not make the table predict a negative latency for a network it records (without any, it must be >= 0)."""
        networks = self.anchors.get("networks", [])
        lowest = min(((self.predict(a["candidates_ms"]), a.get("network", "a recorded network")) for a in networks),
                     default=(self.base_ms, "a network with no candidate"))
        if lowest[0] < 0:
            raise LatencyTableError(f"{where}: base_ms {self.base_ms!r} makes the table predict {lowest[0]:.4g} ms for "
                                    f"{lowest[1]}, which is not a latency; {REMEASURE}")

    @classmethod
    def load(cls, path: str | os.PathLike, **expected: Any) -> LatencyTable:
        """Read a table; with ``expected`` fields (``space``, ``space_args``, ``input_shape``, ``batch``,
        ``runtime``, ``device``), refuse one that was measured for anything else."""
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table {path} does not exist; measure it with {MEASURE}")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LatencyTableError(f"latency table {path} is not valid JSON ({e}); measure it again") from None
        table = cls.from_dict(doc, where=str(path))
        if expected:
            table.check_fits(f"latency table {path}", **expected)
        return table

    def check_fits(self, where: str = "latency table", **expected: Any) -> None:
        """The one rule for using a table in a search: every field of :data:`MATCHED` (space, space_args,
        input_shape, batch, runtime, device) must equal the search's. A table that differs in any is refused with a
        one-line :class:`LatencyTableError` naming the field; every field must be given, so none goes unchecked."""
        missing = [name for name in MATCHED if expected.get(name) is None]
        if missing:
            raise TypeError(f"a latency table is checked on every field of {list(MATCHED)}; {missing} not given")
        problem = self.mismatch(**expected)
        if problem:
            raise LatencyTableError(f"{where} {problem}; measure a table for this search with "
                                    f"{MEASURE} (the same space, space_args and input shape, batch (--batch), "
                                    "runtime=Runtime(provider, threads) (--device, --threads)) or pass one that fits")

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


def _number(value: Any) -> bool:
    """A finite real number (JSON's ``NaN`` and ``Infinity``, booleans and strings are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _short(value: Any) -> str:
    """A value as the error quotes it, cut to one short phrase."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: Each field's check and what the field must be, as the error says it.
FIELD_CHECKS = {
    "space": (lambda v: isinstance(v, str) and bool(v.strip()), "a space name or import path"),
    "space_args": (lambda v: isinstance(v, dict), "a JSON object of the space's arguments"),
    "input_shape": (lambda v: isinstance(v, list) and bool(v) and all(_positive_int(d) for d in v),
                    "a list of positive integers (C, H, W)"),
    "batch": (_positive_int, "an integer >= 1"),
    "runtime": (lambda v: isinstance(v, dict), "a JSON object describing the runtime"),
    "device": (lambda v: isinstance(v, dict), "a JSON object describing the device"),
    "costs": (lambda v: isinstance(v, dict), "a JSON object {candidate: milliseconds}"),
    "base_ms": (_number, "a finite number of milliseconds"),
    "full_ms": (lambda v: _number(v) and v > 0, "a finite number of milliseconds > 0"),
    "scale": (lambda v: _number(v) and v > 0, "a finite number > 0"),
    "anchors": (lambda v: isinstance(v, dict) and isinstance(v.get("networks", []), list) and all(
        isinstance(a, dict) and _number(a.get("candidates_ms")) and a["candidates_ms"] >= 0
        and _number(a.get("measured_ms")) and a["measured_ms"] > 0 for a in v.get("networks", [])),
        "a JSON object whose networks each have candidates_ms >= 0 and measured_ms > 0"),
    "versions": (lambda v: isinstance(v, dict), "a JSON object"),
    "measurement": (lambda v: isinstance(v, dict), "a JSON object"),
    "records": (lambda v: isinstance(v, list), "a list of measurements"),
}


def _plain(value: Any) -> Any:
    """A value as JSON would give it back (tuples as lists), so that fresh and loaded values compare equal."""
    return json.loads(json.dumps(value))
