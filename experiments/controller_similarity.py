"""``hmnas controller-similarity``: does a trained ENAS controller's hidden state encode the architectures it samples?

The diagnostic of Adam & Lorraine (2019) on the project's searches: for every finished ``enas`` or ``enas-memory``
search (a search folder, or every such run of an ``hmnas compare`` folder) the controller is restored from the
search's last checkpoint, draws ``samples`` architectures, and for every pair of the distinct ones we take

- the distance of their hidden states: Euclidean, between the controller's states after reading all of each
  architecture's choices (``hmnas_nni.search.controller.hidden_states``);
- their graph edit distance: how many of the space's simplified choices differ (a choice is an op of an edge for
  ``nb201``: one edit replaces one edge's op).

A controller whose state encodes its past choices puts architectures that differ in more choices further apart:
the Pearson (and Spearman) correlation of the two distances over all pairs is the measure. Pairs of identical
architectures are left out (they are at distance 0 in both, and a controller that repeats itself would score
well by repeating). A controller that has concentrated on a few architectures is measured on few, close ones, so
each trained controller is also measured on ``samples`` architectures drawn uniformly from the space (the same
draws for every run), and an untrained controller of the same shape (seeded with the run's seed) on its own
samples: the reference that training should move away from. Writes ``controller_similarity.json`` and
``controller_similarity.png`` to ``--out``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.files import write_atomic, write_json
from hmnas_nni.format.outputs import OutputFolder, check_out_path

from .controller_similarity_report import draw, record

#: Strategies whose searches have a controller to measure.
CONTROLLED = ("enas", "enas-memory")
RESULTS = ("controller_similarity.json", "controller_similarity.png")
MIN_SAMPLES = 3


# --------------------------------------------------------------------------- plan
def make_plan(folders: Sequence[str], strategies: str | Sequence[str] = CONTROLLED, samples: int = 200,
              seed: int = 0, data_root: str | None = None, out: str | None = None, force: bool = False,
              command: str = "") -> dict[str, Any]:
    """Every input checked and every search folder found before any work; a JSON-able plan."""
    names = [s.strip() for s in strategies.split(",") if s.strip()] if isinstance(strategies, str) else \
        list(strategies)
    unknown = [s for s in names if s not in CONTROLLED]
    if unknown or not names:
        raise UsageError(f"unknown strategy {', '.join(map(repr, unknown)) or '(none given)'} for --strategies; only "
                         f"searches with a controller can be measured: choose from {','.join(CONTROLLED)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < MIN_SAMPLES:
        raise UsageError(f"--samples must be an integer >= {MIN_SAMPLES} (architectures per controller), "
                         f"got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be an integer in 0 .. 2**32-1, got {seed!r}")
    if not folders:
        raise UsageError("no folder given; pass the --out folder of an `hmnas search --strategy enas|enas-memory` "
                         "or of an `hmnas compare` run")
    out = str(out if out is not None else "runs/controller-similarity")
    check_out_path(out)
    runs = [run for folder in folders for run in find_runs(Path(folder), names)]
    return {"runs": runs, "strategies": names, "samples": samples, "seed": seed, "data_root": data_root,
            "out": out, "force": force, "command": command}


def find_runs(folder: Path, strategies: Sequence[str]) -> list[dict[str, Any]]:
    """The finished searches of ``strategies`` in ``folder``: itself (a search folder) or its ``runs/*/search``."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder; pass the --out folder of an `hmnas search --strategy "
                         "enas|enas-memory` or of an `hmnas compare` run")
    if (folder / "metrics.json").is_file():
        return [_search_run(folder, strategies, explicit=True)]
    found = [_search_run(s, strategies, explicit=False) for s in sorted(folder.glob("runs/*/search"))
             if (s / "metrics.json").is_file()]
    found = sorted((run for run in found if run is not None),
                   key=lambda run: (list(strategies).index(run["strategy"]), run["seed"]))
    if not found:
        raise UsageError(f"{folder} holds no finished search of {' or '.join(strategies)} (no metrics.json there nor "
                         "in runs/*/search/); pass a search folder or an `hmnas compare` folder that ran them")
    return found


