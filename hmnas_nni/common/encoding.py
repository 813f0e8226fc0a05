"""A fixed-length vector encoding of any NNI model space, read from ``space.simplify()``.

Every choice of the space becomes one block of the vector:

- ``Categorical`` (``LayerChoice``, ``ValueChoice`` / ``nni.choice``, ``Repeat`` depths): a one-hot block;
- ``CategoricalMultiple`` (``InputChoice``): a multi-hot block, ``n_chosen`` (or any number of) ones;
- ``Numerical`` with a ``quantize`` step and finite bounds: a one-hot block over its grid of values.

Choices whose values are all numbers are ordinal: they also get one scaled value in [0, 1], appended after the
blocks, so a model reading the vector sees that 16 channels lie between 8 and 32. Decoding reads one logit per
block entry (:attr:`SpaceEncoding.logit_size`, the blocks without the scaled values) and always gives a sample
of the space: one value per categorical block, exactly ``n_chosen`` values per multiple block, by argmax or by
sampling. Constraints of the space (NNI's ``Constraint`` annotations) cannot be met by decoding block by block:
:meth:`SpaceEncoding.valid` checks them, and random samples are drawn until one passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nni.mutable import Categorical, CategoricalMultiple, Constraint, MutableAnnotation, Numerical

from hmnas_nni.format.errors import UsageError

#: A sample of a space: label -> chosen value (a list of values for a ``CategoricalMultiple``).
Sample = dict[str, Any]
#: A hashable identity of a sample: one tuple of chosen indices per block.
SampleKey = tuple[tuple[int, ...], ...]

#: The most values a quantised ``Numerical`` may take before its one-hot block would swamp the encoding.
MAX_GRID = 1024
#: How many random draws :meth:`SpaceEncoding.random_sample` tries before a constrained space is called empty.
MAX_DRAWS = 1000


@dataclass(frozen=True)
class Block:
    """One choice of the space: its label, values, where its entries start and how many it chooses."""

    label: str
    values: tuple[Any, ...]
    start: int
    multiple: bool = False  # a CategoricalMultiple: a set of values, not one
    n_chosen: int | None = 1  # None: any number (CategoricalMultiple without n_chosen)
    scale: tuple[float, float] | None = None  # (low, high) of an ordinal choice's values, else None
    weights: tuple[float, ...] | None = None  # the space's prior over the values (None: uniform)

    @property
    def size(self) -> int:
        """Number of entries (logits) of the block."""
        return len(self.values)

    @property
    def stop(self) -> int:
        """End (exclusive) of the block in the vector."""
        return self.start + self.size


def _numeric(values: Sequence[Any]) -> bool:
    """Whether every value is a real number (booleans are categories, not quantities)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _scale_of(values: Sequence[Any]) -> tuple[float, float] | None:
    """(low, high) of ordinal values, or None when they are not all numbers or all equal."""
    if not _numeric(values) or min(values) == max(values):
        return None
    return float(min(values)), float(max(values))


def _grid(mutable: Numerical) -> tuple[float, ...]:
    """The values a quantised, bounded ``Numerical`` can take, or a "not supported" error naming its label."""
    q, low, high = mutable.quantize, mutable.low, mutable.high
    if q is None or not (math.isfinite(low) and math.isfinite(high)):
        raise UsageError(f"choice {mutable.label!r}: a continuous Numerical is not supported; give it a quantize "
                         "step and finite low/high bounds, or use nni.choice over a list of values")
    steps = math.floor((high - low) / q + 1e-9) + 2
    if steps > MAX_GRID:
        raise UsageError(f"choice {mutable.label!r}: a Numerical with {steps} grid values is not supported (at most "
                         f"{MAX_GRID}); use a larger quantize step")
    candidates = [mutable.qclip(low + i * q) for i in range(steps)] + [mutable.qclip(high)]
    return tuple(v for v in sorted(set(candidates)) if mutable.contains({mutable.label: v}))


