"""The architecture encoding of NNI spaces (a hand-written space with LayerChoice, InputChoice and ValueChoice, NNI's
hub NasBench201, plain mutables) and the Pareto functions, checked against brute force."""

from __future__ import annotations

import itertools
import warnings

import nni
import numpy as np
import pytest
import torch
from nni.mutable import Categorical, CategoricalMultiple, ExpressionConstraint, Numerical
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace, MutableLinear
from torch import nn

from hmnas_nni.common import pareto
from hmnas_nni.common.encoding import SpaceEncoding
from hmnas_nni.common.generator import ArchitectureVAE, pretrain
from hmnas_nni.common.pareto import constrained_order, front_ranks, hypervolume, pareto_mask, pareto_order
from hmnas_nni.format.errors import UsageError

warnings.filterwarnings("ignore")


class TinySpace(ModelSpace):
    """A value choice (width), a layer choice, an InputChoice of two out of three, one of any number out of three."""

    def __init__(self) -> None:
        super().__init__()
        width = nni.choice("width", [4, 8, 16])
        self.fc1 = MutableLinear(8, width)
        self.act = LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh(), "id": nn.Identity()}, label="act")
        self.pick = InputChoice(3, 2, reduction="sum", label="pick")
        self.any = InputChoice(3, None, reduction="sum", label="any")
        self.fc2 = MutableLinear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = self.pick([h, 2 * h, -h])
        h = h + self.any([h, h.abs(), h * 0.5])
        return self.fc2(h)


@pytest.fixture(scope="module")
def tiny() -> tuple[TinySpace, SpaceEncoding]:
    space = TinySpace()
    return space, SpaceEncoding(space)


def _all_samples(space: ModelSpace) -> list[dict]:
    """Every sample of a small space, by NNI's own grid."""
    return [dict(s) for s in _grid(space.simplify())]


def _grid(mutables: dict) -> list[dict]:
    labels = list(mutables)
    values = [list(mutables[label].grid()) for label in labels]
    return [dict(zip(labels, combo)) for combo in itertools.product(*values)]


def test_tiny_space_layout(tiny) -> None:
    _, encoding = tiny
    assert encoding.labels == ["width", "act", "pick", "any"]
    assert encoding.logit_size == 12
    assert encoding.size == 13  # width is ordinal (numbers): one scaled value; act's names are not
    assert [b.n_chosen for b in encoding.blocks] == [1, 1, 2, None]


def test_round_trip_keys_and_validity_over_the_whole_tiny_space(tiny) -> None:
    space, encoding = tiny
    samples = _all_samples(space)
    assert len(samples) == 3 * 3 * 3 * 8
    keys = set()
    for sample in samples:
        vector = encoding.encode(sample)
        assert vector.shape == (encoding.size,)
        assert encoding.decode(vector[:encoding.logit_size]) == sample
        keys.add(encoding.key(sample))
    assert len(keys) == len(samples)  # one key per architecture
    scaled = [encoding.encode(s)[-1] for s in samples if s["width"] == 8]
    assert np.allclose(scaled, 1 / 3)  # 8 lies a third of the way from 4 to 16


def test_decoded_logits_are_valid_samples_that_build_and_run(tiny) -> None:
    space, encoding = tiny
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, encoding.logit_size)) * 3
    for sample in encoding.decode_many(logits) + encoding.decode_many(logits, rng):
        assert space.contains(sample)
        assert len(sample["pick"]) == 2
    model = space.freeze(encoding.decode(logits[0]))
    assert model(torch.randn(2, 8)).shape == (2, 2)


def test_random_samples_follow_nni_and_the_key_ignores_order(tiny) -> None:
    space, encoding = tiny
    rng = np.random.default_rng(1)
    for sample in encoding.random_samples(100, rng):
        assert space.contains(sample)
    sample: dict = {}
    space.random(memo=sample, random_state=np.random.RandomState(0))  # NNI's own draw
    assert encoding.decode(encoding.encode(sample)[:encoding.logit_size]) == sample
    reordered = {**sample, "pick": list(reversed(sample["pick"]))}
    assert encoding.key(reordered) == encoding.key(sample)


def test_hub_nasbench201_round_trip() -> None:
    from nni.nas.hub.pytorch import NasBench201
    space = NasBench201(stem_out_channels=4, num_modules_per_stack=1)
    encoding = SpaceEncoding(space)
    assert len(encoding.blocks) == 6 and encoding.logit_size == 30
    rng = np.random.default_rng(0)
    for sample in encoding.random_samples(20, rng):
        assert space.contains(sample)
        assert encoding.decode(encoding.encode(sample)) == sample
    generated = encoding.decode_many(rng.normal(size=(20, encoding.logit_size)), rng)
    assert all(space.contains(s) for s in generated)
    model = space.freeze(generated[0])
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_quantised_numerical_and_constraints() -> None:
    x = Numerical(0, 10, quantize=2.5, label="x")
    y = Categorical([1, 2, 3], label="y")
    constraint = ExpressionConstraint(x + y <= 8, label="small")
    encoding = SpaceEncoding({"x": x, "y": y, "small": constraint})
    assert encoding.blocks[0].values == (0.0, 2.5, 5.0, 7.5, 10.0)
    assert encoding.blocks[0].weights == pytest.approx((0.125, 0.25, 0.25, 0.25, 0.125))  # the mass rounded onto each
    rng = np.random.default_rng(0)
    samples = encoding.random_samples(200, rng)
    assert all(s["x"] + s["y"] <= 8 for s in samples)
    assert not encoding.valid({"x": 10.0, "y": 3})


