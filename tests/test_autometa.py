"""Auto-Meta: few-shot episodes (disjoint, reproducible), MAML through torch.func, confidence intervals, the
meta-learner cell space, PNAS, and a tiny search and comparison from the command line (real Fashion-MNIST and
digits, sizes shrunk)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import nni
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hmnas_nni.common.episodes import ClassPool, EpisodeSampler
from hmnas_nni.common.maml import MAMLSettings, adapt, confidence_interval, meta_test
from hmnas_nni.format.errors import UsageError
from hmnas_nni.search.maml_evaluator import FewShot, MAMLEvaluator
from hmnas_nni.search.meta_data import MetaPools, load_meta_pools
from hmnas_nni.spaces.meta_cells import MetaCellSpace, conv4_sample
from hmnas_nni.strategy.pnas import PNAS

TINY = ["--images-per-class", "30", "--iterations", "2", "--meta-batch", "1", "--inner-steps", "1",
        "--val-episodes", "3", "--test-inner-steps", "1"]


@pytest.fixture(scope="module")
def pools() -> MetaPools:
    return load_meta_pools("fashion-mnist", images_per_class=30, seed=0)


def _base(name: str) -> str:
    return name.split("@")[0]


def test_meta_splits_have_disjoint_classes_and_garments(pools: MetaPools) -> None:
    splits = [pools.train, pools.val, pools.test]
    assert [len(p.classes) for p in splits] == [16, 8, 16]  # 4, 2 and 4 garments, each turned four ways
    bases = [{_base(c) for c in p.classes} for p in splits]
    assert not (bases[0] & bases[1] or bases[0] & bases[2] or bases[1] & bases[2])
    assert len(pools.cross["digits"].classes) == 10 and pools.cross["digits"].image_shape == pools.image_shape


def test_episodes_are_reproducible_and_well_formed(pools: MetaPools) -> None:
    sampler = EpisodeSampler(pools.test, ways=5, shots=2, queries=3, seed=7)
    a, b = sampler.episode(11), EpisodeSampler(pools.test, 5, 2, 3, seed=7).episode(11)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x) and a.classes == b.classes
    assert a.classes != sampler.episode(12).classes or not torch.equal(a.support_x, sampler.episode(12).support_x)
    assert a.support_x.shape == (10, 1, 28, 28) and a.query_x.shape == (15, 1, 28, 28)
    assert a.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and len(set(a.classes)) == 5
    support = {t.numpy().tobytes() for t in a.support_x}
    assert not support & {t.numpy().tobytes() for t in a.query_x}  # no image is both support and query


def test_episode_sampler_refuses_what_cannot_be_drawn(pools: MetaPools) -> None:
    with pytest.raises(UsageError, match="9-way episodes need at least 9 classes"):
        EpisodeSampler(pools.val, ways=9, shots=1, queries=1)
    with pytest.raises(UsageError, match="fewer than shots \\+ queries"):
        EpisodeSampler(pools.val, ways=5, shots=20, queries=20)
    with pytest.raises(UsageError, match="rotations must be distinct multiples of 90"):
        ClassPool(torch.zeros(2, 1, 4, 4), ["a", "b"]).rotated((0, 45))


def test_confidence_interval_is_1_96_standard_errors() -> None:
    values = [0.2, 0.4, 0.6, 0.8]
    mean, ci = confidence_interval(values)
    assert mean == pytest.approx(0.5) and ci == pytest.approx(1.96 * np.std(values, ddof=1) / 2)
    with pytest.raises(UsageError, match="at least 2 episodes"):
        confidence_interval([0.5])


def test_second_order_maml_through_torch_func_matches_autograd(pools: MetaPools) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 5))
    task = EpisodeSampler(pools.train, 5, 1, 2, seed=0).episode(0)
    params = dict(net.named_parameters())
    fast = adapt(net, params, task, steps=2, lr=0.3, first_order=False)
    ours = torch.autograd.grad(_query_loss(net, fast, task), list(params.values()))
    manual = dict(params)
    for _ in range(2):
        loss = F.cross_entropy(torch.func.functional_call(net, manual, (task.support_x,)), task.support_y)
        grads = torch.autograd.grad(loss, list(manual.values()), create_graph=True)
        manual = {k: p - 0.3 * g for (k, p), g in zip(manual.items(), grads)}
    ref = torch.autograd.grad(_query_loss(net, manual, task), list(params.values()))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    # first order: the meta-gradient is the query loss's gradient at the adapted weights
    first = adapt(net, params, task, steps=2, lr=0.3, first_order=True)
    ours = torch.autograd.grad(_query_loss(net, first, task), list(params.values()))
    at = {k: v.detach().requires_grad_() for k, v in first.items()}
    for a, b in zip(ours, torch.autograd.grad(_query_loss(net, at, task), list(at.values()))):
        torch.testing.assert_close(a, b)


def _query_loss(net: nn.Module, params: dict, task) -> torch.Tensor:
    return F.cross_entropy(torch.func.functional_call(net, params, (task.query_x,)), task.query_y)


def test_maml_evaluator_reports_validation_and_test_with_intervals(pools: MetaPools) -> None:
    space = MetaCellSpace()
    few = FewShot(shots=1, queries=2, val_episodes=3, test_episodes=4,
                  maml=MAMLSettings(iterations=2, meta_batch=1, inner_steps=1, test_inner_steps=1))
    net = space.freeze(conv4_sample(space))
    before = [p.detach().clone() for p in net.parameters()]
    metrics = MAMLEvaluator(few_shot=few, pools=pools).measure(net)
    assert set(metrics) == {"default", "accuracy", "val_ci95", "params", "meta_train_seconds", "test_accuracy",
                            "test_ci95", "digits_accuracy", "digits_ci95"}
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_ci95"] >= 0 and metrics["params"] == 28_485
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # meta-training moved the weights
    _, ci = meta_test(net, EpisodeSampler(pools.test, 5, 1, 2, seed=1).episodes(4), few.maml)
    assert ci >= 0
    evaluator = MAMLEvaluator(few_shot=dataclasses.replace(few, images_per_class=30))
    again = nni.load(nni.dump(evaluator))  # NNI's training-service engine sends evaluators this way
    assert (again.few_shot, again.dataset, again.seed) == (evaluator.few_shot, "fashion-mnist", 0)
    assert torch.equal(again.pools.test.images, evaluator.pools.test.images)
    with pytest.raises(UsageError, match="MAML inner_lr must be a positive number"):
        FewShot(maml=MAMLSettings(inner_lr=0)).check()


def test_conv4_is_a_point_of_the_meta_cell_space() -> None:
    space = MetaCellSpace()
    net = space.freeze(conv4_sample(space))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == \
        [(1, 32, (3, 3))] + [(32, 32, (3, 3))] * 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 4
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 5)


def _play(strategy: PNAS, rounds: int) -> list[list[dict]]:
    """Rounds of ask/record/tell with a cheap deterministic score (deeper and more blocks score higher)."""
    asked = []
    for r in range(rounds):
        picks = strategy.ask(r)
        asked.append([s for s, _ in picks])
        for sample, predicted in picks:
            index = strategy.record(sample, r, predicted)
            strategy.tell(index, {"default": 0.1 * sample["depth"] + 0.05 * sample["blocks"]})
    return asked


def test_pnas_grows_one_block_at_a_time_from_the_beam() -> None:
    strategy = PNAS(seed=0, initial_queries=4, queries_per_round=3, beam=2)
    strategy.set_space(MetaCellSpace())
    asked = _play(strategy, 3)
    assert len(asked[0]) == 4 and all(s["blocks"] == 1 for s in asked[0])
    assert all(s["blocks"] == 2 for s in asked[1]) and all(s["blocks"] == 3 for s in asked[2])
    parents = {(s["op1"]) for s in asked[0]}
    assert all(s["op1"] in parents for s in asked[1])  # an expansion keeps its parent's blocks
    assert all(s["op3"] == "conv3x3" and s["in3"] == 0 for s in asked[1])  # unused blocks: first values
    keys = [strategy.encoding.key(s) for r in asked for s in r]
    assert len(keys) == len(set(keys))
    with pytest.raises(UsageError, match="PNAS grows choice 'cells'"):
        PNAS(grow="cells").set_space(MetaCellSpace())


def _hmnas(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hmnas_nni.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def test_pnas_maml_search_runs_and_resumes_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "search"
    argv = ["multitrial", "--space", "meta-cells", "--evaluator", "maml", "--strategy", "pnas", "--trials", "3",
            "--dataset", "fashion-mnist", "--test-episodes", "0", *TINY, "--out", str(out)]
    done = _hmnas(*argv)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["trials"] == 3 and result["plan"]["evaluator"] == "maml"
    assert {"default", "val_ci95", "latency", "params"} <= set(result["best"]["metrics"])
    again = _hmnas(*argv, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("(from the earlier run)") == 3  # nothing meta-trained twice
    refused = _hmnas(*argv[:-2], "--dataset", "digits", "--out", str(tmp_path / "digits"))
    assert refused.returncode == 2 and "neither 'fashion-mnist' nor a folder" in refused.stderr
    refused = _hmnas(*argv[:-2], "--ways", "9", "--out", str(tmp_path / "nine"))  # meta-validation has 8 classes
    assert refused.returncode == 2 and "9-way episodes need at least 9 classes" in refused.stderr
    assert not (tmp_path / "nine").exists()  # refused before any folder or trial


def test_autometa_bench_compares_conv4_and_searched_learners(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = _hmnas("autometa-bench", "--trials", "2", "--strategies", "pnas", "--epochs", "1", "--test-episodes", "0",
                  *TINY, "--final-iterations", "1", "--final-meta-batch", "1", "--final-test-episodes", "3",
                  "--final-shots", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["architecture"] for r in results["rows"]] == ["conv4", "pnas-maml", "pnas-ordinary"]
    assert results["searches"] == {"pnas-maml": {"strategy": "pnas", "evaluator": "maml"},
                                   "pnas-ordinary": {"strategy": "pnas", "evaluator": "classify"}}
    assert "strategy" not in results["plan"]  # each search records its own; the plan holds what they share
    assert all(0 <= r["test_accuracy"] <= 1 and r["test_ci95"] >= 0 for r in results["rows"])
    assert "| conv4 | 5-way 1-shot |" in (out / "table.md").read_text()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_an_image_folder_gives_pools_the_same_way(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in (("train", "abcde"), ("val", "fghij"), ("test", "klmno")):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.png")
    pools = load_meta_pools(str(tmp_path), images_per_class=2)
    assert pools.train.classes == list("abcde") and pools.test.classes == list("klmno") and not pools.cross
    assert pools.image_shape == (1, 28, 28) and len(pools.val) == 10
    episode = EpisodeSampler(pools.test, ways=5, shots=1, queries=1).episode(0)
    assert episode.support_x.shape == (5, 1, 28, 28)
    (tmp_path / "val").rename(tmp_path / "valid")
    with pytest.raises(UsageError, match="no \\['val'\\] folder"):
        load_meta_pools(str(tmp_path))
