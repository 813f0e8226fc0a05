"""An NNI evaluator that meta-trains a network of any NNI model space with MAML and reports few-shot accuracy.

Each trial meta-trains the frozen network on meta-train episodes, reports the meta-training loss as intermediate
results (NNI's web UI draws them), and reports as its final metric the meta-validation accuracy (``default``,
what strategies rank) beside the meta-test accuracy and its 95% confidence interval on every test pool (Fashion-MNIST
classes never met in meta-training, digits). Meta-validation and meta-test episodes are fixed lists (their own
seeds), so every architecture meets the same tasks; the test pools never steer a search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from nni.nas.evaluator import Evaluator
from torch import nn

from hmnas_nni.common.episodes import EpisodeSampler
from hmnas_nni.common.maml import MAMLSettings, meta_test, meta_train
from hmnas_nni.format.errors import UsageError

from .meta_data import MetaPools, load_meta_pools

#: Seeds of the fixed meta-validation and meta-test episode lists (meta-training draws from the trial's seed).
VAL_SEED, TEST_SEED = 10_001, 20_002


@dataclass
class FewShot:
    """The tasks: N-way K-shot with ``queries`` query images per class; how many episodes validate and test."""

    ways: int = 5
    shots: int = 5
    queries: int = 15
    val_episodes: int = 100
    test_episodes: int = 600  # 0: no meta-test in the trial (a search needs only meta-validation)
    images_per_class: int = 500  # images drawn from each original class of the data
    maml: MAMLSettings = field(default_factory=MAMLSettings)

    def check(self) -> FewShot:
        """One-line errors for values that cannot run."""
        for name in ("ways", "shots", "queries", "val_episodes", "images_per_class"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"few-shot {name} must be a positive integer, got {value!r}")
        if self.ways < 2 or self.val_episodes < 2:
            raise UsageError("few-shot tasks need ways >= 2 and val_episodes >= 2 (a confidence interval)")
        if self.test_episodes != 0 and self.test_episodes < 2:
            raise UsageError(f"test_episodes must be 0 (no meta-test) or at least 2, got {self.test_episodes}")
        self.maml.check()
        return self

    @property
    def setting(self) -> str:
        """"5-way 5-shot"."""
        return f"{self.ways}-way {self.shots}-shot"


class MAMLEvaluator(Evaluator):
    """Meta-train with MAML, then meta-validate and meta-test (module docstring).

    ``dataset`` ("fashion-mnist" or an image folder) gives the class pools (``few_shot.images_per_class`` images of
    each class, drawn with ``seed``), unless ``pools`` are given already loaded; ``seed`` also draws the
    meta-training episodes (the network's weights are drawn where it is built). The evaluator is serialised as
    these arguments, so NNI's training-service engine can send it to trial processes.
    """

    def __init__(self, dataset: str = "fashion-mnist", few_shot: FewShot | None = None, seed: int = 0,
                 data_root: str | None = None, pools: MetaPools | None = None) -> None:
        self.dataset, self.data_root = dataset, data_root
        self.few_shot, self.seed = (few_shot or FewShot()).check(), int(seed)
        self.pools = pools or load_meta_pools(dataset, data_root, self.few_shot.images_per_class, self.seed)
        for pool in (self.pools.train, self.pools.val, self.pools.test, *self.pools.cross.values()):
            self.sampler(pool, seed)  # too few classes or images is reported before any trial

    def __repr__(self) -> str:
        return f"MAMLEvaluator({self.dataset!r}, {self.few_shot.setting}, seed={self.seed})"

    def _dump(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "few_shot": asdict(self.few_shot), "seed": self.seed,
                "data_root": self.data_root}

    @staticmethod
    def _load(**ir: Any) -> MAMLEvaluator:
        few_shot = dict(ir["few_shot"])
        few_shot["maml"] = MAMLSettings(**few_shot["maml"])
        return MAMLEvaluator(ir["dataset"], FewShot(**few_shot), ir["seed"], ir.get("data_root"))

    def sampler(self, pool: Any, seed: int) -> EpisodeSampler:
        """Episodes of this evaluator's setting from ``pool``."""
        f = self.few_shot
        return EpisodeSampler(pool, f.ways, f.shots, f.queries, seed)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Meta-train, meta-validate and meta-test ``model``; report the metric dict to NNI and return it."""
        import nni

        metrics = self.measure(model, progress=report_loss)
        nni.report_final_result(metrics)
        return metrics

    def measure(self, model: nn.Module, progress: Callable[[int, float], None] | None = None) -> dict[str, float]:
        """The metric dict: meta-validation accuracy (``default``), meta-test accuracies with their 95% intervals,
        parameters and meta-training seconds."""
        f = self.few_shot
        started = time.perf_counter()
        meta_train(model, self.sampler(self.pools.train, self.seed), f.maml, progress=progress)
        seconds = time.perf_counter() - started
        val, val_ci = meta_test(model, self.sampler(self.pools.val, VAL_SEED).episodes(f.val_episodes), f.maml)
        metrics = {"default": val, "accuracy": val, "val_ci95": val_ci,
                   "params": sum(p.numel() for p in model.parameters()), "meta_train_seconds": seconds}
        if f.test_episodes:
            for name, pool in {"test": self.pools.test, **self.pools.cross}.items():
                acc, ci = meta_test(model, self.sampler(pool, TEST_SEED).episodes(f.test_episodes), f.maml)
                metrics[f"{name}_accuracy"], metrics[f"{name}_ci95"] = acc, ci
        return metrics


def report_loss(iteration: int, loss: float, every: int = 25) -> None:
    """Every ``every`` meta-updates, the meta-training loss as an NNI intermediate result (the web UI's curve)."""
    import nni

    if (iteration + 1) % every == 0:
        nni.report_intermediate_result({"default": loss, "meta_train_loss": loss})
