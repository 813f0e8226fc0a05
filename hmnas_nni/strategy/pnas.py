"""Progressive NAS (Liu et al., 2018), as Auto-Meta applies it to meta-learner cells: a multi-trial NNI strategy.

Cells grow one block at a time. Round 0 trains ``initial_queries`` random one-block architectures. Every later
round takes the ``beam`` best trained architectures of the largest size trained so far, lists every expansion of
them by one block (each setting of the new block's choices, with every value of the choices that belong to no
block: widths, depths), ranks the unseen expansions with a surrogate (an ensemble of MLPs on the architectures'
vectors, trained on every result so far) and trains the top ``queries_per_round``. Once cells have
their largest size, rounds keep training the best-ranked unseen expansions of the beam.

The space needs an integer choice of the number of blocks (``grow``, by default ``"blocks"``); block ``b``'s
choices are the labels whose name ends in ``b`` (``op3``, ``in3``, ``cell/op3``). Choices of blocks past the
chosen number are set to their first value, so one network is one sample. Any evaluator serves: the MAML
evaluator of few-shot learners or an ordinary training evaluator.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import torch

from hmnas_nni.common.encoding import Sample
from hmnas_nni.common.surrogate import Surrogate, fit_surrogate
from hmnas_nni.format.errors import UsageError

from .rounds import Pick, RoundStrategy, seeded

#: Most expansions ranked in one round (the product of the free choices can be large).
MAX_CANDIDATES = 20000


class PNAS(RoundStrategy):
    """Progressive search over blocks with a surrogate ranking the expansions (module docstring).

    Parameters
    ----------
    initial_queries
        Random one-block architectures trained first.
    queries_per_round
        Expansions trained each later round (PNAS's K).
    beam
        Best trained architectures of the current size that are expanded.
    grow
        Label of the integer choice that counts the blocks.
    members, surrogate_steps
        Size of the surrogate ensemble and full-batch training steps of each fit.
    """

    def __init__(self, *, initial_queries: int = 8, queries_per_round: int = 4, beam: int = 4, grow: str = "blocks",
                 members: int = 5, surrogate_steps: int = 300, metric: str = "default", max_queries: int | None = None,
                 seed: int | None = None) -> None:
        super().__init__(metric=metric, max_queries=max_queries, seed=seed)
        for name, value in (("initial_queries", initial_queries), ("queries_per_round", queries_per_round),
                            ("beam", beam), ("members", members), ("surrogate_steps", surrogate_steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"PNAS({name}={value!r}) must be a positive integer")
        self.initial_queries, self.queries_per_round, self.beam = initial_queries, queries_per_round, beam
        self.grow, self.members, self.surrogate_steps = grow, members, surrogate_steps

    def extra_repr(self) -> str:
        return (f"initial_queries={self.initial_queries}, queries_per_round={self.queries_per_round}, "
                f"beam={self.beam}, grow={self.grow!r}, seed={self.seed}")

    def set_space(self, space: Any) -> None:
        super().set_space(space)
        self._sizes()  # a space without the growing choice is refused before any trial

    # Rounds --------------------------------------------------------------------------------------------------------

    def ask(self, round_: int) -> list[Pick]:
        """One-block random picks first, then the surrogate's best expansions of the beam."""
        if round_ == 0 or not self.trained(before=round_):
            rng = np.random.default_rng([self.seed, 0, round_])
            wanted = self.initial_queries if round_ == 0 else self.queries_per_round
            return [(s, None) for s in self._unseen_small(rng, wanted, round_)]
        candidates = self.expansions(round_)
        if not candidates:
            return []
        predicted = self._predict(candidates, round_)
        order = np.argsort(-predicted, kind="stable")[:self.queries_per_round]
        return [(candidates[i], {"accuracy": float(predicted[i])}) for i in order]

    def expansions(self, round_: int) -> list[Sample]:
        """Unseen expansions by one block of the beam: the best trained architectures of the largest size
        trained before ``round_`` (at the largest size, variations of its last block and free choices)."""
        sizes = self._sizes()
        trained = self.trained(before=round_)
        size = max(q.sample[self.grow] for q in trained)
        beam = sorted((q for q in trained if q.sample[self.grow] == size),
                      key=lambda q: -self.objectives(q)[0])[:self.beam]
        grown = size + 1 if size < sizes[-1] else size
        seen, found = self.seen(before=round_), {}
        for parent in beam:
            for sample in self._grow(parent.sample, grown):
                key = self.encoding.key(sample)
                if key not in seen:
                    found.setdefault(key, sample)
                if len(found) >= MAX_CANDIDATES:
                    return list(found.values())
        return list(found.values())

    # Helpers -------------------------------------------------------------------------------------------------------

    def _sizes(self) -> list[int]:
        """The values of the growing choice, sorted."""
        block = next((b for b in self.encoding.blocks if b.label == self.grow), None)
        if block is None or not all(isinstance(v, int) and v >= 1 for v in block.values):
            raise UsageError(f"PNAS grows choice {self.grow!r}, which the space lacks or whose values are not "
                             f"block counts >= 1; pass PNAS(grow=...) naming the space's integer choice of blocks")
        return sorted(block.values)

    def _block_labels(self, b: int) -> list[str]:
        """Labels of block ``b``'s choices (names ending in ``b``)."""
        return [blk.label for blk in self.encoding.blocks if re.search(rf"(?<!\d){b}$", blk.label)]

    def _free_labels(self) -> list[str]:
        """Labels that belong to no block and are not the block count (widths, depths)."""
        return [blk.label for blk in self.encoding.blocks
                if blk.label != self.grow and not re.search(r"\d$", blk.label)]

    def canonical(self, sample: Sample) -> Sample:
        """``sample`` with the choices of blocks past its size at their first value."""
        out = dict(sample)
        for b in self._sizes():
            if b > sample[self.grow]:
                for label in self._block_labels(b):
                    out[label] = self._values(label)[0]
        return out

    def _values(self, label: str) -> tuple[Any, ...]:
        return next(blk.values for blk in self.encoding.blocks if blk.label == label)

    def _grow(self, parent: Sample, size: int) -> list[Sample]:
        """Every sample of ``size`` blocks that keeps the parent's first ``size - 1`` blocks."""
        varied = self._block_labels(size) + self._free_labels()
        out = []
        for values in itertools.product(*(self._values(label) for label in varied)):
            sample = {**parent, self.grow: size, **dict(zip(varied, values))}
            out.append(self.canonical(sample))
        return out

    def _unseen_small(self, rng: np.random.Generator, n: int, round_: int) -> list[Sample]:
        """Up to ``n`` distinct unseen random architectures of the smallest size."""
        smallest, seen, found = self._sizes()[0], self.seen(before=round_), {}
        for _ in range(50 * n):
            sample = self.canonical({**self.encoding.random_sample(rng), self.grow: smallest})
            key = self.encoding.key(sample)
            if key not in seen:
                found.setdefault(key, sample)
            if len(found) >= n:
                break
        return list(found.values())

    def _predict(self, candidates: list[Sample], round_: int) -> np.ndarray:
        """Predicted accuracy of each candidate: the ensemble's mean, fitted on every result so far."""
        trained = self.trained(before=round_)
        x = self.encoding.encode_many(q.sample for q in trained)
        y = np.array([self.objectives(q)[0] for q in trained])
        mean, std = y.mean(), y.std() or 1.0
        with seeded(self.seed * 1000 + round_):
            surrogate = Surrogate(x.shape[1], 1, members=self.members)
        fit_surrogate(surrogate, x, (y - mean) / std, self.surrogate_steps, seed=self.seed * 1000 + round_)
        predicted, _ = surrogate.predict(torch.from_numpy(self.encoding.encode_many(candidates)))
        return predicted[:, 0] * std + mean

