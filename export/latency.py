"""Latency tables measured, not guessed: every candidate of a supernet timed in ONNX Runtime on this device.

Each candidate of :func:`hmnas_nni.nas.cost.cost_items` is cut out of the whole supernet (every mask on) with
the input shape it really gets there, exported to ONNX and timed in an ONNX Runtime session on the table's
provider (CPU here; CUDA or TensorRT where a GPU is present), as the median of several repeats, less the cost of
a runtime call that does nothing (an identity graph of the same input). Ops (with the weight the derived
network multiplies them by), inputs of an ``InputChoice`` (a weighted add) and optional blocks of a ``Repeat``
are timed whole, less what is nested in them; a channel step or kernel ring of a value choice is the difference
between the layer at that candidate and at the one below (the layer's other choices at their largest). The
whole network is timed too: ``base_ms`` is what it costs beyond its candidates.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.format.files import check_writable
from hmnas_nni.format.latency_table import LatencyTable, LatencyTableError
from hmnas_nni.nas.cost import CostItem, LatencyModel, cost_items
from hmnas_nni.nas.hierarchy import Hierarchy
from hmnas_nni.nas.levels import all_on, masks_at
from hmnas_nni.nas.rebuild import architecture_from_export, derive_network, derived_of, export_sample
from hmnas_nni.spaces.registry import space_identity

from .bench import _ort_providers, environment, time_runs
from .onnx_export import DEFAULT_OPSET, ExportError, export_onnx, ort_session

_logger = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "tensorrt")
EXPORTERS = ("dynamo", "torchscript")
#: Opset of the TorchScript exporter (its newest well-supported one); the dynamo exporter uses the project's.
TORCHSCRIPT_OPSET = 17


@dataclass(frozen=True)
class Runtime:
    """Where a latency is measured: ONNX Runtime ``provider`` (``cpu``, ``cuda``, ``tensorrt``) with ``threads``
    intra-op threads, on graphs written by ``exporter`` (``dynamo``: as ``hmnas export`` writes them;
    ``torchscript``: the same network, about 20x faster to export, for large tables)."""

    provider: str = "cpu"
    threads: int = 1
    exporter: str = "dynamo"

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"latency provider {self.provider!r} is not one of {list(PROVIDERS)}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"latency threads must be an integer >= 1, got {self.threads!r}")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"latency exporter {self.exporter!r} is not one of {list(EXPORTERS)}")
        if self.provider != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"latency provider {self.provider!r} needs a CUDA GPU, and none is visible; measure on "
                             "the machine the network will run on, or use provider 'cpu'")

    @property
    def opset(self) -> int:
        return DEFAULT_OPSET if self.exporter == "dynamo" else TORCHSCRIPT_OPSET

    def describe(self) -> dict[str, Any]:
        """The runtime as a latency table records (and matches) it."""
        import onnxruntime as ort

        return {**asdict(self), "opset": self.opset, "onnxruntime": ort.__version__, "engine": "onnxruntime"}

    def device(self) -> dict[str, Any]:
        """This machine's device for the provider: the CPU model and cores, or the GPU's name."""
        env = environment()["device"]
        if self.provider == "cpu":
            return {"kind": "cpu", "name": env["cpu"], "cores": env["cpu_cores"]}
        return {"kind": "gpu", "name": env["gpu"]}


Key = tuple[Any, ...]


@dataclass
class Timer:
    """Times modules in ONNX Runtime. Every graph is exported and loaded first (:meth:`graph`); :meth:`time_all`
    then times them round-robin, ``repeats`` rounds of ``iters`` runs each (after ``warmup``), so that a burst of
    load on a shared machine hits one round of many graphs rather than every round of one. A graph's latency is
    the median over rounds of each round's median; identical modules at identical shapes are timed once."""

    runtime: Runtime = field(default_factory=Runtime)
    repeats: int = 5
    iters: int = 20
    warmup: int = 3
    min_seconds: float = 0.005
    records: list[dict[str, Any]] = field(default_factory=list)
    _rounds: dict[Key, list[float]] = field(default_factory=dict)
    _pending: dict[Key, tuple[Any, dict[str, np.ndarray], str, tuple[int, ...]]] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory = field(default_factory=lambda: tempfile.TemporaryDirectory(prefix="hmnas-lat-"))

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.iters < 1:
            raise ValueError(f"latency repeats and iters must be >= 1, got {self.repeats} and {self.iters}")

    def graph(self, module: nn.Module, shape: tuple[int, ...], what: str = "", fresh: bool = False) -> Key:
        """Export ``module`` for an input of ``shape`` (batch included) and load it; the key to read its time by.
        ``fresh`` times it again even if an identical graph was timed before."""
        module = module.eval()
        key = _signature(module, shape) + ((len(self.records) + len(self._pending),) if fresh else ())
        if key in self._rounds or key in self._pending:
            return key
        path = self._export(module, shape)
        session = ort_session(path, _ort_providers(f"ort-{self.runtime.provider}"), threads=self.runtime.threads)
        _check_provider(session, self.runtime)
        path.unlink()
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feed = {i.name: x for i in session.get_inputs()}  # none when the output does not read the input
        self._pending[key] = (session, feed, what, tuple(shape))
        return key

    def overhead(self, shape: tuple[int, ...]) -> Key:
        """A runtime call that computes nothing on an input of ``shape``: what every timed graph pays once."""
        return self.graph(_Copy(), shape, what=f"call overhead {list(shape)}")

    def time_all(self) -> None:
        """Time every graph loaded since the last call, round-robin."""
        pending, self._pending = self._pending, {}
        for key in pending:
            self._rounds[key] = []
        for r in range(self.repeats):
            for key, (session, feed, _, _) in pending.items():
                stats = time_runs(lambda s=session, f=feed: s.run(None, f), self.warmup if r == 0 else 1, self.iters,
                                  min_seconds=self.min_seconds)
                self._rounds[key].append(stats["p50_ms"])
        for key, (_, _, what, shape) in pending.items():
            self.records.append({"what": what, "input_shape": list(shape), "ms": self.ms(key),
                                 "rounds_ms": [round(m, 5) for m in self._rounds[key]]})

    def ms(self, key: Key) -> float:
        """The latency of a graph (timing whatever is still pending first)."""
        if key in self._pending:
            self.time_all()
        return statistics.median(self._rounds[key])

    def raw_ms(self, module: nn.Module, shape: tuple[int, ...], what: str = "") -> float:
        """Milliseconds of one runtime call of ``module`` on an input of ``shape``."""
        return self.ms(self.graph(module, shape, what))

    def _export(self, module: nn.Module, shape: tuple[int, ...]) -> Path:
        path = Path(self._tmp.name) / f"m{len(self._rounds) + len(self._pending)}.onnx"
        if self.runtime.exporter == "dynamo":
            return export_onnx(module, path, tuple(shape[1:]), opset=self.runtime.opset)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False,
                                  opset_version=self.runtime.opset, input_names=["input"], output_names=["output"])
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; all become one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f"cannot export {type(module).__name__} for timing: {first[:300]}; try the other "
                              "exporter") from None
        return path


