"""What a hardware-aware search adds around ``run_search``: its latency table measured before it starts, and after
it the derived network measured against the latency target and the ranked family written with the results.

``hmnas search --latency-target MS --family K`` runs a search with :class:`HardwareExtras`; from Python::

    run_search(SearchConfig(latency_target=2.0, family=4), extras=HardwareExtras())
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.nn as nn

from hmnas_nni.format.latency_table import LatencyTable
from hmnas_nni.nas.rebuild import derived_of

from .family import family
from .latency import Runtime, Timer, check_latency_target, latency_table_for, runtime_of, traced_supernet

_logger = logging.getLogger(__name__)


class HardwareExtras:
    """Latency work for :func:`hmnas_nni.search.run.run_search`: ONNX Runtime on this machine (``runtime``)."""

    def __init__(self, runtime: Runtime | None = None, repeats: int = 5) -> None:
        self.runtime = runtime or Runtime()
        self.repeats = repeats

    def latency_table(self, space: nn.Module, input_shape: list[int], path: Path) -> None:
        """Measure the table of ``space`` as an HM-NAS supernet into ``path`` (read back if it already matches)."""
        _logger.info("measuring the latency table of the space into %s (%s)", path, self.runtime.describe())
        supernet, strategy = traced_supernet(space, input_shape)
        latency_table_for(supernet, strategy.hierarchy, input_shape, path,
                          timer=Timer(self.runtime, repeats=self.repeats))

    def check(self, config: Any) -> None:
        """A given table must have been measured on this machine's runtime and device (with or without a target: a
        table of another device would weight the masks by another machine's costs)."""
        if config.latency_table is not None:
            runtime_of(LatencyTable.load(config.latency_table))

    def finish(self, result: Any, config: Any, inputs: Any, staging: Path) -> dict[str, Any]:
        """The target check (``latency`` in the final metrics) and the family (``family/`` and its summary)."""
        strategy = result.strategy
        supernet = strategy.supernet.cpu().eval()
        table = strategy.latency.table if strategy.latency is not None else None
        timer = Timer(runtime_of(table) if table is not None else self.runtime, repeats=self.repeats)
        final: dict[str, Any] = {}
        if table is not None:
            final["predicted_ms"] = strategy.latency.predicted_ms()
        if config.latency_target is not None:
            net = derived_of(supernet, result.architecture).eval()
            final["latency"] = check_latency_target(net, config.latency_target, table, final["predicted_ms"],
                                                    timer)
        if config.family is not None:
            shape = list(inputs.space.hmnas_input_shape)
            rows = family(supernet, strategy.hierarchy, config.family, table=table, input_shape=shape,
                          val_data=inputs.val, timer=timer, out=staging / "family")
            final["family"] = [{k: r[k] for k in ("rank", "val_acc", "predicted_ms", "measured_ms", "params",
                                                   "flops")} for r in rows]
            final["family_requested"] = config.family
        return final
