"""What a masked supernet costs: its candidates, the masks that decide each one, and their expected latency.

Every candidate of an HM-NAS supernet is one :class:`CostItem`: an op of a ``LayerChoice`` or cell edge, an
input of an ``InputChoice``, a channel step or kernel ring of a value choice in one layer, or a block of a
depth choice beyond the minimum depth. Each item is run when all its *gates* are on: its own mask entry and
those of everything around it (the edge gate or cell input of an op, the earlier steps of a value choice, the
depth of the ``Repeat`` it sits in, the op it is nested in). With a table of measured costs,

    expected latency = base + sum over items of cost(item) * product of its gates,

computed through the straight-through masks, so it is exactly the table's prediction for the network the masks
keep and has a gradient for every mask score: ``d latency / d m`` is the latency that entry saves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .hierarchy import Hierarchy
from .levels import all_on, masks_at
from .masks import MaskScores
from .supermodules import HMNASMixedCell, HMNASMixedInput, HMNASMixedLayer, HMNASMixedRepeat, ValueMasks
from .supermodules.operation import DerivableOperation

_logger = logging.getLogger(__name__)

KINDS = ("op", "input", "step", "block")


@dataclass(frozen=True, eq=False)
class Gate:
    """One mask condition an item runs under: ``entry`` (a mask entry is on), ``prefix`` (a value choice's step
    ``index`` and every step before it are on) or ``depth`` (a ``Repeat`` runs at least ``index`` blocks)."""

    kind: str
    owner: nn.Module
    index: int


@dataclass(frozen=True)
class CostItem:
    """One candidate: ``kind`` (op, input, step, block), the module path it is measured at, what it is there
    (op name, input index, ``(label, step)``, block number), and the gates it runs under."""

    key: str
    kind: str
    path: str
    entry: Any
    gates: tuple[Gate, ...]

    def inside(self, other: CostItem) -> bool:
        """Whether ``other`` runs inside this item's module (an op or step within an op, anything within a block)."""
        if other is self or self.kind not in ("op", "block"):
            return False
        return other.path.startswith(self.path + ".") or (other.path == self.path and other.kind == "step")


# --------------------------------------------------------------------------- the candidates of a supernet
def cost_items(supernet: nn.Module) -> list[CostItem]:
    """Every candidate of an HM-NAS supernet, outermost first."""
    return list(_children(supernet, "", ()))


def _children(module: nn.Module, path: str, gates: tuple[Gate, ...], skip: tuple[str, ...] = ()) -> Iterator[CostItem]:
    for name, child in module.named_children():
        if name not in skip:
            yield from _visit(child, f"{path}.{name}" if path else name, gates)


def _visit(module: nn.Module, path: str, gates: tuple[Gate, ...]) -> Iterator[CostItem]:
    if isinstance(module, HMNASMixedLayer):
        yield from _layer(module, path, gates)
    elif isinstance(module, HMNASMixedCell):
        yield from _cell(module, path, gates)
    elif isinstance(module, HMNASMixedInput):
        for k in range(module.n_candidates):
            yield CostItem(f"input:{path}#{k}", "input", path, k, gates + (Gate("entry", module.edge_masks, k),))
    elif isinstance(module, HMNASMixedRepeat):
        yield from _repeat(module, path, gates)
    elif isinstance(module, DerivableOperation):
        for vm in module.value_masks.values():
            for k in range(len(vm.values) - 1):
                yield CostItem(f"step:{path}#{vm.label}#{k}", "step", path, (vm.label, k),
                               gates + (Gate("prefix", vm, k),))
    else:
        yield from _children(module, path, gates)


def _layer(module: HMNASMixedLayer, path: str, gates: tuple[Gate, ...]) -> Iterator[CostItem]:
    edge = () if module.edge_masks is None else (Gate("entry", module.edge_masks, 0),)
    for i, name in enumerate(module.names):
        inner = gates + edge + (Gate("entry", module.op_masks, i),)
        yield CostItem(f"op:{path}.{name}", "op", f"{path}.{name}", name, inner)
        yield from _visit(module[name], f"{path}.{name}", inner)


def _cell(module: HMNASMixedCell, path: str, gates: tuple[Gate, ...]) -> Iterator[CostItem]:
    yield from _children(module, path, gates, skip=("ops",))
    for i in module.node_ids():
        for j in range(i):
            for o, name in enumerate(module.op_names):
                p = f"{path}.ops.{i - module.num_predecessors}.{j}.{name}"
                inner = gates + (Gate("entry", module.input_masks[str(i)], j),
                                 Gate("entry", module.op_masks[f"{i}_{j}"], o))
                yield CostItem(f"op:{p}", "op", p, name, inner)
                yield from _visit(module.ops[i - module.num_predecessors][j][name], p, inner)