class _Copy(nn.Module):
    """The graph that computes nothing: output = input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class _Scaled(nn.Module):
    """An op as the derived network runs it: its output times its learned weight, added to a sum."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.op(x)
        return y + y * 0.5


class _WeightedAdd(nn.Module):
    """One input of an ``InputChoice`` as the derived network sums it: ``acc + x * w``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x * 0.5


def _signature(module: nn.Module, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """What decides a module's latency: its structure, settings, tensor shapes, input and output shapes."""
    with torch.no_grad():
        out = module(torch.zeros(shape))
    settings = tuple((name, tuple(sorted((k, repr(v)) for k, v in vars(m).items()
                                         if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple)))))
                     for name, m in module.named_modules())
    tensors = tuple((n, tuple(t.shape)) for n, t in [*module.named_parameters(), *module.named_buffers()])
    out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else repr(type(out))
    return repr(module), settings, tensors, tuple(shape), out_shape


def _check_provider(session: Any, runtime: Runtime) -> None:
    wanted = _ort_providers(f"ort-{runtime.provider}")[0]
    wanted = wanted[0] if isinstance(wanted, tuple) else wanted
    used = session.get_providers()[0]
    if used != wanted:
        raise LatencyTableError(f"ONNX Runtime ran on {used}, not {wanted}; install an onnxruntime build with "
                                f"{wanted} or measure with provider 'cpu'")


