"""``nnictl create --config experiments/agnet.yml`` (and ``nases.yml``, ``autometa.yml``): the strategy's tuner
proposes, `hmnas arch-trial` trains (or meta-trains with MAML), NNI's manager and REST API see every trial with its
metrics (real NNI, shrunk to digits, or to a few Fashion-MNIST episodes)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hmnas_nni.experiments.multitrial import MultiTrialPlan, nni_search_space, plan_inputs
from tests.test_nnictl import EXPERIMENTS, Experiment, metric_values, nni_env, run_experiment, write_config

pytestmark = pytest.mark.integration
TRIAL = ("python3 -m hmnas_nni.cli arch-trial --space nb201 --space-args '{\"channels\": 8}' --dataset digits "
         "--subset 256 --epochs 1 --batch-size 32 --seed 0")
META_TRIAL = ("python3 -m hmnas_nni.cli arch-trial --space meta-cells --dataset fashion-mnist --evaluator maml "
              "--images-per-class 30 --iterations 2 --meta-batch 1 --inner-steps 1 --val-episodes 3 "
              "--test-episodes 3 --test-inner-steps 1 --seed 0")
TRAINED = {"default", "accuracy", "latency", "params"}
META_TRAINED = TRAINED | {"val_ci95", "meta_train_seconds", "test_accuracy", "test_ci95", "digits_accuracy",
                          "digits_ci95"}

#: Each tuner's config: its arguments shrunk for a test, the shrunk trial command, the keys every trial reports.
SMALL = {"agnet.yml": ({"initial_queries": 2, "queries_per_round": 1, "pretrain_samples": 200, "pretrain_epochs": 5},
                       TRIAL, TRAINED),
         "nases.yml": ({"batch_size": 2, "pretrain_samples": 200, "pretrain_epochs": 5}, TRIAL, TRAINED),
         "autometa.yml": ({"initial_queries": 2, "queries_per_round": 1, "beam": 1}, META_TRIAL, META_TRAINED)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_search_space_file_is_the_trial_spaces_choices(name: str) -> None:
    config = yaml.safe_load((EXPERIMENTS / name).read_text())
    argv = shlex.split(config["trialCommand"])
    space_args = json.loads(argv[argv.index("--space-args") + 1]) if "--space-args" in argv else None
    plan = MultiTrialPlan(space=argv[argv.index("--space") + 1], space_args=space_args, dataset="digits")
    shipped = json.loads((EXPERIMENTS / config["searchSpaceFile"]).read_text())
    assert shipped == nni_search_space(plan_inputs(plan)[0])


@pytest.fixture(scope="module", params=sorted(SMALL))
def experiment(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Experiment, set[str]]]:
    tmp_path = tmp_path_factory.mktemp(request.param.removesuffix(".yml") + "-nnictl")
    source = yaml.safe_load((EXPERIMENTS / request.param).read_text())
    tuner = {**source["tuner"], "codeDirectory": str((EXPERIMENTS / source["tuner"]["codeDirectory"]).resolve()),
             "classArgs": {**source["tuner"]["classArgs"], **SMALL[request.param][0]}}
    config, workdir = write_config(EXPERIMENTS / request.param, tmp_path, trialCommand=SMALL[request.param][1],
                                   maxTrialNumber=4, tuner=tuner)
    with run_experiment(config, workdir, nni_env(tmp_path), timeout=900) as exp:
        yield exp, SMALL[request.param][2]


def test_trials_report_accuracy_latency_and_params(experiment: tuple[Experiment, set[str]]) -> None:
    exp, keys = experiment
    assert exp.status["status"] in {"DONE", "TUNER_NO_MORE_TRIAL"}, f"{exp.status}\n{exp.logs()}"
    assert len(exp.trials) == 4, exp.trials
    samples = []
    for trial in exp.trials:
        assert trial["status"] == "SUCCEEDED", f"{trial}\n{exp.logs()}"
        finals = metric_values(exp, trial["trialJobId"], "FINAL")
        assert len(finals) == 1 and set(finals[0]) == keys, finals
        written = json.loads((Path(trial["logPath"]) / "metrics.json").read_text())
        assert written["metrics"] == finals[0]  # the record is what NNI was told
        samples.append(json.loads(trial["hyperParameters"][0])["parameters"])
        assert samples[-1] == written["sample"]
    assert len({json.dumps(s, sort_keys=True) for s in samples}) == 4  # no queried sample is proposed again
