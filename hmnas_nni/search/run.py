"""One search, start to finish: data -> space -> NNI evaluator + strategy -> NasExperiment -> outputs.

``run_search(SearchConfig(...))`` is what ``hmnas search``, the NNI trial and ``hmnas compare`` all call;
it returns a :class:`SearchResult` (the trained strategy, the derived architecture, the history and the final
metrics). It claims ``config.out`` (see :mod:`hmnas_nni.format.outputs`) once its inputs are checked and
writes there:

- ``checkpoints/last.ckpt`` after every epoch (``--resume`` continues from it; ``interrupted.ckpt`` on
  SIGTERM/SIGINT) and ``metrics.json`` with ``"status": "running"``, rewritten after every epoch;
- at the end, together: ``arch.json`` (the derived architecture), ``supernet.safetensors`` (the supernet's
  weights, from which the derived network inherits), ``cells.png`` and the final ``metrics.json``;
- ``manifest.json`` (the committed set and how the last run ended), ``ranks/rank{r}.json`` (DDP only).

See ``docs/reliability.md`` for faults, resume, DDP and remote trials.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pytorch_lightning as pl
import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.format.budget import parse_budget
from hmnas_nni.format.errors import UsageError, interruption_in
from hmnas_nni.format.files import write_atomic
from hmnas_nni.format.outputs import OutputFolder
from hmnas_nni.format.progress import on_terminal
from hmnas_nni.format.weights import SUPERNET_FORMAT
from hmnas_nni.nas.budget import BudgetClock
from hmnas_nni.nas.rebuild import network_weights

from .budget import BudgetStop
from .config import SearchConfig
from .inputs import SearchInputs, search_inputs
from .monitor import SearchMonitor, write_metrics
from .reliability import EpochSampler, GracefulStop, SearchState
from .resume import EpochCheckpoint, InFolderCheckpointIO, check_resumable
from .strategies import make_strategy

_logger = logging.getLogger(__name__)
CallbackT = TypeVar("CallbackT", bound=pl.Callback)


@dataclass
class SearchResult:
    """What a search returns: the trained NNI strategy (``.supernet``), its architecture, history and final metrics."""

    strategy: Any
    architecture: Architecture
    history: list[dict[str, Any]]
    final: dict[str, Any]


class SearchExtras(Protocol):
    """What the layers above add to a search without it importing them (the export layer's latency work)."""

    def latency_table(self, space: torch.nn.Module, input_shape: list[int], path: Path) -> None:
        """Measure the latency table of ``space`` (not yet a supernet) for inputs of ``input_shape`` into ``path``."""

    def check(self, config: SearchConfig) -> None:
        """Refuse, before any training, what :meth:`finish` could not do (a table whose runtime is not here)."""

    def finish(self, result: SearchResult, config: SearchConfig, inputs: SearchInputs,
               staging: Path) -> dict[str, Any]:
        """Write more results into ``staging`` (committed with the rest); metrics to add to the final ones."""


@dataclass
class _Run:
    """The pieces of one search that its failure handler and its end need."""

    config: SearchConfig
    inputs: SearchInputs
    extras: SearchExtras | None
    monitor: SearchMonitor
    checkpoint: EpochCheckpoint
    stopper: GracefulStop
    strategy: Any
    experiment: NasExperiment
    clock: BudgetClock | None = None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def is_global_zero() -> bool:
    """True outside DDP and on rank 0 of a DDP run (Lightning's launcher sets RANK / LOCAL_RANK for the others)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


#: What a search writes in its folder while it runs (checkpoints, logs, NNI's records, the status of a stopped run).
IN_PLACE = ("checkpoints", "logs", "nni", "ranks", "metrics.json", "latency_table.json")


def run_search(config: SearchConfig, on_epoch_end: Callable[[dict], None] | None = None,
               extras: SearchExtras | None = None) -> SearchResult:
    """Run one search as configured; return its result (the final metrics are also in ``out/metrics.json``).

    ``extras`` (``hmnas_nni.export.hardware.HardwareExtras()`` for a latency target without a table, or a family)
    measures the latency table first and writes the family and the target check with the results.
    With ``config.resume`` the search continues from that folder's ``checkpoints/last.ckpt`` (checked
    against this config before any data is loaded). A :class:`NumericalFault` or a SIGTERM/SIGINT
    (:class:`SearchInterrupted`) propagates after ``metrics.json`` records it; the checkpoints stay.
    Under ``distributed="ddp"`` every rank runs this function; only rank 0 claims the folder and writes results.
    """
    started = time.perf_counter()  # a budget counts from here: loading data and starting NNI spend it too
    config.validate()
    if extras is None and _needs_extras(config):
        raise UsageError("--latency-target and --family need latency measurements: run them through `hmnas search`, "
                         "or pass extras=hmnas_nni.export.hardware.HardwareExtras() to run_search")
    resume_from, saved_epoch = None, None
    if config.resume is not None:
        resume_from, _saved, done = check_resumable(asdict(config), config.resume)
        saved_epoch = done - 1
        _logger.info("resuming from %s after %d finished epoch(s)", resume_from, done)
    if extras is not None and (_needs_extras(config) or config.latency_table is not None):
        extras.check(config)
    seed_everything(config.seed)
    inputs = search_inputs(config)
    with _claim(config) as folder:
        if folder is not None:
            folder.clear_previous(writes=IN_PLACE)
            _measure_latency_table(config, inputs, extras)
        clock = BudgetClock(parse_budget(config.budget), started) if config.budget is not None else None
        run = _prepare(config, inputs, extras, on_epoch_end, resume_from, saved_epoch, clock)
        try:
            seconds = _fit(run)
            return _finish(run, folder, seconds)
        except BaseException as e:  # record why the run stopped beside the epochs it finished, then re-raise
            stop = _stop_cause(run, e)
            _record_stop(run, stop)
            if stop is e:
                raise
            raise stop from e


def _claim(config: SearchConfig) -> contextlib.AbstractContextManager[OutputFolder | None]:
    """Rank 0 claims ``config.out``; other DDP ranks write only their own ``ranks/`` file."""
    if not is_global_zero():
        return contextlib.nullcontext()
    same = config.resume is not None and Path(config.resume).resolve() == Path(config.out).resolve()
    return OutputFolder(config.out, "hmnas search", force=config.force, resume=same)


def _needs_extras(config: SearchConfig) -> bool:
    """Whether the config asks for work only the export layer does (measuring latency)."""
    return config.family is not None or config.latency_target is not None


def _measure_latency_table(config: SearchConfig, inputs: SearchInputs, extras: SearchExtras | None) -> None:
    """A latency target without a table: measure one for this space into ``out/latency_table.json`` (kept there, so
    ``--resume`` and later searches read it back)."""
    if config.latency_target is None or config.latency_table is not None:
        return
    if config.distributed == "ddp":
        raise UsageError("--latency-target under --distributed ddp needs a table measured first: run `hmnas latency "
                         "--space SPACE --out FILE` and pass --latency-table FILE")
    path = Path(config.out) / "latency_table.json"
    extras.latency_table(copy.deepcopy(inputs.space), list(inputs.space.hmnas_input_shape), path)
    config.latency_table = str(path)


def _prepare(config: SearchConfig, inputs: SearchInputs, extras: SearchExtras | None,
             on_epoch_end: Callable[[dict], None] | None, resume_from: Path | None, saved_epoch: int | None,
             clock: BudgetClock | None = None) -> _Run:
    """Evaluator, callbacks, strategy and NasExperiment of one search."""
    out = Path(config.out)
    monitor = SearchMonitor(config, inputs.space, inputs.val, on_epoch_end)
    samplers = [EpochSampler(len(inputs.train), config.seed, 0), EpochSampler(len(inputs.val), config.seed, 1)]
    stopper = GracefulStop(out / "checkpoints")
    checkpoint = EpochCheckpoint(out / "checkpoints", saved_epoch=saved_epoch)
    callbacks = [SearchState(asdict(config), samplers), monitor, checkpoint, stopper]
    if clock is not None:
        callbacks.append(BudgetStop(clock))  # last: its epoch-end check follows the monitor's and checkpoint's work
    evaluator = _evaluator(config, inputs, samplers, callbacks)
    if resume_from is not None:
        # what NNI's OneShotStrategy.load_state_dict({"ckpt_path": ...}) does, set before the run starts
        evaluator.fit_kwargs.update(ckpt_path=str(resume_from), weights_only=True)
    strategy = make_strategy(config)
    if clock is not None and hasattr(strategy, "use_budget"):
        strategy.use_budget(clock)  # a budget-aware strategy plans on the same clock
    experiment = NasExperiment(inputs.space, evaluator, strategy)
    rank_dir = "nni" if is_global_zero() else f"nni-rank{os.environ.get('RANK', os.environ.get('LOCAL_RANK'))}"
    experiment.config.experiment_working_directory = str((out / rank_dir).resolve())
    return _Run(config, inputs, extras, monitor, checkpoint, stopper, strategy, experiment, clock)


def _evaluator(config: SearchConfig, inputs: SearchInputs, samplers: list[EpochSampler],
               callbacks: list[pl.Callback]) -> Classification:
    """NNI's Classification evaluator over the two halves, checkpointing in-folder after every epoch."""
    out = Path(config.out)
    distributed: dict[str, Any] = {}
    if config.distributed == "ddp":
        # masked-out ops take no part in a step: DDP must look for unused parameters
        distributed = {"strategy": "ddp_find_unused_parameters_true", "use_distributed_sampler": True}

    def loader(data: Any, sampler: EpochSampler) -> DataLoader:
        return DataLoader(data, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                          num_workers=config.num_workers)

    return Classification(
        train_dataloaders=loader(inputs.train, samplers[0]), val_dataloaders=loader(inputs.val, samplers[1]),
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, num_classes=inputs.info.num_classes,
        max_epochs=config.search_epochs(), accelerator=config.accelerator, devices=config.devices, callbacks=callbacks,
        plugins=[InFolderCheckpointIO()], logger=pl.loggers.CSVLogger(out, name="logs"),
        enable_progress_bar=config.progress and on_terminal(), enable_model_summary=False, default_root_dir=out,
        **distributed,
    )