def _search_run(folder: Path, strategies: Sequence[str], explicit: bool) -> dict[str, Any] | None:
    """One search folder as a run of the plan; an explicit folder of another strategy is refused, not skipped."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = metrics["config"]
        strategy = config["strategy"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{folder / 'metrics.json'} is not the metrics file of an `hmnas search`; pass the --out "
                         "folder of a search") from None
    if strategy not in strategies:
        if not explicit:
            return None
        raise UsageError(f"{folder}: a search of --strategy {strategy}, which has no controller to measure (or is "
                         f"left out by --strategies); pass searches of {' or '.join(strategies)}")
    if metrics.get("status") != "finished":
        raise UsageError(f"{folder}: that search did not finish (status {metrics.get('status')!r}); finish it with "
                         f"`hmnas search --resume {folder}` or leave the folder out")
    if not (folder / "checkpoints" / "last.ckpt").is_file():
        raise UsageError(f"{folder}: no checkpoints/last.ckpt, where the trained controller is; run the search again")
    return {"folder": str(folder), "strategy": strategy, "seed": int(config["seed"]),
            "memory_buffer": config.get("memory_buffer")}


# --------------------------------------------------------------------------- running
def run_similarity(plan: dict[str, Any], log: Callable[[str], None] = print) -> int:
    """Measure every run of ``plan`` and write the JSON record and the plot (0; a run that fails raises)."""
    from hmnas_nni.search.nni_enas import enas_missing

    missing = enas_missing()
    if missing:
        raise UsageError(missing)
    with OutputFolder(plan["out"], "hmnas controller-similarity", force=plan["force"]) as folder:
        rows = []
        for k, run in enumerate(plan["runs"], 1):
            row = {**run, **measure_run(run, plan)}
            rows.append(row)
            log(f"[{k}/{len(plan['runs'])}] {run['strategy']} seed {run['seed']}: {_row_line(row)}")
        doc = record(plan, rows)
        write_atomic(folder.staged(RESULTS[1]), draw(rows, doc["summary"]))
        write_json(folder.staged(RESULTS[0]), doc)
        folder.commit(RESULTS[0])
    for name, summary in doc["summary"].items():
        log(f"{name}: Pearson {_fmt(summary['pearson_mean'])} ± {_fmt(summary['pearson_std'], sign='')} over "
            f"{summary['runs']} run(s) (on uniform architectures {_fmt(summary['uniform_pearson_mean'])}, "
            f"untrained controller {_fmt(summary['untrained_pearson_mean'])})")
    log(f"wrote {Path(plan['out']) / RESULTS[0]}, {RESULTS[1]}")
    return 0


def _fmt(value: float | None, sign: str = "+") -> str:
    """A correlation for the log (n/a where it is undefined)."""
    return "n/a" if value is None else f"{value:{sign}.3f}"


def _row_line(row: dict[str, Any]) -> str:
    """One log line for a measured run."""
    trained, untrained = row["trained"], row["untrained"]
    return (f"Pearson {_fmt(trained['pearson'])} (on uniform architectures {_fmt(row['trained_uniform']['pearson'])}"
            f", untrained controller {_fmt(untrained['pearson'])}), "
            f"{trained['distinct']} distinct of {trained['samples']}, entropy {trained['entropy']:.2f} nats/choice")


def measure_run(run: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The trained controller on its own samples and on uniform ones; an untrained one of the same shape on its own."""
    from hmnas_nni.search.controller import sample

    trained, num_choices, labels = restore_controller(Path(run["folder"]), plan["data_root"])
    untrained = fresh_controller(num_choices, run["seed"])
    n, seed = plan["samples"], plan["seed"]
    own, entropy = sample(trained, num_choices, n, torch.Generator().manual_seed(seed))
    theirs, untrained_entropy = sample(untrained, num_choices, n, torch.Generator().manual_seed(seed))
    return {"labels": labels, "num_choices": list(num_choices),
            "trained": {**pair_statistics(trained, own, num_choices, seed), "entropy": float(entropy.mean()),
                        "step_entropy": entropy.tolist()},
            "trained_uniform": pair_statistics(trained, uniform(num_choices, n, seed), num_choices, seed),
            "untrained": {**pair_statistics(untrained, theirs, num_choices, seed),
                          "entropy": float(untrained_entropy.mean())}}