def test_unsupported_mutables_name_their_label() -> None:
    with pytest.raises(UsageError, match=r"'lr'.*not supported"):
        SpaceEncoding({"lr": Numerical(0, 1, label="lr")})
    with pytest.raises(UsageError, match=r"'big'.*not supported"):
        SpaceEncoding({"big": Numerical(0, 1e6, quantize=1, label="big")})
    encoding = SpaceEncoding({"m": CategoricalMultiple([1, 2, 3], n_chosen=2, label="m")})
    with pytest.raises(UsageError, match=r"'m'.*not among its values"):
        encoding.encode({"m": [1, 7]})


def test_generator_learns_to_reconstruct_and_generates_valid_samples(tiny, one_thread) -> None:
    space, encoding = tiny
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    vae = ArchitectureVAE(encoding, latent=16, hidden=64)
    losses = pretrain(vae, encoding.random_samples(2000, rng), epochs=20, lr=1e-2, kl_weight=0.01, seed=0)
    assert losses[-1] < 0.5 * losses[0]
    held_out = encoding.random_samples(100, rng)
    with torch.no_grad():
        logits = vae.decode(vae.embed(torch.from_numpy(encoding.encode_many(held_out)))).numpy()
    rebuilt = encoding.decode_many(logits)
    assert np.mean([a == b for a, b in zip(rebuilt, held_out)]) >= 0.9
    generated = vae.generate(200, rng)
    assert all(space.contains(s) for s in generated)
    assert len({encoding.key(s) for s in generated}) > 100  # the prior decodes to many architectures, not a few
    anchor = encoding.encode_many(held_out[:2])
    near = vae.generate_near(anchor, np.array([1.0, 0.0]), 50, rng, temperature=0.1, sample=False)
    assert np.mean([s == held_out[0] for s in near]) >= 0.8  # close to the anchor drawn (the first: weight 1)


# --- Pareto functions -------------------------------------------------------------------------------------------

def _brute_dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def _points(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 8, n).astype(float), rng.integers(0, 8, n).astype(float)  # ties on purpose


@pytest.mark.parametrize("seed", range(5))
def test_fronts_against_brute_force(seed: int) -> None:
    acc, lat = _points(seed)
    points = list(zip(acc, lat))
    mask = pareto_mask(acc, lat)
    assert list(mask) == [not any(_brute_dominates(q, p) for q in points) for p in points]
    ranks, remaining, front = front_ranks(acc, lat), set(range(len(points))), 0
    while remaining:
        layer = {i for i in remaining if not any(_brute_dominates(points[j], points[i]) for j in remaining)}
        assert {i for i in range(len(points)) if ranks[i] == front} == layer
        remaining -= layer
        front += 1


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_against_counted_cells(seed: int) -> None:
    acc, lat = _points(seed, 12)
    reference = (-1.0, 9.0)
    cells = sum(1 for a, b in itertools.product(range(-1, 8), range(0, 9))  # unit cell [a, a+1] x [b, b+1]
                if any(x >= a + 1 and y <= b for x, y in zip(acc, lat)))
    assert hypervolume(acc, lat, reference) == pytest.approx(cells)


def test_hypervolume_of_known_points() -> None:
    assert hypervolume([0.9, 0.8], [2.0, 1.0], (0.5, 3.0)) == pytest.approx(0.4 * 1 + 0.3 * 1)
    assert hypervolume([0.9, 0.8, 0.7], [2.0, 1.0, 1.5], (0.5, 3.0)) == pytest.approx(0.7)  # 0.7 is dominated
    assert hypervolume([0.4], [1.0], (0.5, 3.0)) == 0.0  # below the reference counts nothing


def test_orders_and_ranks() -> None:
    acc = np.array([0.9, 0.95, 0.7, 0.99, 0.9])
    lat = np.array([2.0, 5.0, 1.0, 9.0, 1.5])
    assert list(constrained_order(acc, lat, cap=4.0)) == [4, 0, 2, 1, 3]  # within the cap by accuracy, then latency
    order = pareto_order(acc, lat)
    assert list(order) == [3, 1, 4, 2, 0]  # the front by accuracy, then the dominated point
    assert list(pareto.ranks_of(order)) == [4, 1, 3, 0, 2]


def test_greedy_hypervolume_first_pick_is_the_best_gain() -> None:
    rng = np.random.default_rng(0)
    known_acc, known_lat = rng.random(10), rng.random(10)
    cand_acc, cand_lat = rng.random(30), rng.random(30)
    reference = (0.0, 1.0)
    base = hypervolume(known_acc, known_lat, reference)
    gains = [hypervolume(np.append(known_acc, a), np.append(known_lat, b), reference) - base
             for a, b in zip(cand_acc, cand_lat)]
    picks = pareto.greedy_hypervolume(known_acc, known_lat, cand_acc, cand_lat, 5, reference)
    assert len(picks) == len(set(picks)) == 5
    assert picks[0] == int(np.argmax(gains))
