"""ENAS with a memory of past architectures: the memory fills and its replay trains the controller, a memory of 0 is
NNI's ENAS, and ``hmnas controller-similarity`` measures real searches; bad inputs stop in one line.

Tiny searches (digits, ``nb201`` width 4, 64 + 64 images, batch 8, 2 epochs: 8 rewards each) with real NNI and
real Lightning; skipped with the project's one-line reason where NNI's ENAS controller cannot run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from hmnas_nni.search.nni_enas import enas_missing

pytestmark = pytest.mark.skipif(enas_missing() is not None, reason=enas_missing() or "")

TINY = {"space": "nb201", "dataset": "digits", "epochs": 2, "subset": 128, "batch_size": 8,
        "space_args": {"channels": 4}, "seed": 0, "progress": False}
MEMORY = 16


def _search(folder: Path, strategy: str, **extra: Any) -> Any:
    from hmnas_nni.search.config import SearchConfig
    from hmnas_nni.search.run import run_search

    return run_search(SearchConfig(strategy=strategy, out=str(folder), **{**TINY, **extra}))


@pytest.fixture(scope="module")
def searches(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, tuple[Path, Any]]:
    """One vanilla ENAS and one ENAS-memory search, shared by the module: folder and result of each."""
    root = tmp_path_factory.mktemp("enas")
    return {"enas": (root / "enas", _search(root / "enas", "enas")),
            "enas-memory": (root / "memory", _search(root / "memory", "enas-memory", memory_buffer=MEMORY))}


def _module(searches: dict[str, tuple[Path, Any]], name: str) -> Any:
    return searches[name][1].strategy.oneshot_module


def test_the_memory_fills_with_every_rewarded_architecture(searches: dict[str, tuple[Path, Any]]) -> None:
    from hmnas_nni.search.enas_memory import MemoryEnasModule

    module = _module(searches, "enas-memory")
    assert isinstance(module, MemoryEnasModule)
    rewards = module._trajectory_counter  # NNI's count of rewarded samples: 64 validation images / batch 8
    assert rewards == 8 and module.memory.added == rewards and len(module.memory) == min(MEMORY, rewards)
    sizes = module.generator.num_choices
    for actions, reward in module.memory.entries:
        assert len(actions) == len(sizes) and all(0 <= a < n for a, n in zip(actions, sizes))
        assert 0.0 <= reward <= 1.0
    assert module.replay_steps > 0 and math.isfinite(module.last_replay["loss"])


def test_the_memory_keeps_the_newest_and_ranks_by_reward() -> None:
    from hmnas_nni.search.enas_memory import ArchitectureMemory

    memory = ArchitectureMemory(3)
    for k, reward in enumerate((0.5, 0.9, 0.1, 0.5)):
        memory.add([k, 0], reward)
    assert len(memory) == 3 and memory.added == 4  # the first entry is gone
    assert memory.best(2) == [((1, 0), 0.9), ((3, 0), 0.5)]
    copy = ArchitectureMemory(3)
    copy.load_state_dict(memory.state_dict())
    assert list(copy.entries) == list(memory.entries) and copy.added == 4


def test_the_replay_loss_is_reinforce_on_the_best_architectures(searches: dict[str, tuple[Path, Any]]) -> None:
    from hmnas_nni.search.controller import actor_of, as_tensor, log_probs

    module = _module(searches, "enas-memory")
    rewards = [r for _, r in module.memory.entries]
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    ranked = sorted(enumerate(module.memory.entries), key=lambda e: (-e[1][1], -e[0]))  # ties: the newest first
    best = [entry for _, entry in ranked[:module.replay_top]]
    actor = actor_of(module.policy)
    with torch.no_grad():
        logp = log_probs(actor, as_tensor([a for a, _ in best], actor), module.generator.num_choices)
    expected = -sum(max(0.0, (r - mean) / std) * float(lp) for (_, r), lp in zip(best, logp)) / len(best)
    loss = module.replay_loss()
    assert loss is not None and loss.requires_grad
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    before = [p.detach().clone() for p in actor.parameters()]
    assert module.replay_step()
    assert any(not torch.equal(a, p) for a, p in zip(before, actor.parameters()))  # the controller moved
    assert float(module.replay_loss()) < float(loss)  # towards the memory's best


def test_a_resumed_search_keeps_its_memory(searches: dict[str, tuple[Path, Any]], tmp_path: Path) -> None:
    folder, first = searches["enas-memory"]
    resumed = _search(tmp_path, "enas-memory", memory_buffer=MEMORY, resume=str(folder), epochs=3)
    module = resumed.strategy.oneshot_module
    assert module.memory.added == 16 and len(module.memory) == MEMORY  # 8 rewards kept, 8 more in the new epoch
    assert module.replay_steps > first.strategy.oneshot_module.replay_steps


def test_log_probs_are_the_controllers_own(searches: dict[str, tuple[Path, Any]]) -> None:
    from hmnas_nni.search.controller import actor_of, as_tensor, hidden_states, log_probs

    module = _module(searches, "enas")
    generator = module.generator
    module.policy.eval()
    sample = generator.next_sample()  # NNI's own draw, with the probabilities it drew from
    chosen = [generator.simplified_space[label].values.index(sample[label]) for label, _ in generator.search_labels]
    expected = sum(math.log(generator.sample_logits[label][a]) for (label, _), a in
                   zip(generator.search_labels, chosen))
    actor = actor_of(module.policy)
    with torch.no_grad():
        assert float(log_probs(actor, as_tensor([chosen], actor), generator.num_choices)[0]) == \
            pytest.approx(expected, rel=1e-5)
        assert hidden_states(actor, as_tensor([chosen, chosen], actor), generator.num_choices).shape == (2, 64)


def test_a_memory_of_zero_is_nni_enas(searches: dict[str, tuple[Path, Any]], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from nni.nas.oneshot.pytorch.sampling import EnasLightningModule

    from hmnas_nni.search import strategies
    from hmnas_nni.search.enas_memory import MemoryENAS

    for size in (0, None):
        module = MemoryENAS(memory_buffer=size).configure_oneshot_module(torch.nn.Identity())
        assert type(module) is EnasLightningModule  # NNI's own module, nothing added
    monkeypatch.setitem(strategies.REGISTRY, "enas-memory", lambda knobs: MemoryENAS(
        memory_buffer=0, warmup_epochs=knobs.schedule()[0], reward_metric_name="val_acc"))
    result = _search(tmp_path, "enas-memory")
    vanilla = searches["enas"][1]
    assert result.architecture.ops == vanilla.architecture.ops
    keys = ("supernet_val_acc", "derived_val_acc")
    assert [[h[k] for k in keys] for h in result.history] == [[h[k] for k in keys] for h in vanilla.history]


def test_controller_similarity_writes_its_record_and_plot(searches: dict[str, tuple[Path, Any]], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from hmnas_nni.cli.main import main

    out = tmp_path / "similarity"
    folders = [str(searches[name][0]) for name in ("enas", "enas-memory")]
    assert main(["controller-similarity", *folders, "--samples", "24", "--out", str(out)]) == 0
    doc = json.loads((out / "controller_similarity.json").read_text())
    assert [r["strategy"] for r in doc["rows"]] == ["enas", "enas-memory"]
    for row in doc["rows"]:
        for part in ("trained", "trained_uniform", "untrained"):
            stats = row[part]
            assert stats["samples"] == 24 and 3 <= stats["distinct"] <= 24
            assert -1.0 <= stats["pearson"] <= 1.0 and -1.0 <= stats["spearman"] <= 1.0
            assert stats["pairs"] == stats["distinct"] * (stats["distinct"] - 1) // 2
    assert set(doc["summary"]) == {"enas", "enas-memory"}
    assert (out / "controller_similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "controller_similarity.json" in json.loads((out / "manifest.json").read_text())["files"]
    assert "enas-memory: Pearson" in capsys.readouterr().out


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    from hmnas_nni.cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


@pytest.mark.parametrize(("extra", "says"), [
    (["--strategy", "enas-memory", "--memory-buffer", "0"], "memory_buffer must be a positive integer"),
    (["--strategy", "enas-memory", "--memory-buffer", "-3"], "--strategy enas for ENAS without a memory"),
    (["--strategy", "enas", "--memory-buffer", "8"], "pass --strategy enas-memory"),
    (["--strategy", "enas-memroy"], "invalid choice: 'enas-memroy'"),
])
def test_bad_search_options_stop_in_one_line(extra: list[str], says: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    from hmnas_nni.cli.main import main

    argv = ["search", "--out", str(tmp_path / "out"), "--epochs", "1", *extra]
    if "invalid choice" in says:  # argparse's own check of --strategy: the usage, then one error line
        assert main(argv) == 2
        assert says in capsys.readouterr().err
    else:
        assert says in _one_line_error(argv, capsys)
    assert not (tmp_path / "out").exists()


def test_bad_similarity_inputs_stop_in_one_line(searches: dict[str, tuple[Path, Any]], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    enas = str(searches["enas"][0])
    out = ["--out", str(tmp_path / "out")]
    assert "no such folder" in _one_line_error(["controller-similarity", str(tmp_path / "nope"), *out], capsys)
    said = _one_line_error(["controller-similarity", enas, "--strategies", "darts", *out], capsys)
    assert "unknown strategy 'darts'" in said and "enas,enas-memory" in said
    assert "--samples must be" in _one_line_error(["controller-similarity", enas, "--samples", "1", *out], capsys)
    darts = tmp_path / "darts"
    darts.mkdir()
    (darts / "metrics.json").write_text(json.dumps({"config": {"strategy": "darts", "seed": 0}, "status": "finished"}))
    assert "no controller" in _one_line_error(["controller-similarity", str(darts), *out], capsys)
    assert "holds no finished search" in _one_line_error(["controller-similarity", str(tmp_path), *out], capsys)
    assert not (tmp_path / "out").exists()


def test_memory_options_are_checked_where_enas_memory_is_built() -> None:
    from hmnas_nni.experiments.trial import build_config
    from hmnas_nni.search.enas_memory import MemoryENAS

    config = build_config({}, {"strategy": "enas-memory", "memory_buffer": 8})  # what an NNI trial receives
    assert config.memory_buffer == 8
    for bad in ({"memory_buffer": -1}, {"memory_buffer": 8, "replay_top": 0}, {"memory_buffer": 8, "replay_lr": 0.0}):
        with pytest.raises(ValueError, match="must be"):
            MemoryENAS(**bad)
