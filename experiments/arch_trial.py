"""NNI trial that trains one architecture of a space: what a multi-trial tuner (AG-Net's, or NNI's Random, Evolution,
TPE) runs under ``nnictl`` (``experiments/agnet.yml``).

The trial reads its sample, ``{label: value}`` for every choice of the space, with ``nni.get_next_parameter()``
(or takes it as an argument outside NNI), trains the frozen network as :mod:`~hmnas_nni.experiments.multitrial`'s
trials do, writes ``metrics.json`` to the trial's output folder and reports ``{"default": accuracy, "accuracy",
"latency", "params"}`` to NNI, whose web UI shows every key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.files import write_json
from hmnas_nni.format.outputs import OutputFolder

from .multitrial import MultiTrialPlan, plan_inputs, train_and_measure
from .trial import _reporter, in_nni


def check_sample(space: Any, sample: Any) -> dict[str, Any]:
    """``sample`` as a full, valid choice of every label of ``space``, or a one-line error naming the problem."""
    choices = space.simplify()
    if not isinstance(sample, dict):
        raise UsageError(f"the sample must be a JSON object {{label: value}}, got {type(sample).__name__}")
    missing, unknown = sorted(set(choices) - set(sample)), sorted(set(sample) - set(choices))
    if missing or unknown:
        raise UsageError(f"the sample does not fit the space: missing {missing}, unknown {unknown}; the search-space "
                         "file must come from the same space and arguments (hmnas_nni.experiments.multitrial."
                         "nni_search_space)")
    for label, value in sample.items():
        if value not in choices[label].values:
            raise UsageError(f"sample {label}={value!r} is not one of {list(choices[label].values)}")
    return dict(sample)


def run_arch_trial(plan: MultiTrialPlan, sample: dict[str, Any] | None = None, out: str | Path | None = None,
                   force: bool = False) -> dict[str, float]:
    """Train the sample NNI (or ``sample``) gives; write ``metrics.json`` to ``out`` (NNI's trial folder under NNI)."""
    import nni

    nni_run = in_nni()
    if nni_run:
        sample = nni.get_next_parameter()
        out = os.environ.get("NNI_OUTPUT_DIR", out)
    if out is None:
        raise UsageError("an output folder is needed outside NNI: pass out (--out)")
    report = _reporter(nni_run)
    plan.check()
    space, data = plan_inputs(plan)
    sample = check_sample(space, sample)
    with OutputFolder(out, "hmnas arch-trial", force=force) as folder:
        metrics = train_and_measure(space.freeze(sample), data, plan)
        write_json(folder.staged("metrics.json"), {"sample": sample, "metrics": metrics, "plan": vars(plan)})
        folder.commit("metrics.json")
    report("final", metrics)
    return metrics
