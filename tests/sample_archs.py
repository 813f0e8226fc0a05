"""Valid architectures made from a space's catalogue, for the tests.

They are *not* search results: :func:`sample_architecture` marks them ``strategy="sample"``
so they are never mistaken for an architecture a search found.
"""

from __future__ import annotations

import random
from typing import Any

from hmnas_nni.format.architecture import Architecture
from hmnas_nni.search.config import TINY_SPACE_ARGS
from hmnas_nni.spaces.catalogue import catalogue

# The tiny sizes of every space (one definition, in the search config) on 8x8 one-channel input (the digits set).
SMOKE_ARGS: dict[str, dict[str, int]] = {name: {"in_channels": 1, "input_size": 8, **args}
                                         for name, args in TINY_SPACE_ARGS.items()}


def smoke_architecture(space: str, seed: int = 0) -> Architecture:
    """A sampled architecture of ``space`` at :data:`SMOKE_ARGS` size, for tests and quick benchmarks."""
    return sample_architecture(space, seed=seed, **SMOKE_ARGS[space])


def sample_architecture(space: str, keep_ops: int = 2, keep_inputs: int = 2, seed: int = 0,
                        **space_args: Any) -> Architecture:
    """Keep ``keep_ops`` random ops per op choice (and cell edge) and ``keep_inputs`` inputs per input choice (and
    cell node), with random weights."""
    from hmnas_nni.spaces import build_space

    built = build_space(space, **space_args)
    rng = random.Random(seed)

    def weight() -> float:
        return round(rng.uniform(0.3, 1.0), 4)

    def some_ops(candidates: tuple) -> list[dict[str, Any]]:
        # "none" contributes nothing; prefer real ops so the sampled network has a path through every cell
        pool = [c for c in candidates if c != "none"] or list(candidates)
        return [{"op": c, "weight": weight()} for c in rng.sample(pool, min(keep_ops, len(pool)))]

    arch = Architecture(space=space, space_args=dict(built.space_args), strategy="sample",
                        input_shape=[built.space_args["in_channels"], *[built.space_args["input_size"]] * 2])
    for label, spec in catalogue(built).items():
        if spec.kind == "op":
            arch.ops[label] = some_ops(spec.candidates)
        elif spec.kind == "input":
            n = min(spec.n_chosen or keep_inputs, keep_inputs, len(spec.candidates))
            chosen = sorted(rng.sample(range(len(spec.candidates)), n))
            arch.inputs[label] = [{"input": i, "weight": weight()} for i in chosen]
        elif spec.kind == "cell":
            arch.cells[label] = {str(i): [{"input": j, "weight": weight(), "ops": some_ops(spec.candidates)}
                                          for j in sorted(rng.sample(range(i), min(keep_inputs, i)))]
                                 for i in spec.node_ids()}
        else:
            arch.values[label] = rng.choice(spec.candidates)
    return arch.validate(catalogue(built))