# --------------------------------------------------------------------------- the candidates, where they run
@contextlib.contextmanager
def _input_shapes(supernet: nn.Module, items: list[CostItem]) -> Iterator[dict[str, list[Any]]]:
    """Input shapes of every item's module, per call, recorded by the next forward pass."""
    modules = dict(supernet.named_modules())
    shapes: dict[str, list[Any]] = {}

    def hook(path: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            shapes.setdefault(path, []).append([tuple(t.shape) for t in x] if isinstance(x, (list, tuple))
                                               else tuple(x.shape))
        return record

    handles = [modules[p].register_forward_pre_hook(hook(p)) for p in {i.path for i in items}]
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


def _derived(module: nn.Module, arch: Architecture) -> nn.Module:
    """``module`` (part of a supernet) as the derived network holds it when ``arch`` keeps everything."""
    return derive_network(nn.Sequential(module), arch)[0]


def _layer_input(layer: nn.Module, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    """The input shape of a layer frozen at smaller values (its input channels or features follow its choice)."""
    s = list(shape)
    if isinstance(layer, nn.modules.conv._ConvNd):
        s[1] = layer.in_channels
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        s[1] = layer.num_features
    elif isinstance(layer, nn.Linear):
        s[-1] = layer.in_features
    elif isinstance(layer, nn.LayerNorm):
        n = len(layer.normalized_shape)
        s[-n:] = list(layer.normalized_shape)
    else:
        raise LatencyTableError(f"latency tables time value choices of Conv, Linear, BatchNorm and LayerNorm layers; "
                                f"{path} is a {type(layer).__name__}")
    return tuple(s)


Terms = list[tuple[float, Key]]


def _step_terms(layer: nn.Module, item: CostItem, shape: tuple[int, ...], timer: Timer) -> Terms:
    """A value choice's step in one layer: the layer at the step's candidate less the layer one candidate below,
    the layer's other choices at their largest."""
    label, k = item.entry
    top = {m.label: max(m.values) for m in layer.value_masks.values()}
    values = next(m.values for m in layer.value_masks.values() if m.label == label)
    terms = []
    for sign, v in ((-1.0, values[k]), (1.0, values[k + 1])):
        frozen = layer.derive(Architecture("", {}, values={**top, label: v}))
        terms.append((sign, timer.graph(frozen, _layer_input(frozen, shape, item.path), f"{item.key} @ {v}")))
    return terms


def _item_terms(item: CostItem, module: nn.Module, shapes: list[Any], arch: Architecture, timer: Timer) -> Terms:
    """The timed graphs whose (signed) sum is what ``item`` costs where it runs, over all its calls, nested
    items included: the item's graph less a no-op call, or a layer at two candidates."""
    if item.kind == "step":
        return [t for shape in shapes for t in _step_terms(module, item, shape, timer)]
    if item.kind == "input":
        body, shapes = _WeightedAdd(), [shape[item.entry] for shape in shapes]
    elif any(not isinstance(shape, tuple) for shape in shapes):
        raise LatencyTableError(f"{item.path} is called with a list of tensors; latency tables time ops and blocks "
                                "that take one tensor")
    else:
        body = _derived(module, arch)
        body = _Scaled(body) if item.kind == "op" else body
    return [t for shape in shapes for t in ((1.0, timer.graph(body, shape, item.key)), (-1.0, timer.overhead(shape)))]


def _own_costs(items: list[CostItem], whole: dict[str, float]) -> dict[str, float]:
    """Each item's own cost: what it costs whole less everything nested in it (innermost first), at least 0."""
    own: dict[str, float] = {}
    for item in reversed(items):
        nested = sum(own[o.key] for o in items if item.inside(o) and o.key in own)
        own[item.key] = max(0.0, whole[item.key] - nested)
    return own


# --------------------------------------------------------------------------- tables
def measure_table(supernet: nn.Module, hierarchy: Hierarchy, input_shape: tuple[int, ...] | list[int],
                  batch: int = 1, runtime: Runtime | None = None, timer: Timer | None = None,
                  calibration: int = 6, seed: int = 1234,
                  progress: Callable[[str], None] | None = None) -> LatencyTable:
    """Time every candidate of an HM-NAS ``supernet`` (inputs of ``input_shape`` = C, H, W at ``batch``) on
    ``runtime`` here, then the whole supernet and ``calibration`` random derived networks (mask settings drawn
    from ``seed``) to fit ``base_ms`` and ``scale``."""
    timer = timer or Timer(runtime or Runtime())
    runtime = timer.runtime
    items = cost_items(supernet)
    x = torch.randn(batch, *input_shape)
    was_training = supernet.training
    supernet.eval()
    try:
        with all_on(hierarchy):
            with _input_shapes(supernet, items) as shapes, torch.no_grad():
                supernet(x)
            arch = architecture_from_export(export_sample(supernet), supernet, input_shape=list(input_shape))
            modules = dict(supernet.named_modules())
            terms = {}
            for n, item in enumerate(items):
                terms[item.key] = _item_terms(item, modules[item.path], shapes.get(item.path, []), arch, timer)
                if progress and (n + 1) % 25 == 0:
                    progress(f"{n + 1}/{len(items)} candidates exported")
            full_net = derived_of(supernet, arch)
        timer.time_all()
        costs = _own_costs(items, {k: sum(c * timer.ms(g) for c, g in t) for k, t in terms.items()})
        anchors = _anchors(supernet, hierarchy, full_net, costs, tuple(x.shape), timer, calibration, seed)
    finally:
        supernet.train(was_training)
    name, args = space_identity(supernet)
    env = environment()
    base_ms, scale = _fit(anchors)
    return LatencyTable(
        space=name, space_args=args, input_shape=list(input_shape), batch=batch, runtime=runtime.describe(),
        device=runtime.device(), costs=costs, base_ms=base_ms, full_ms=anchors[0]["measured_ms"], scale=scale,
        anchors={"fit": "least squares of measured_ms on candidates_ms", "networks": anchors},
        versions={k: env["versions"][k] for k in ("torch", "onnx", "onnxruntime")},
        measurement={"statistic": "median over repeats of the median of iters runs, less a no-op call",
                     "repeats": timer.repeats, "iters": timer.iters, "warmup": timer.warmup,
                     "candidates": len(items), "graphs_timed": len(timer.records)},
        records=timer.records,
    )


def random_scores(hierarchy: Hierarchy, generator: torch.Generator, keep: float) -> dict[str, torch.Tensor]:
    """Scores that switch each entry on with probability ``keep`` (either side of its threshold)."""
    return {name: torch.where(torch.rand(m.scores.shape, generator=generator) < keep,
                              torch.full_like(m.scores, 2 * m.tau), torch.zeros_like(m.scores))
            for name, m in hierarchy.masks.items()}


def reads_input(net: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether a network's output depends on its input: a mask setting can keep only 'none' ops on a path, and
    an ONNX graph of a constant network is folded away, so timing it says nothing about its ops."""
    with torch.no_grad():
        a, b = net(torch.randn(shape)), net(torch.randn(shape))
    return bool((a - b).abs().max() > 0)


def _anchors(supernet: nn.Module, hierarchy: Hierarchy, full_net: nn.Module, costs: dict[str, float],
             shape: tuple[int, ...], timer: Timer, networks: int, seed: int) -> list[dict[str, Any]]:
    """The whole supernet and ``networks`` random derived networks (that read their input), timed whole in the
    same rounds, each with the sum of its kept candidates' costs."""
    model = LatencyModel(supernet, hierarchy, costs)
    gen = torch.Generator().manual_seed(seed)
    nets = [("whole supernet", full_net, sum(costs.values()))]
    for _ in range(4 * networks):
        if len(nets) > networks:
            break
        keep = 0.3 + 0.6 * (len(nets) - 1) / max(1, networks - 1)
        with masks_at(hierarchy, scores=random_scores(hierarchy, gen, keep)):
            arch = architecture_from_export(export_sample(supernet), supernet, input_shape=list(shape[1:]))
            net, total = derived_of(supernet, arch).eval(), model.predicted_ms()
        if reads_input(net, shape):
            nets.append((f"calibration network {len(nets)} (keep {keep:.2f})", net, total))
    keys = [timer.graph(net, shape, f"anchor: {what}", fresh=True) for what, net, _ in nets]
    timer.time_all()
    return [{"network": what, "measured_ms": timer.ms(k), "candidates_ms": total}
            for (what, _, total), k in zip(nets, keys)]


def _fit(anchors: list[dict[str, Any]]) -> tuple[float, float]:
    """``base_ms`` and ``scale`` of the least-squares line from candidates' sums to measured milliseconds (scale 1,
    base the mean residual, when the anchors cannot fix a positive slope)."""
    x = np.array([a["candidates_ms"] for a in anchors])
    y = np.array([a["measured_ms"] for a in anchors])
    if len(anchors) >= 2 and np.ptp(x) > 1e-9:
        scale, base = np.polyfit(x, y, 1)
        if scale > 0:
            return float(base), float(scale)
        _logger.warning("latency anchors give a slope of %.3g; using the candidates' costs unscaled", scale)
    return float((y - x).mean()), 1.0


def expected_fields(supernet: nn.Module, input_shape: tuple[int, ...] | list[int], batch: int,
                    runtime: Runtime) -> dict[str, Any]:
    """What a table must have been measured for to serve ``supernet`` on ``runtime`` on this machine."""
    name, args = space_identity(supernet)
    return {"space": name, "space_args": args, "input_shape": list(input_shape), "batch": batch,
            "runtime": runtime.describe(), "device": runtime.device()}


def latency_table_for(supernet: nn.Module, hierarchy: Hierarchy, input_shape: tuple[int, ...] | list[int],
                      path: str | Path, batch: int = 1, runtime: Runtime | None = None,
                      timer: Timer | None = None) -> LatencyTable:
    """The table at ``path`` if it was measured for this space, shape, runtime and device (any other is refused
    with the mismatch named); else measure it here and save it there."""
    runtime = (timer.runtime if timer else runtime) or Runtime()
    path = Path(path)
    if path.is_dir():
        raise LatencyTableError(f"{path} is a folder; pass the table's file path, e.g. {path / 'latency_table.json'}")
    if path.exists():
        table = LatencyTable.load(path, **expected_fields(supernet, input_shape, batch, runtime))
    else:
        check_writable(path)  # before minutes of measuring
        table = measure_table(supernet, hierarchy, input_shape, batch, runtime, timer)
        table.save(path)
    LatencyModel.of(supernet, hierarchy, table, where=f"latency table {path}")  # it lists this supernet's candidates
    return table


def traced_supernet(space: nn.Module, input_shape: tuple[int, ...] | list[int],
                    edge_level: str = "auto") -> tuple[nn.Module, Any]:
    """``space`` as an HM-NAS supernet whose dataflow is known (one training forward and backward), with its
    strategy."""
    from hmnas_nni.nas.strategy import HMNAS

    strategy = HMNAS(edge_level=edge_level)
    strategy.mutate_model(space)
    space.train()
    space(torch.randn(2, *input_shape)).sum().backward()
    space.zero_grad()
    return space, strategy


def table_for_space(space: str, space_args: dict[str, Any], input_shape: tuple[int, ...] | list[int],
                    path: str | Path, batch: int = 1, runtime: Runtime | None = None, repeats: int = 5,
                    edge_level: str = "auto") -> LatencyTable:
    """The latency table of a registered space (or an NNI space's import path) with ``space_args``, for inputs of
    ``input_shape`` (C, H, W): read from ``path`` when it was measured for exactly this, else measured here
    and saved there (what ``hmnas latency`` and a search with ``--latency-target`` call)."""
    from hmnas_nni.spaces.registry import build_space, fit_input

    torch.manual_seed(0)
    model = fit_input(build_space(space, **space_args), tuple(input_shape))
    supernet, strategy = traced_supernet(model, input_shape, edge_level)
    return latency_table_for(supernet, strategy.hierarchy, input_shape, path, batch,
                             timer=Timer(runtime or Runtime(), repeats=repeats))


def runtime_of(table: LatencyTable) -> Runtime:
    """The runtime a table was measured on, refused if this machine cannot reproduce it."""
    rt = Runtime(table.runtime["provider"], table.runtime["threads"], table.runtime["exporter"])
    problem = table.mismatch(runtime=rt.describe(), device=rt.device())
    if problem:
        raise LatencyTableError(f"this machine cannot measure on the table's runtime: the table {problem}; measure "
                                "a table here (`hmnas latency`, or leave the table out to measure one) and pass it")
    return rt


# --------------------------------------------------------------------------- whole networks
def measure_network(net: nn.Module, table: LatencyTable, timer: Timer | None = None) -> float:
    """Milliseconds of one call of a derived network, on the table's runtime, shape and batch."""
    timer = timer or Timer(runtime_of(table))
    return timer.raw_ms(net, (table.batch, *table.input_shape), "derived network")


def check_latency_target(net: nn.Module, target_ms: float, table: LatencyTable, predicted_ms: float | None = None,
                         timer: Timer | None = None) -> dict[str, Any]:
    """Measure a derived network against a latency target; a miss is logged with by how much, never silent."""
    if not target_ms > 0:
        raise ValueError(f"latency target must be > 0 ms, got {target_ms!r}")
    measured = measure_network(net, table, timer)
    report = {"target_ms": target_ms, "measured_ms": measured, "predicted_ms": predicted_ms,
              "met": measured <= target_ms, "missed_by_ms": max(0.0, measured - target_ms),
              "missed_by_percent": max(0.0, 100 * (measured - target_ms) / target_ms),
              "runtime": table.runtime, "device": table.device}
    if not report["met"]:
        _logger.warning("latency target missed: the derived network measures %.4f ms against a target of %.4f ms "
                        "(%.4f ms, %.1f%% over)%s", measured, target_ms, report["missed_by_ms"],
                        report["missed_by_percent"],
                        "" if predicted_ms is None else f"; the table predicted {predicted_ms:.4f} ms")
    return report