def _grid_weights(mutable: Numerical, values: tuple[float, ...]) -> tuple[float, ...]:
    """Probability of each grid value under the ``Numerical``'s distribution (the mass rounded onto it)."""
    edges = [mutable.low] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [mutable.high]
    mass = np.diff(mutable.distribution.cdf(edges))
    return tuple(float(m) for m in mass / mass.sum())


def _block_of(label: str, mutable: Any, start: int) -> Block:
    """The block of one leaf mutable, or a one-line "not supported" error naming its label."""
    label = str(label)  # a plain string: NNI's label type is a subclass that plain pickles (torch.load) refuse
    if isinstance(mutable, Categorical):
        values = tuple(mutable.values)
        return Block(label, values, start, scale=_scale_of(values), weights=tuple(mutable.weights))
    if isinstance(mutable, CategoricalMultiple):
        values = tuple(mutable.values)
        return Block(label, values, start, multiple=True, n_chosen=mutable.n_chosen, weights=tuple(mutable.weights))
    if isinstance(mutable, Numerical):
        values = _grid(mutable)
        return Block(label, values, start, scale=_scale_of(values), weights=_grid_weights(mutable, values))
    raise UsageError(f"choice {label!r}: {type(mutable).__name__} is not supported by the architecture encoding; "
                     "use Categorical (nni.choice, LayerChoice), CategoricalMultiple (InputChoice) or a quantised "
                     "Numerical")


def _leaf_mutables(space: Any) -> Mapping[str, Any]:
    """The labelled leaf mutables of a model space, an NNI mutable or a dict of them."""
    if isinstance(space, Mapping):
        return space
    if not hasattr(space, "simplify"):
        raise UsageError(f"{type(space).__name__} is not an NNI model space; pass a ModelSpace, an executable model "
                         "space or a dict of NNI mutables")
    return space.simplify()


