"""The round strategies as NNI tuners, for ``nnictl create`` (``experiments/agnet.yml``, ``nases.yml``,
``autometa.yml``): the same rounds as the strategy, asked for one sample at a time by NNI's dispatcher, told each
trial's metric dict, with the trials in NNI's web UI.

A round's picks are made when the previous ones have been handed out: with ``trialConcurrency: 1`` every earlier
query has its result by then; with more, the picks are made from the results that are in.
"""

from __future__ import annotations

import contextlib
from typing import Any

import nni
from nni.mutable import Categorical, label_scope
from nni.tuner import Tuner

from hmnas_nni.common.encoding import Sample
from hmnas_nni.format.errors import UsageError

from .agnet import AGNet
from .nases import NASES
from .pnas import PNAS
from .rounds import Pick, Query, RoundStrategy


def _categorical(label: str, values: list[Any]) -> Categorical:
    """NNI's categorical choice of ``label``; a hierarchical label (``cell/0_1``) is built in its label scopes."""
    scope, _, name = label.rpartition("/")
    if not scope:
        return Categorical(values, label=name)
    with contextlib.ExitStack() as stack:
        for part in scope.split("/"):
            stack.enter_context(label_scope(part))
        return Categorical(values, label=name)


class RoundTuner(Tuner):
    """An NNI tuner whose proposals are those of a :class:`RoundStrategy`; ``strategy_args`` are its arguments."""

    strategy_class: type[RoundStrategy]

    def __init__(self, **strategy_args: Any) -> None:
        self.strategy = self.strategy_class(**strategy_args)
        self._queue: list[Pick] = []
        self._index: dict[int, int] = {}  # NNI parameter id -> position in the history
        self._round = 0

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        """NNI's search-space file: every entry a ``choice`` (the categorical choices of a model space)."""
        mutables = {}
        for label, spec in search_space.items():
            if not isinstance(spec, dict) or spec.get("_type") != "choice":
                raise UsageError(f"search space entry {label!r} is {spec!r}: only '_type: choice' is supported by "
                                 f"{type(self).__name__}; write the file with "
                                 "hmnas_nni.experiments.multitrial.nni_search_space")
            mutables[label] = _categorical(label, list(spec["_value"]))
        self.strategy.set_space(mutables)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> Sample:
        """The next pick of the current round; a new round when they are all handed out."""
        self.strategy.prepare()
        if not self._queue:
            self._queue = self.strategy.ask(self._round)
            self._round += 1
        if not self._queue or not self.strategy.budget_left():
            raise nni.NoMoreTrialError(f"{self.strategy_class.__name__}: no unseen architecture left, or "
                                       "max_queries reached")
        sample, predicted = self._queue.pop(0)
        self._index[parameter_id] = self.strategy.record(sample, self._round - 1, predicted)
        return dict(sample)

    def receive_trial_result(self, parameter_id: int, parameters: Sample, value: Any, **kwargs: Any) -> None:
        """Keep the whole metric dict the trial reported (a number counts as ``default``)."""
        index = self._index.get(parameter_id)
        if index is not None:
            self.strategy.tell(index, value if isinstance(value, dict) else {"default": value})

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """A trial that ended without a result is recorded as failed (never ranked)."""
        index = self._index.get(parameter_id)
        if index is not None and not success:
            self.strategy.tell(index, None, trained=False)

    @property
    def history(self) -> list[Query]:
        """Every query handed out, in order, with what its trial reported."""
        return self.strategy.history


class AGNetTuner(RoundTuner):
    """AG-Net under ``nnictl``; ``classArgs`` are :class:`AGNet`'s arguments (``seed``, ``initial_queries``, ...)."""

    strategy_class = AGNet


class NASESTuner(RoundTuner):
    """NASES under ``nnictl``; ``classArgs`` are :class:`NASES`'s arguments (``seed``, ``batch_size``, ...)."""

    strategy_class = NASES


class PNASTuner(RoundTuner):
    """PNAS under ``nnictl``; ``classArgs`` are :class:`PNAS`'s arguments (``seed``, ``initial_queries``, ...)."""

    strategy_class = PNAS
