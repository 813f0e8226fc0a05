"""``random-oneshot`` is NNI's RandomOneShot with its draws seeded: one seed gives one search, every choice is drawn
(the same labels NNI's own sampling draws), and a resumed search draws what an unbroken one draws.

Tiny searches (digits, ``nb201`` width 4, 128 images, batch 32, 1 epoch) with real NNI and real Lightning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from nni.nas.hub.pytorch import DARTS, NasBench201
from nni.nas.oneshot.pytorch.sampling import RandomSamplingLightningModule

from hmnas_nni.search.config import TINY_SPACE_ARGS, SearchConfig
from hmnas_nni.search.inputs import search_inputs
from hmnas_nni.search.nni_random import SeededRandomOneShot, SeededRandomSampling
from hmnas_nni.search.run import run_search


def _search(folder: Path, seed: int, epochs: int = 1, resume: Path | None = None) -> dict[str, Any]:
    """The architecture and the trained supernet's first weights of one tiny random-oneshot search."""
    result = run_search(SearchConfig(space="nb201", dataset="digits", strategy="random-oneshot", epochs=epochs,
                                     subset=128, batch_size=32, space_args=TINY_SPACE_ARGS["nb201"], seed=seed,
                                     out=str(folder), progress=False, resume=str(resume) if resume else None))
    weights = [p.detach().clone() for p in result.strategy.oneshot_module.parameters()][:8]
    return {"arch": json.loads((folder / "arch.json").read_text())["ops"], "weights": weights}


@pytest.fixture(scope="module")
def searches(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> list[dict[str, Any]]:
    """Seed 0 twice, then seed 1."""
    root = tmp_path_factory.mktemp("random-oneshot")
    return [_search(root / f"run{i}", seed) for i, seed in enumerate((0, 0, 1))]


def test_a_resumed_search_draws_what_an_unbroken_one_draws(tmp_path: Path, one_thread: None) -> None:
    unbroken = _search(tmp_path / "unbroken", 0, epochs=2)
    _search(tmp_path / "first", 0, epochs=1)
    resumed = _search(tmp_path / "first", 0, epochs=2, resume=tmp_path / "first")
    assert resumed["arch"] == unbroken["arch"]
    assert all(torch.equal(a, b) for a, b in zip(resumed["weights"], unbroken["weights"], strict=True))


def test_one_seed_gives_one_search(searches: list[dict[str, Any]]) -> None:
    first, again, other = searches
    assert first["arch"] == again["arch"]
    assert all(torch.equal(a, b) for a, b in zip(first["weights"], again["weights"], strict=True))
    assert first["arch"] != other["arch"]


class _Holder(pl.LightningModule):
    """A Lightning module holding a mutated space, as an evaluator's module does."""

    def __init__(self, space: torch.nn.Module) -> None:
        super().__init__()
        self.space = space


def _mutated(space: torch.nn.Module) -> torch.nn.Module:
    SeededRandomOneShot().mutate_model(space)
    return space


def _project_space(name: str) -> torch.nn.Module:
    config = SearchConfig(space=name, dataset="digits", subset=128, batch_size=32, space_args=TINY_SPACE_ARGS[name])
    return search_inputs(config).space


HUB = {"hub-nb201": lambda: NasBench201(stem_out_channels=4, num_modules_per_stack=1),
       "hub-darts": lambda: DARTS(width=4, num_cells=3)}


@pytest.mark.parametrize("name", ["nb201", "darts", "mobile", *HUB])
def test_every_choice_is_drawn_as_nni_draws_it(name: str) -> None:
    space = HUB[name]() if name in HUB else _project_space(name)
    holder = _Holder(_mutated(space))
    seeded = SeededRandomSampling(holder, seed=3).resample()
    nni = RandomSamplingLightningModule(holder).resample()
    assert set(seeded) == set(nni) and seeded
    assert all(type(seeded[k]) is type(nni[k]) for k in nni)
    assert SeededRandomSampling(holder, seed=3).export() == SeededRandomSampling(holder, seed=3).resample()


def test_each_draw_is_its_seed_and_step_whatever_ran_before() -> None:
    holder = _Holder(_mutated(_project_space("nb201")))
    running, fresh = SeededRandomSampling(holder, seed=5), SeededRandomSampling(holder, seed=5)
    draws = []
    for key in [(0, 0, 0), (1, 0, 0), (0, 0, 1), (0, 1, 0)]:
        running.draw_key = key
        draws.append(running.resample())
    fresh.draw_key = (0, 1, 0)
    assert fresh.resample() == draws[-1]  # the draw of epoch 1, batch 0 with nothing drawn before it
    assert len({json.dumps(d, sort_keys=True) for d in draws}) == len(draws)
    unseeded = SeededRandomSampling(holder)
    assert len({json.dumps(unseeded.resample(), sort_keys=True) for _ in range(4)}) > 1  # NNI's fresh entropy
