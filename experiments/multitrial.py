"""Multi-trial NAS with trained trials: AG-Net, NASES, PNAS or NNI's own strategies on an NNI model space.

Every trial freezes one sample of the space (NNI's ``space.freeze``) and measures the network with the plan's
evaluator: ``train`` trains it with ``hmnas retrain``'s recipe on one half of the training subset and measures
its accuracy on the other half (the search's validation half; the test set is never seen); ``maml`` meta-trains
it on few-shot episodes (:class:`~hmnas_nni.search.maml_evaluator.MAMLEvaluator`: meta-validation accuracy, and
meta-test accuracies with their intervals); ``classify`` trains it on the meta-train classes of the few-shot split
only (the ordinary search Auto-Meta compares with). Every trial adds its latency in ONNX Runtime on this machine
(batch 1) and its parameters, and reports the dict to NNI (``default`` is the accuracy strategies rank). The
strategy runs on NNI's sequential engine through :class:`~nni.nas.experiment.NasExperiment`.

Every trial is written at once, as its evaluator reported it, to ``OUT/trials.json``. A stopped run continues
with ``resume=True``: a seeded strategy proposes the same samples again, and a sample already trained is answered
from the record instead of being trained twice. At the end ``result.json`` (the best architecture, the Pareto
set), ``front.png`` and ``trials.json`` are committed together.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nni.nas.evaluator import Evaluator
from nni.nas.experiment import NasExperiment, NasExperimentConfig
from torch.utils.data import TensorDataset

from hmnas_nni.common.pareto import pareto_mask
from hmnas_nni.export.latency import Runtime, Timer
from hmnas_nni.export.retrain import RetrainSettings, train_network
from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.figures import png_bytes, pyplot
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.outputs import OutputFolder
from hmnas_nni.search.data import load_dataset, search_splits
from hmnas_nni.search.evaluation import accuracy, count_parameters
from hmnas_nni.search.maml_evaluator import FewShot, MAMLEvaluator, report_loss
from hmnas_nni.search.meta_data import MetaPools, load_meta_pools
from hmnas_nni.spaces import build_space, data_args, fit_input

_logger = logging.getLogger(__name__)

STRATEGY_NAMES = ("agnet", "agnet-pareto", "nases", "pnas", "random", "evolution", "tpe", "rl")
#: How a trial measures its network: ordinary training on the dataset; MAML on its few-shot episodes; ordinary
#: training on the meta-train classes of the few-shot split only (the non-meta search of the same data).
EVALUATORS = ("train", "maml", "classify")


@dataclass
class MultiTrialPlan:
    """One multi-trial search: the space, the data and how each trial trains, the strategy and its budget."""

    space: str = "nb201"
    space_args: dict[str, Any] | None = None
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    subset: int = 2000
    epochs: int = 2
    batch_size: int = 64
    strategy: str = "agnet"
    trials: int = 20
    seed: int = 0
    latency_cap: float | None = None
    evaluator: str = "train"
    few_shot: FewShot = field(default_factory=FewShot)  # the tasks of the maml and classify evaluators

    def check(self) -> MultiTrialPlan:
        """One-line errors for values that cannot run, before any work."""
        if self.strategy not in STRATEGY_NAMES:
            raise UsageError(f"strategy {self.strategy!r} is not one of {list(STRATEGY_NAMES)}")
        if self.evaluator not in EVALUATORS:
            raise UsageError(f"evaluator {self.evaluator!r} is not one of {list(EVALUATORS)}")
        if self.evaluator != "train":
            self.few_shot.check()
        for name in ("subset", "epochs", "batch_size", "trials"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.subset < 2 * self.batch_size:
            raise UsageError(f"subset {self.subset} leaves fewer than one batch ({self.batch_size}) per half; pass "
                             f"a subset of at least {2 * self.batch_size}")
        if self.latency_cap is not None and not (isinstance(self.latency_cap, (int, float)) and self.latency_cap > 0):
            raise UsageError(f"latency_cap must be a number of milliseconds > 0, got {self.latency_cap!r}")
        return self


def make_strategy(plan: MultiTrialPlan) -> Any:
    """The strategy of ``plan``, sized for a budget of tens of trials (NNI's defaults assume hundreds)."""
    from nni.nas.strategy import TPE, PolicyBasedRL, Random, RegularizedEvolution

    from hmnas_nni.strategy.agnet import AGNet
    from hmnas_nni.strategy.nases import NASES
    from hmnas_nni.strategy.pnas import PNAS

    initial = max(4, plan.trials // 4)
    per_round = max(2, plan.trials // 8)
    if plan.strategy.startswith("agnet"):
        objective = "pareto" if plan.strategy == "agnet-pareto" else "accuracy"
        return AGNet(seed=plan.seed, initial_queries=initial, queries_per_round=per_round, objective=objective,
                     latency_cap=plan.latency_cap, max_queries=plan.trials)
    if plan.strategy == "nases":
        return NASES(seed=plan.seed, batch_size=per_round, latency_cap=plan.latency_cap, max_queries=plan.trials)
    if plan.strategy == "pnas":
        return PNAS(seed=plan.seed, initial_queries=initial, queries_per_round=per_round, beam=per_round,
                    max_queries=plan.trials)
    if plan.strategy == "evolution":
        return RegularizedEvolution(population_size=initial, sample_size=max(2, initial // 2), seed=plan.seed)
    if plan.strategy == "tpe":
        return TPE(optimize_mode="maximize", seed=plan.seed)
    if plan.strategy == "rl":
        torch.manual_seed(plan.seed)  # NNI's PolicyBasedRL (PPO) draws from torch's global generator
        return PolicyBasedRL(samples_per_update=per_round)
    return Random(seed=plan.seed)


class TrialRecord:
    """Every trained trial in order, rewritten atomically to ``path`` after each; answers repeated samples."""

    def __init__(self, path: Path, previous: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.trials: list[dict[str, Any]] = []
        self._cached = {_key(t["sample"]): t for t in previous or []}

    def cached(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        """The metrics an earlier, stopped run measured for ``sample`` (None if it did not)."""
        trial = self._cached.get(_key(sample))
        return None if trial is None else trial["metrics"]

    def add(self, sample: dict[str, Any], metrics: dict[str, Any], seconds: float, reused: bool) -> None:
        self.trials.append({"trial": len(self.trials), "sample": sample, "metrics": metrics,
                            "train_seconds": seconds, "reused": reused})
        write_json(self.path, self.trials)


def _key(sample: dict[str, Any]) -> str:
    return json.dumps(sample, sort_keys=True, default=str)


class TrainedTrialEvaluator(Evaluator):
    """An NNI evaluator that trains the frozen network of each sample and reports accuracy, latency and params."""

    def __init__(self, plan: MultiTrialPlan, data: tuple[Any, Any], record: TrialRecord,
                 log: Callable[[str], None]) -> None:
        self.plan, self.data, self.record, self.log = plan, data, record, log
        self.timer = Timer(Runtime(exporter="torchscript"), repeats=3)

    def evaluate(self, model: Any) -> Any:
        raise UsageError("TrainedTrialEvaluator evaluates samples of a space through NNI's engine")

    def _execute(self, model: Any) -> dict[str, float]:
        """Train (or read back) the network of ``model.sample``; report its metric dict to NNI."""
        import nni

        sample = dict(model.sample)
        metrics, started, reused = self.record.cached(sample), time.perf_counter(), True
        if metrics is None:
            metrics, reused = self._train(model.executable_model()), False
        seconds = time.perf_counter() - started
        self.record.add(sample, metrics, seconds, reused)
        self.log(f"trial {len(self.record.trials)}/{self.plan.trials}: accuracy {metrics['accuracy']:.4f}, "
                 f"latency {metrics['latency']:.3f} ms, {metrics['params']:,} params"
                 f"{' (from the earlier run)' if reused else f' ({seconds:.0f} s)'}")
        nni.report_final_result(metrics)
        return metrics

    def _train(self, net: torch.nn.Module) -> dict[str, float]:
        return train_and_measure(net, self.data, self.plan, self.timer)


def train_and_measure(net: torch.nn.Module, data: Any, plan: MultiTrialPlan,
                      timer: Timer | None = None) -> dict[str, float]:
    """The plan's evaluator on one network, with its latency (ONNX Runtime, batch 1) and parameters: the metric
    dict a trial reports."""
    if plan.evaluator == "maml":
        metrics, shape = data.measure(net, progress=report_loss), (1, *data.pools.image_shape)
    else:
        metrics, shape = train_and_validate(net, data, plan), (1, *data[1].tensors[0].shape[1:])
    net.eval()
    timer = timer or Timer(Runtime(exporter="torchscript"), repeats=3)
    return {**metrics, "latency": timer.raw_ms(net, shape, "trial network"), "params": count_parameters(net)}


def train_and_validate(net: torch.nn.Module, data: tuple[Any, Any], plan: MultiTrialPlan) -> dict[str, float]:
    """The retrain recipe on the training half; accuracy on the validation half."""
    train, val = data
    settings = RetrainSettings(epochs=plan.epochs, batch_size=plan.batch_size, seed=plan.seed)
    torch.manual_seed(plan.seed)
    train_network(net, train, settings.check(), torch.device("cpu"), progress=False)
    net.eval()
    acc = accuracy(net, val)
    return {"default": acc, "accuracy": acc}


def plan_inputs(plan: MultiTrialPlan) -> tuple[torch.nn.Module, Any]:
    """The space of ``plan`` sized for its data, and the data its evaluator reads: the (train, validation) halves
    of the subset, or the MAML evaluator of the few-shot pools (maml), or the meta-train classes split 80/20
    (classify). Pools too small for the plan's episodes are refused here, before any trial."""
    if plan.evaluator == "train":
        train, _, info = load_dataset(plan.dataset, root=plan.data_root)
        data = search_splits(train, plan.subset, plan.seed)
        shape, classes = (info.in_channels, info.input_size, info.input_size), info.num_classes
    else:
        pools = load_meta_pools(plan.dataset, plan.data_root, plan.few_shot.images_per_class, plan.seed)
        data = (MAMLEvaluator(plan.dataset, plan.few_shot, plan.seed, plan.data_root, pools)
                if plan.evaluator == "maml" else _classes_split(pools))
        shape = pools.image_shape
        classes = plan.few_shot.ways if plan.evaluator == "maml" else len(pools.train.classes)
    given = dict(plan.space_args or {})
    args = data_args(plan.space, given, {"in_channels": shape[0], "input_size": shape[1], "num_classes": classes},
                     plan.dataset)
    return fit_input(build_space(plan.space, **args), shape), data


def _classes_split(pools: MetaPools) -> tuple[TensorDataset, TensorDataset]:
    """The meta-train classes as ordinary labelled data: 80% of each class's images to train, 20% to validate."""
    first, second = pools.train.split_images(0.8, seed=0)
    return TensorDataset(*first.labelled()), TensorDataset(*second.labelled())


def nni_search_space(space: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """The choices of ``space`` as an NNI search-space file (``{label: {"_type": "choice", "_value": [...]}}``), for
    a tuner under ``nnictl``; every choice must be categorical."""
    from nni.mutable import Categorical

    out = {}
    for label, mutable in space.simplify().items():
        if not isinstance(mutable, Categorical):
            raise UsageError(f"choice {label!r} is a {type(mutable).__name__}: not supported in an NNI search-space "
                             "file (categorical choices only)")
        out[label] = {"_type": "choice", "_value": list(mutable.values)}
    return out


def run_multitrial(plan: MultiTrialPlan, out: str | Path, force: bool = False, resume: bool = False,
                   command: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search with trained trials; returns the summary written to ``out/result.json``."""
    plan.check()
    space, data = plan_inputs(plan)
    with OutputFolder(out, "hmnas multitrial", force=force, resume=resume) as folder:
        folder.clear_previous(writes=("trials.json",))
        record = TrialRecord(folder.path / "trials.json", _previous(folder.path) if resume else None)
        log(f"multitrial: {plan.strategy} on {plan.space} ({describe_trials(plan)}), {plan.trials} trials -> "
            f"{folder.path}")
        experiment = NasExperiment(space, TrainedTrialEvaluator(plan, data, record, log), make_strategy(plan),
                                   NasExperimentConfig("sequential", "raw"))
        experiment.config.max_trial_number = plan.trials
        experiment.config.experiment_working_directory = str((folder.path / "nni").resolve())
        folder.owns("nni")
        try:
            experiment.run()
        finally:
            experiment.stop()
        summary = summarise(record.trials, plan, command)
        write_json(folder.staged("result.json"), summary)
        write_atomic(folder.staged("front.png"), plot_front(record.trials, plan))
        folder.commit("result.json")
    return summary


def describe_trials(plan: MultiTrialPlan) -> str:
    """What each trial of ``plan`` does, in a few words."""
    f = plan.few_shot
    if plan.evaluator == "maml":
        return (f"{plan.dataset}, MAML {f.setting}, {f.maml.iterations} meta-updates of {f.maml.meta_batch} "
                f"episodes a trial")
    if plan.evaluator == "classify":
        return f"{plan.dataset} meta-train classes, {plan.epochs} epochs a trial"
    return f"{plan.dataset}, {plan.subset} images, {plan.epochs} epochs a trial"


def _previous(folder: Path) -> list[dict[str, Any]]:
    """The trials a stopped run recorded in ``folder`` ([] if none)."""
    try:
        trials = json.loads((folder / "trials.json").read_text())
    except (OSError, ValueError):
        return []
    return trials if isinstance(trials, list) else []


def summarise(trials: list[dict[str, Any]], plan: MultiTrialPlan, command: str) -> dict[str, Any]:
    """The best trial by accuracy (under the cap, if any), the Pareto set of (accuracy, latency), the plan."""
    if not trials:
        raise UsageError("no trial finished; see the log above")
    acc = np.array([t["metrics"]["accuracy"] for t in trials])
    lat = np.array([t["metrics"]["latency"] for t in trials])
    allowed = lat <= plan.latency_cap if plan.latency_cap is not None else np.ones(len(trials), dtype=bool)
    best = int(np.flatnonzero(allowed)[np.argmax(acc[allowed])]) if allowed.any() else int(np.argmin(lat))
    front = [int(i) for i in np.flatnonzero(pareto_mask(acc, lat))]
    return {"plan": asdict(plan), "command": command, "trials": len(trials), "best": trials[best],
            "pareto": [trials[i] for i in front],
            "best_accuracy_after": [float(np.max(acc[:k + 1])) for k in range(len(trials))]}


def plot_front(trials: list[dict[str, Any]], plan: MultiTrialPlan) -> bytes:
    """Accuracy against measured latency of every trial, the Pareto set joined."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    acc = np.array([t["metrics"]["accuracy"] for t in trials])
    lat = np.array([t["metrics"]["latency"] for t in trials])
    ax.scatter(lat, 100 * acc, s=14, c=np.arange(len(trials)), cmap="viridis", label="trials (colour: order)")
    front = np.flatnonzero(pareto_mask(acc, lat))
    front = front[np.argsort(lat[front])]
    ax.plot(lat[front], 100 * acc[front], "r-o", ms=4, lw=1, label="Pareto set")
    if plan.latency_cap is not None:
        ax.axvline(plan.latency_cap, color="grey", ls="--", lw=1, label="latency cap")
    ax.set_xlabel("latency (ms, ONNX Runtime, batch 1)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{plan.strategy} on {plan.space}, {plan.dataset}, seed {plan.seed}", fontsize=9)
    ax.legend(fontsize=7)
    return png_bytes(fig)