def _fit(run: _Run) -> float:
    """Run the NasExperiment; seconds it took."""
    started = time.perf_counter()
    try:
        run.experiment.run()
    finally:
        try:
            run.experiment.stop()  # now, not at interpreter exit (when test runners have closed the log streams)
        except Exception as e:  # noqa: BLE001 - stopping must never hide why the run ended
            _logger.warning("could not stop the NNI experiment cleanly: %s", e)
    return time.perf_counter() - started


def _stop_cause(run: _Run, error: BaseException) -> BaseException:
    """``error`` as the stop it was when a signal asked for one (see :meth:`GracefulStop.interruption`)."""
    return (_find_callback(run.strategy, GracefulStop) or run.stopper).interruption(error)


def _record_stop(run: _Run, stop: BaseException) -> None:
    """Write the failed / interrupted status into ``metrics.json``; a failure to write it is only logged."""
    monitor = _find_callback(run.strategy, SearchMonitor) or run.monitor
    if monitor.global_rank != 0:
        return
    checkpoint = _find_callback(run.strategy, EpochCheckpoint) or run.checkpoint
    saved = checkpoint.saved_epoch if checkpoint.saved_epoch is not None else -1
    history = [h for h in monitor.history if h["epoch"] <= saved]  # the epochs --resume does not run again
    stopped = interruption_in(stop) is not None
    try:
        write_metrics(Path(run.config.out), run.config, run.inputs.space, history,
                      status="interrupted" if stopped else "failed", error=f"{type(stop).__name__}: {stop}")
    except OSError as e:
        _logger.warning("could not record the search's status in metrics.json: %s", e)