def _repeat(module: HMNASMixedRepeat, path: str, gates: tuple[Gate, ...]) -> Iterator[CostItem]:
    lowest = min(module._depth_weights())
    for b, block in enumerate(module.blocks, start=1):
        p = f"{path}.blocks.{b - 1}"
        inner = gates if b <= lowest else gates + (Gate("depth", module, b),)
        if b > lowest:
            yield CostItem(f"block:{p}", "block", p, b, inner)
        yield from _visit(block, p, inner)


class GateValues:
    """Every gate of a list of items as one vector (entry 0 is a constant 1), so that all items' gates are
    one gather and one product: ``F[index].prod(1)``."""

    def __init__(self, items: list[CostItem]) -> None:
        self.masks: list[MaskScores] = []
        self.prefixes: list[ValueMasks] = []
        self.repeats: list[HMNASMixedRepeat] = []
        slots: dict[tuple[str, int], int] = {}
        for g in {id(g): g for item in items for g in item.gates}.values():
            pool = {"entry": self.masks, "prefix": self.prefixes, "depth": self.repeats}[g.kind]
            if (g.kind, id(g.owner)) not in slots:
                slots[(g.kind, id(g.owner))] = len(pool)
                pool.append(g.owner)
        offsets, start = {}, 1
        for kind, pool in (("entry", self.masks), ("prefix", self.prefixes), ("depth", self.repeats)):
            for owner in pool:
                offsets[(kind, id(owner))] = start
                start += _width(kind, owner)
        width = max((len(item.gates) for item in items), default=1)
        self.index = torch.zeros(len(items), width, dtype=torch.long)
        for row, item in enumerate(items):
            for col, g in enumerate(item.gates):
                self.index[row, col] = offsets[(g.kind, id(g.owner))] + g.index - (1 if g.kind == "depth" else 0)

    def vector(self) -> torch.Tensor:
        """Every gate's current value, straight-through, on the masks' device."""
        device = self.masks[0].scores.device if self.masks else torch.device("cpu")
        parts = [torch.ones(1, device=device)]
        parts += [m().float() for m in self.masks]
        parts += [torch.cumprod(vm.steps().float(), 0) for vm in self.prefixes]
        parts += [_block_gates(r).to(device) for r in self.repeats]
        return torch.cat([p.reshape(-1) for p in parts])

    def gates(self) -> torch.Tensor:
        """Each item's product of gates."""
        vector = self.vector()
        return vector[self.index.to(vector.device)].prod(1)


def _width(kind: str, owner: nn.Module) -> int:
    if kind == "entry":
        return owner.scores.numel()
    if kind == "prefix":
        return len(owner.values) - 1
    return len(owner.blocks)


def _block_gates(repeat: HMNASMixedRepeat) -> torch.Tensor:
    """Per block ``b`` (from 1), whether the chosen depth is at least ``b``, with the depth masks' gradient."""
    weights = repeat._depth_weights()
    return torch.stack([sum(torch.as_tensor(w, dtype=torch.float32).reshape(()) for d, w in weights.items() if d >= b)
                        if any(d >= b for d in weights) else torch.zeros(()) for b in range(1, len(repeat.blocks) + 1)])


