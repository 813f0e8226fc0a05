"""The one registry of search strategies: name -> factory of the NNI strategy object, shared by every entry point.

``hmnas search --strategy``, the NNI trial, ``hmnas compare`` and the Python API example all build their
strategy with :func:`make_strategy`, from the knobs of a search config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class StrategyKnobs(Protocol):
    """The config fields a strategy is built from (:class:`~hmnas_nni.search.config.SearchConfig` has them all)."""

    strategy: str
    arc_lr: float
    mask_lr: float
    tau: float
    mask_init: float
    sparsity: float
    settle_epochs: int
    latency_table: str | None
    latency_target: float | None
    latency_weight: float
    memory_buffer: int | None
    budget: str | None
    seed: int

    def schedule(self) -> tuple[int, int]: ...


def _hmnas(knobs: StrategyKnobs) -> Any:
    from hmnas_nni.nas.strategy import HMNAS

    warmup, arch = knobs.schedule()
    return HMNAS(arc_learning_rate=knobs.arc_lr, mask_learning_rate=knobs.mask_lr, warmup_epochs=warmup,
                 arch_epochs=arch, tau=knobs.tau, mask_init=knobs.mask_init, sparsity=knobs.sparsity,
                 settle_epochs=knobs.settle_epochs, latency_table=knobs.latency_table,
                 latency_target_ms=knobs.latency_target, latency_weight=knobs.latency_weight)


def _nni(name: str) -> Callable[[StrategyKnobs], Any]:
    """A factory of NNI's differentiable strategy ``name`` with the shared learning rate and warm-up."""

    def build(knobs: StrategyKnobs) -> Any:
        from nni.nas.oneshot.pytorch import strategy

        return getattr(strategy, name)(arc_learning_rate=knobs.arc_lr, warmup_epochs=knobs.schedule()[0])

    return build


def _require_enas() -> None:
    """Refuse in one line when NNI's ENAS controller cannot run here (its packages are not installed)."""
    from hmnas_nni.format.errors import UsageError

    from .nni_enas import enas_missing

    missing = enas_missing()
    if missing:
        raise UsageError(missing)


def _enas(knobs: StrategyKnobs) -> Any:
    from .nni_enas import LightningENAS

    _require_enas()
    return LightningENAS(warmup_epochs=knobs.schedule()[0], reward_metric_name="val_acc")


#: Architectures the memory of ``enas-memory`` holds when the config does not say.
MEMORY_BUFFER = 64


def _enas_memory(knobs: StrategyKnobs) -> Any:
    """ENAS whose controller is also trained on a memory of past architectures (``hmnas_nni.search.enas_memory``)."""
    from .enas_memory import MemoryENAS

    _require_enas()

    size = knobs.memory_buffer if knobs.memory_buffer is not None else MEMORY_BUFFER
    return MemoryENAS(memory_buffer=size, warmup_epochs=knobs.schedule()[0], reward_metric_name="val_acc")


def _nasib(knobs: StrategyKnobs) -> Any:
    """NASIB: HM-NAS's knobs, its schedule planned from ``--budget`` (which the config requires for it)."""
    from hmnas_nni.nas.nasib import NASIB

    return NASIB(budget=knobs.budget, arc_learning_rate=knobs.arc_lr, mask_learning_rate=knobs.mask_lr,
                 tau=knobs.tau, mask_init=knobs.mask_init, sparsity=knobs.sparsity)


def _random(knobs: StrategyKnobs) -> Any:
    """NNI's RandomOneShot (it has no warm-up), its paths and export drawn from the config's seed."""
    from .nni_random import SeededRandomOneShot

    return SeededRandomOneShot(seed=knobs.seed)


#: Strategy name -> factory taking the search config.
REGISTRY: dict[str, Callable[[StrategyKnobs], Any]] = {
    "hmnas": _hmnas,
    "darts": _nni("DARTS"),
    "gumbel-darts": _nni("GumbelDARTS"),
    "enas": _enas,
    "enas-memory": _enas_memory,
    "random-oneshot": _random,
    "proxyless": _nni("Proxyless"),
    "nasib": _nasib,
}
STRATEGIES: tuple[str, ...] = tuple(REGISTRY)


def make_strategy(knobs: StrategyKnobs) -> Any:
    """The NNI strategy object named by ``knobs.strategy``, with the config's shared knobs."""
    return REGISTRY[knobs.strategy](knobs)
