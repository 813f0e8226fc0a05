"""``nnictl create --config experiments/agnet.yml`` (and ``nases.yml``): the strategy's tuner proposes, `hmnas
arch-trial` trains, NNI's manager and REST API see every trial with its accuracy, latency and parameters (real NNI,
shrunk to digits)."""

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


#: Each tuner's config and its arguments shrunk for a test.
SMALL = {"agnet.yml": {"initial_queries": 2, "queries_per_round": 1, "pretrain_samples": 200, "pretrain_epochs": 5},
         "nases.yml": {"batch_size": 2, "pretrain_samples": 200, "pretrain_epochs": 5}}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_search_space_file_is_the_trial_spaces_choices(name: str) -> None:
    config = yaml.safe_load((EXPERIMENTS / name).read_text())
    argv = shlex.split(config["trialCommand"])
    space_args = json.loads(argv[argv.index("--space-args") + 1])
    plan = MultiTrialPlan(space=argv[argv.index("--space") + 1], space_args=space_args, dataset="digits")
    shipped = json.loads((EXPERIMENTS / config["searchSpaceFile"]).read_text())
    assert shipped == nni_search_space(plan_inputs(plan)[0])


@pytest.fixture(scope="module", params=sorted(SMALL))
def experiment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Experiment]:
    tmp_path = tmp_path_factory.mktemp(request.param.removesuffix(".yml") + "-nnictl")
    source = yaml.safe_load((EXPERIMENTS / request.param).read_text())
    tuner = {**source["tuner"], "codeDirectory": str((EXPERIMENTS / source["tuner"]["codeDirectory"]).resolve()),
             "classArgs": {**source["tuner"]["classArgs"], **SMALL[request.param]}}
    config, workdir = write_config(EXPERIMENTS / request.param, tmp_path, trialCommand=TRIAL, maxTrialNumber=4,
                                   tuner=tuner)
    with run_experiment(config, workdir, nni_env(tmp_path), timeout=900) as exp:
        yield exp


def test_trials_report_accuracy_latency_and_params(experiment: Experiment) -> None:
    exp = experiment
    assert exp.status["status"] in {"DONE", "TUNER_NO_MORE_TRIAL"}, f"{exp.status}\n{exp.logs()}"
    assert len(exp.trials) == 4, exp.trials
    samples = []
    for trial in exp.trials:
        assert trial["status"] == "SUCCEEDED", f"{trial}\n{exp.logs()}"
        finals = metric_values(exp, trial["trialJobId"], "FINAL")
        assert len(finals) == 1 and set(finals[0]) == {"default", "accuracy", "latency", "params"}, finals
        written = json.loads((Path(trial["logPath"]) / "metrics.json").read_text())
        assert written["metrics"] == finals[0]  # the record is what NNI was told
        samples.append(json.loads(trial["hyperParameters"][0])["parameters"])
        assert samples[-1] == written["sample"]
    assert len({json.dumps(s, sort_keys=True) for s in samples}) == 4  # no queried sample is proposed again