def uniform(num_choices: Sequence[int], samples: int, seed: int) -> torch.Tensor:
    """``samples`` architectures drawn uniformly from the space (every choice independent): (samples, n)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(n, (samples,), generator=g) for n in num_choices], dim=1)


# --------------------------------------------------------------------------- controllers
def restore_controller(folder: Path, data_root: str | None) -> tuple[torch.nn.Module, list[int], list[str]]:
    """The actor of the search's controller as its last checkpoint holds it, its steps' sizes and their labels."""
    from nni.nas.strategy._rl_impl import TuningTrajectoryGenerator

    from hmnas_nni.search.config import SearchConfig
    from hmnas_nni.search.controller import actor_of
    from hmnas_nni.search.inputs import search_inputs
    from hmnas_nni.search.resume import read_checkpoint, saved_config
    from hmnas_nni.search.strategies import make_strategy

    path = folder / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(path)
    values = saved_config(ckpt, path)
    if data_root is not None:
        values["data_root"] = data_root
    config = SearchConfig.from_dict(values)
    # the controller's steps follow the labels of the supernet the strategy made, as in the search
    supernet = make_strategy(config).mutate_model(copy.deepcopy(search_inputs(config).space))
    generator = TuningTrajectoryGenerator(supernet)
    state = {k.removeprefix("_policy."): v for k, v in ckpt["state_dict"].items() if k.startswith("_policy.")}
    if not state:
        raise UsageError(f"{path} holds no ENAS controller (no _policy.* weights); pass an enas or enas-memory search")
    try:
        generator.policy.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"{path}: its controller does not fit the space the search config builds "
                         f"({str(e).splitlines()[0][:160]}); pass the search's own --data-root") from None
    return actor_of(generator.policy).eval(), list(generator.num_choices), [lb for lb, _ in generator.search_labels]


def fresh_controller(num_choices: Sequence[int], seed: int) -> torch.nn.Module:
    """The actor of an untrained NNI ENAS controller for steps of ``num_choices``, initialised from ``seed``."""
    from nni.nas.strategy._rl_impl import TuningEnvironment, default_policy_fn

    from hmnas_nni.search.controller import actor_of

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        policy = default_policy_fn(TuningEnvironment(list(num_choices)))
    return actor_of(policy).eval()


# --------------------------------------------------------------------------- the measure
def pair_statistics(actor: torch.nn.Module, drawn: torch.Tensor, num_choices: Sequence[int],
                    seed: int) -> dict[str, Any]:
    """Keep the distinct architectures of ``drawn`` and correlate hidden-state distances with edit distances."""
    from hmnas_nni.search.controller import hidden_states

    distinct = torch.unique(drawn, dim=0)
    with torch.no_grad():
        states = hidden_states(actor, distinct.to(next(actor.parameters()).device), num_choices).double().cpu()
    edits, hidden = pair_distances(distinct.cpu(), states)
    pearson, spearman = correlations(edits, hidden)
    return {"samples": len(drawn), "distinct": len(distinct), "pairs": len(edits), "pearson": pearson,
            "spearman": spearman, "mean_edit_distance": float(edits.mean()) if len(edits) else None,
            "hidden_by_edit": _hidden_by_edit(edits, hidden), "points": _points(edits, hidden, seed)}


def pair_distances(actions: torch.Tensor, states: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Over every pair i < j: choices that differ, and the Euclidean distance of the hidden states."""
    i, j = torch.triu_indices(len(actions), len(actions), offset=1)
    edits = (actions[i] != actions[j]).sum(1).numpy().astype(float)
    hidden = (states[i] - states[j]).norm(dim=1).numpy()
    return edits, hidden


def correlations(edits: np.ndarray, hidden: np.ndarray) -> tuple[float | None, float | None]:
    """Pearson and Spearman correlation of the two distances; None where one of them does not vary."""
    from scipy.stats import pearsonr, spearmanr

    if len(edits) < 3 or np.ptp(edits) == 0 or np.ptp(hidden) == 0:
        return None, None
    return float(pearsonr(edits, hidden)[0]), float(spearmanr(edits, hidden)[0])


def _hidden_by_edit(edits: np.ndarray, hidden: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of the hidden-state distance at each edit distance (what the plot draws)."""
    return {str(int(e)): {"mean": float(hidden[edits == e].mean()), "std": float(hidden[edits == e].std()),
                          "pairs": int((edits == e).sum())} for e in np.unique(edits)}


def _points(edits: np.ndarray, hidden: np.ndarray, seed: int, keep: int = 400) -> list[list[float]]:
    """Up to ``keep`` pairs (edit, hidden distance) drawn at random, for the scatter plot."""
    chosen = np.random.default_rng(seed).permutation(len(edits))[:keep]
    return [[float(edits[k]), float(hidden[k])] for k in sorted(chosen)]