def _finish(run: _Run, folder: OutputFolder | None, seconds: float) -> SearchResult:
    """Final metrics; on rank 0 the result set (arch, supernet, cells, metrics) is staged and committed together."""
    monitor = _find_callback(run.strategy, SearchMonitor) or run.monitor
    if not monitor.history or monitor.last_arch is None:
        raise RuntimeError("the search finished without completing an epoch; see the log above")
    history = monitor.history
    final = {**history[-1], "search_seconds": seconds,
             "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in history])),
             "peak_memory_mb": max(h["peak_memory_mb"] for h in history)}
    if monitor.world_size > 1:
        final.update(global_rank=monitor.global_rank, world_size=monitor.world_size)
    hierarchy = getattr(run.strategy, "hierarchy", None)
    if hierarchy is not None and hasattr(hierarchy, "removed"):
        final["removed_by_rules"] = hierarchy.removed()  # entries whose own score kept them, with the rule
    result = SearchResult(run.strategy, monitor.last_arch, history, final)
    if folder is None or monitor.global_rank != 0:
        return result
    write_atomic(folder.staged("arch.json"), result.architecture.to_json() + "\n")
    _save_supernet(run.strategy.supernet, folder.staged("supernet.safetensors"))
    _draw(result.architecture, folder.staged("cells.png"), run.inputs.space)
    if run.extras is not None and _needs_extras(run.config):
        final.update(run.extras.finish(result, run.config, run.inputs, folder.staging))
    final.update(_spent(run))
    write_metrics(folder.staging, run.config, run.inputs.space, history, status="finished", final=final)
    folder.commit("metrics.json")
    return result


def _spent(run: _Run) -> dict[str, Any]:
    """What a budgeted search spent (up to the last write but the metrics) and a budget-aware strategy's plan."""
    own = run.strategy.budget_record() if hasattr(run.strategy, "budget_record") else {}
    budget = _find_callback(run.strategy, BudgetStop)
    clock = budget.clock if budget is not None else run.clock
    if clock is None:
        return own
    spent = clock.record()
    spent["stopped_by_budget"] = spent["stopped_by_budget"] or bool(own.get("stopped_by_budget"))
    return {**own, **spent}


def _draw(arch: Architecture, path: Path, space: torch.nn.Module) -> None:
    """``cells.png``; a drawing never costs the search its results."""
    try:
        from hmnas_nni.spaces.catalogue import catalogue

        from .plot import plot_architecture

        plot_architecture(arch, path, catalogue(space))
    except Exception as e:  # noqa: BLE001
        _logger.warning("could not draw the cells: %s", e)


def _find_callback(strategy: Any, kind: type[CallbackT]) -> CallbackT | None:
    """The ``kind`` callback instance the trainer actually ran (NNI may have copied the evaluator); None if none ran."""
    try:
        module = strategy.oneshot_module
    except Exception:  # noqa: BLE001 - NNI raises when the strategy never started
        return None
    trainer = getattr(module, "_trainer", None) or getattr(module, "trainer", None)
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, kind):
            return cb
    return None


def _save_supernet(supernet: torch.nn.Module, path: Path) -> None:
    """The supernet body's weights and BN statistics (architecture parameters live in the checkpoint)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in network_weights(supernet).items()}
    write_atomic(path, save(state, metadata={"format": SUPERNET_FORMAT}))

