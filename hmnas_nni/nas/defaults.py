"""HM-NAS's default hyper-parameters: the one set that the strategy, its Lightning module, the search config
and the docs all read (docs/method.md explains each choice)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HMNASDefaults:
    """Defaults of :class:`~hmnas_nni.nas.strategy.HMNAS` and :class:`~hmnas_nni.nas.lightning.HMNASLightningModule`."""

    arc_learning_rate: float = 3e-3  # Adam lr of alpha/beta (and edge gates)
    mask_learning_rate: float = 5e-4  # Adam lr of the mask scores
    warmup_epochs: int = 1  # weights only
    arch_epochs: int = 1  # alpha/beta steps before masking starts
    tau: float = 5e-3  # mask threshold: m = 1[s >= tau]
    mask_init: float = 1e-2  # initial mask score (above tau: everything starts switched on)
    sparsity: float = 1e-2  # lambda of the sparsity term lambda * mean |s|
    settle_epochs: int = 1  # last masking epochs with the masks fixed (BatchNorm settles on the exported net)
    latency_weight: float = 0.02  # weight of the latency-target term: 1 collapsed the cells (docs/hardware.md)


DEFAULTS = HMNASDefaults()