# --------------------------------------------------------------------------- the expected latency
class LatencyModel:
    """The expected latency of the network a supernet's masks keep, from a table's per-candidate costs:
    ``base_ms + scale * sum of the kept candidates' costs``."""

    @classmethod
    def of(cls, supernet: nn.Module, hierarchy: Hierarchy, table: Any, where: str = "latency table") -> LatencyModel:
        """The model of a :class:`~hmnas_nni.format.latency_table.LatencyTable`."""
        model = cls(supernet, hierarchy, table.costs, table.base_ms, table.scale, where)
        model.input_shape = list(table.input_shape)
        model.table = table
        return model

    def __init__(self, supernet: nn.Module, hierarchy: Hierarchy, costs: Mapping[str, float], base_ms: float = 0.0,
                 scale: float = 1.0, where: str = "latency table") -> None:
        self.items = cost_items(supernet)
        keys = {i.key for i in self.items}
        missing, extra = sorted(keys - set(costs)), sorted(set(costs) - keys)
        if missing or extra:
            detail = f"has no cost for {len(missing)} candidate(s), e.g. {missing[0]!r}" if missing else \
                f"lists {len(extra)} candidate(s) this supernet does not have, e.g. {extra[0]!r}"
            raise ValueError(f"{where} {detail}; it was measured for another space or other space_args")
        self.hierarchy = hierarchy
        self.costs = torch.tensor([float(costs[i.key]) * scale for i in self.items])
        self.base_ms = float(base_ms)
        self._gates = GateValues(self.items)
        self._weights: list[torch.Tensor] | None = None
        self.input_shape: list[int] | None = None
        self.table: Any = None  # the LatencyTable this model was read from (set by :meth:`of`)

    def expected_ms(self) -> torch.Tensor:
        """Latency of the masked network (ms), with the masks' straight-through gradient."""
        gates = self._gates.gates()
        return self.base_ms + (self.costs.to(gates.device) * gates).sum()

    def predicted_ms(self) -> float:
        """The table's prediction for the network the masks keep now."""
        with torch.no_grad():
            return float(self.expected_ms())

    def savings(self) -> list[torch.Tensor]:
        """Per mask (in ``hierarchy.all_masks()`` order), the latency each entry saves when switched off from
        the whole supernet: ``d latency / d m`` with every entry on."""
        masks = self.hierarchy.all_masks()
        with all_on(self.hierarchy), torch.enable_grad():
            flags = [m.scores.requires_grad for m in masks]
            for m in masks:
                m.scores.requires_grad_(True)
            try:
                grads = torch.autograd.grad(self.expected_ms(), [m.scores for m in masks], allow_unused=True)
            finally:
                for m, flag in zip(masks, flags):
                    m.scores.requires_grad_(flag)
        return [torch.zeros_like(m.scores) if g is None else g.detach().clamp_min(0) for m, g in zip(masks, grads)]

    def sparsity_weights(self) -> list[torch.Tensor]:
        """Each entry's weight in the sparsity term: the latency it saves over the mean saving (mean weight 1, so
        the sparsity weight keeps its meaning), uniform if the table says nothing costs anything."""
        if self._weights is None:
            saved = self.savings()
            mean = torch.cat([s.reshape(-1) for s in saved]).mean()
            if not mean > 0:
                _logger.warning("latency table: no entry saves any latency; the sparsity term stays unweighted")
                self._weights = [torch.ones_like(s) for s in saved]
            else:
                self._weights = [s / mean for s in saved]
        return self._weights

    def cheapest(self) -> contextlib.AbstractContextManager[Hierarchy]:
        """The supernet masked to about its cheapest network: every score below its threshold, ranked by what it
        saves, so the hierarchy rules keep the cheapest path and the cheapest entry of each choice."""
        low = {name: -1e6 - s for name, s in zip(self.hierarchy.masks, self.savings())}
        return masks_at(self.hierarchy, scores=low)

    def smallest_ms(self) -> float:
        """The prediction for :meth:`cheapest`."""
        with self.cheapest():
            return self.predicted_ms()


def latency_model_for(supernet: nn.Module, hierarchy: Hierarchy, table: Any, target_ms: float | None = None,
                      serving: Mapping[str, Any] | None = None) -> LatencyModel:
    """The latency model of ``table`` (a ``LatencyTable`` or its path) for ``supernet``, if the table fits this search
    (:meth:`~hmnas_nni.format.latency_table.LatencyTable.check_fits`, the one rule, with or without a target): the
    space, its arguments and its input shape are the supernet's (a space that does not record its input shape is
    checked on its first batch); the batch, runtime and device are ``serving``'s, where the network will run, or,
    without ``serving``, the table's own, which the log states. A target below the smallest network is said at once."""
    from hmnas_nni.format.latency_table import SERVING, LatencyTable, LatencyTableError
    from hmnas_nni.spaces.registry import space_identity

    where = "latency table"
    if not isinstance(table, LatencyTable):
        where = f"latency table {table}"
        table = LatencyTable.load(table)
    if serving is not None and set(serving) != set(SERVING):
        raise TypeError(f"serving names where the network will run: exactly {list(SERVING)}, got {sorted(serving)}")
    name, args = space_identity(supernet)
    shape = getattr(supernet, "hmnas_input_shape", None)
    where_it_runs = dict(serving) if serving is not None else {k: getattr(table, k) for k in SERVING}
    table.check_fits(where, space=name, space_args=args, input_shape=list(shape or table.input_shape), **where_it_runs)
    if serving is None:
        _logger.info("%s: the search weighs entries by their latency at batch %d on %s (%s), as the table was "
                     "measured; pass latency_serving to check that this is where the network will run", where,
                     table.batch, table.device.get("name", table.device), table.runtime.get("provider", "?"))
    if shape is None:
        _check_first_batch(supernet, table, where, LatencyTableError)
    model = LatencyModel.of(supernet, hierarchy, table, where)
    if target_ms is not None:
        smallest = model.smallest_ms()
        if target_ms < smallest:
            _logger.warning("latency target %.4f ms is below the smallest network the masks can keep (%.4f ms "
                            "predicted); the search will shrink the network as far as it can and miss the target",
                            target_ms, smallest)
    return model


def _check_first_batch(supernet: nn.Module, table: Any, where: str, error: type[Exception]) -> None:
    """Refuse, on the supernet's first forward pass, inputs of another shape than the table was measured for."""
    def check(module: nn.Module, args: tuple[Any, ...]) -> None:
        handle.remove()
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if x is not None and list(x.shape[1:]) != list(table.input_shape):
            raise error(f"{where} was measured for input_shape {list(table.input_shape)}, but the space is searched "
                        f"on inputs of shape {list(x.shape[1:])}; measure a table at that shape (input_shape) with "
                        "hmnas_nni.export.latency.table_for_space (`hmnas latency`)")

    handle = supernet.register_forward_pre_hook(check)
