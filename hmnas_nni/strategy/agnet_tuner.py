"""AG-Net as an NNI tuner, for ``nnictl create`` (``experiments/agnet.yml``): the same rounds as :class:`AGNet`, asked
for one sample at a time by NNI's dispatcher, told each trial's metric dict, with trials in NNI's web UI.

A round's picks are made when the previous ones have been handed out: with ``trialConcurrency: 1`` every earlier
query has its result by then; with more, the picks are made from the results that are in.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

import nni
from nni.mutable import Categorical, label_scope
from nni.tuner import Tuner

from hmnas_nni.common.encoding import Sample, SpaceEncoding
from hmnas_nni.format.errors import UsageError

from .agnet import AGNet, Query

_logger = logging.getLogger(__name__)


def _categorical(label: str, values: list[Any]) -> Categorical:
    """NNI's categorical choice of ``label``; a hierarchical label (``cell/0_1``) is built in its label scopes."""
    scope, _, name = label.rpartition("/")
    if not scope:
        return Categorical(values, label=name)
    with contextlib.ExitStack() as stack:
        for part in scope.split("/"):
            stack.enter_context(label_scope(part))
        return Categorical(values, label=name)


class AGNetTuner(Tuner):
    """An NNI tuner whose proposals are :class:`AGNet`'s; ``agnet_args`` are AGNet's arguments (``seed``,
    ``initial_queries``, ``queries_per_round``, ``objective``, ``latency_cap``, ...)."""

    def __init__(self, **agnet_args: Any) -> None:
        self.agnet = AGNet(**agnet_args)
        self._queue: list[tuple[Sample, dict[str, float] | None]] = []
        self._index: dict[int, int] = {}  # NNI parameter id -> position in the history
        self._round = 0

    def update_search_space(self, search_space: dict[str, Any]) -> None:
        """NNI's search-space file: every entry a ``choice`` (the categorical choices of a model space)."""
        mutables = {}
        for label, spec in search_space.items():
            if not isinstance(spec, dict) or spec.get("_type") != "choice":
                raise UsageError(f"search space entry {label!r} is {spec!r}: only '_type: choice' is supported by "
                                 "AGNetTuner; write the file with hmnas_nni.experiments.multitrial.nni_search_space")
            mutables[label] = _categorical(label, list(spec["_value"]))
        self.agnet._encoding = SpaceEncoding(mutables)

    def generate_parameters(self, parameter_id: int, **kwargs: Any) -> Sample:
        """The next pick of the current round; a new round when they are all handed out."""
        if self.agnet._pretrained is None:
            self.agnet._pretrained = self.agnet._pretrain()
        if not self._queue:
            self._queue = self._next_round()
        if not self._queue or not self._budget_left():
            raise nni.NoMoreTrialError("AGNet: no unseen architecture left, or max_queries reached")
        sample, predicted = self._queue.pop(0)
        self._index[parameter_id] = len(self.agnet._history)
        self.agnet._history.append(Query(dict(sample), self._round - 1, predicted))
        return dict(sample)

    def receive_trial_result(self, parameter_id: int, parameters: Sample, value: Any, **kwargs: Any) -> None:
        """Keep the whole metric dict the trial reported (a number counts as ``default``)."""
        index = self._index.get(parameter_id)
        if index is None:
            return
        query = self.agnet._history[index]
        query.metrics = copy.deepcopy(value) if isinstance(value, dict) else {"default": value}
        query.status = "trained"
        self.agnet._check_report(query)

    def trial_end(self, parameter_id: int, success: bool, **kwargs: Any) -> None:
        """A trial that ended without a result is recorded as failed (never ranked)."""
        index = self._index.get(parameter_id)
        if index is not None and not success:
            self.agnet._history[index].status = "failed"

    def _budget_left(self) -> bool:
        return self.agnet.max_queries is None or len(self.agnet._history) < self.agnet.max_queries

    def _next_round(self) -> list[tuple[Sample, dict[str, float] | None]]:
        """The picks of the next round: random at first (and while fewer than two results are in), then AG-Net's."""
        round_ = self._round
        self._round += 1
        if round_ == 0 or len(self.agnet._trained(before=round_)) < 2:
            return list(self.agnet._random_picks(round_))
        return self.agnet._round_picks(round_)

    @property
    def history(self) -> list[Query]:
        """Every query handed out, in order, with what its trial reported."""
        return self.agnet.history