class SpaceEncoding:
    """Sample <-> vector of one NNI model space; decodes logits to valid samples; draws random valid samples."""

    def __init__(self, space: Any) -> None:
        self.blocks: list[Block] = []
        self.constraints: list[Constraint] = []
        start = 0
        for label, mutable in _leaf_mutables(space).items():
            if isinstance(mutable, MutableAnnotation):
                if isinstance(mutable, Constraint):
                    self.constraints.append(mutable)
                continue
            block = _block_of(label, mutable, start)
            self.blocks.append(block)
            start = block.stop
        if not self.blocks:
            raise UsageError("the model space has no choices to encode; add a LayerChoice, InputChoice or nni.choice")
        self.logit_size = start
        self.ordinal = [b for b in self.blocks if b.scale is not None]
        self.size = start + len(self.ordinal)
        self._index = [{_hashable(v): i for i, v in enumerate(b.values)} for b in self.blocks]

    @property
    def labels(self) -> list[str]:
        """Labels of the encoded choices, in vector order."""
        return [b.label for b in self.blocks]

    def indices(self, sample: Mapping[str, Any]) -> SampleKey:
        """The chosen indices of every block, or a one-line error naming the label whose value is not in the space."""
        key = []
        for block, index in zip(self.blocks, self._index):
            if block.label not in sample:
                raise UsageError(f"sample has no value for choice {block.label!r}; give one of {list(block.values)}")
            chosen = sample[block.label] if block.multiple else [sample[block.label]]
            try:
                key.append(tuple(sorted(index[_hashable(v)] for v in chosen)))
            except (KeyError, TypeError):
                raise UsageError(f"choice {block.label!r}: {sample[block.label]!r} is not among its values "
                                 f"{list(block.values)}") from None
        return tuple(key)

    def key(self, sample: Mapping[str, Any]) -> SampleKey:
        """A hashable identity of the sample (the same architecture gives the same key), for deduplication."""
        return self.indices(sample)

    def encode(self, sample: Mapping[str, Any]) -> np.ndarray:
        """The sample as a vector of :attr:`size` floats: one-hot / multi-hot blocks, then the scaled values."""
        vector = np.zeros(self.size, dtype=np.float32)
        scaled = []
        for block, chosen in zip(self.blocks, self.indices(sample)):
            vector[[block.start + i for i in chosen]] = 1.0
            if block.scale is not None:
                low, high = block.scale
                scaled.append((float(block.values[chosen[0]]) - low) / (high - low))
        vector[self.logit_size:] = scaled
        return vector

    def encode_many(self, samples: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Vectors of several samples, one row each."""
        rows = [self.encode(s) for s in samples]
        return np.stack(rows) if rows else np.zeros((0, self.size), dtype=np.float32)

    def from_indices(self, key: SampleKey) -> Sample:
        """The sample whose chosen indices per block are ``key``."""
        sample: Sample = {}
        for block, chosen in zip(self.blocks, key):
            values = [block.values[i] for i in chosen]
            sample[block.label] = values if block.multiple else values[0]
        return sample

    def decode(self, logits: np.ndarray, rng: np.random.Generator | None = None) -> Sample:
        """A valid sample from one row of logits: argmax per block, or a draw from its softmax when ``rng`` is given."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape[-1] < self.logit_size:
            raise UsageError(f"decode needs {self.logit_size} logits (one per block entry), got {logits.shape[-1]}")
        return self.from_indices(tuple(_choose(block, logits[block.start:block.stop], rng) for block in self.blocks))

    def decode_many(self, logits: np.ndarray, rng: np.random.Generator | None = None) -> list[Sample]:
        """Valid samples from rows of logits (see :meth:`decode`)."""
        return [self.decode(row, rng) for row in np.asarray(logits)]

    def valid(self, sample: Mapping[str, Any]) -> bool:
        """Whether the sample meets the space's constraints (decoded samples always meet every choice's own rules)."""
        return all(c.check_contains(dict(sample)) is None for c in self.constraints)

    def random_sample(self, rng: np.random.Generator) -> Sample:
        """A random valid sample under the space's priors (redrawn until the space's constraints hold)."""
        for _ in range(MAX_DRAWS):
            sample = self.from_indices(tuple(_random_choice(block, rng) for block in self.blocks))
            if self.valid(sample):
                return sample
        raise UsageError(f"no random sample met the space's constraints in {MAX_DRAWS} draws; check the constraints "
                         "of the model space")

    def random_samples(self, n: int, rng: np.random.Generator) -> list[Sample]:
        """``n`` random valid samples (not deduplicated)."""
        return [self.random_sample(rng) for _ in range(n)]


def _hashable(value: Any) -> Any:
    """A hashable stand-in for a choice value (lists and dicts as tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax of a vector of logits."""
    e = np.exp(x - x.max())
    return e / e.sum()


def _choose(block: Block, logits: np.ndarray, rng: np.random.Generator | None) -> tuple[int, ...]:
    """Chosen indices of one block from its logits: argmax / top-n, or a draw (without replacement) when ``rng``."""
    if block.n_chosen is None:  # any subset: each value in or out on its own
        p = 1.0 / (1.0 + np.exp(-logits))
        keep = rng.random(block.size) < p if rng is not None else p > 0.5
        return tuple(int(i) for i in np.flatnonzero(keep))
    if rng is None:
        order = np.argsort(-logits, kind="stable")
    else:  # Gumbel top-k: n draws without replacement from the block's softmax
        order = np.argsort(-(logits + rng.gumbel(size=block.size)), kind="stable")
    return tuple(sorted(int(i) for i in order[:block.n_chosen]))


def _random_choice(block: Block, rng: np.random.Generator) -> tuple[int, ...]:
    """Random chosen indices of one block under its prior, as NNI's ``random()`` draws them."""
    if block.n_chosen is None:  # each value in with its own probability (0.5 unless the space says otherwise)
        p = np.asarray(block.weights if block.weights is not None else [0.5] * block.size)
        return tuple(int(i) for i in np.flatnonzero(rng.random(block.size) < p))
    p = None if block.weights is None else np.asarray(block.weights) / np.sum(block.weights)
    return tuple(sorted(int(i) for i in rng.choice(block.size, block.n_chosen, replace=False, p=p)))
