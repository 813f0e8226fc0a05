"""HM-NAS next to NNI's DARTS through NNI's Python API: same space, same data, both exported architectures printed.

    python -m hmnas_nni.experiments.api_example            # or call run_example(SearchConfig(...)) from Python

A one-shot ``NasExperiment`` starts no NNI manager and no web UI; for those, run the same search as
nnictl trials (``experiments/hmnas.yml``, see ``docs/experiments.md``). The strategies come from the
project's one registry (:func:`hmnas_nni.search.strategies.make_strategy`), as in ``hmnas search``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment

from hmnas_nni.format.files import write_json
from hmnas_nni.nas.rebuild import architecture_of
from hmnas_nni.search.config import SearchConfig
from hmnas_nni.search.inputs import search_inputs
from hmnas_nni.search.run import seed_everything
from hmnas_nni.search.strategies import make_strategy

#: What ``python -m hmnas_nni.experiments.api_example`` searches: a few epochs of nb201 on digits.
EXAMPLE = SearchConfig(space="nb201", dataset="digits", epochs=4, subset=512, out="runs/python-api", progress=False)


def evaluator(config: SearchConfig, inputs: Any) -> Classification:
    """A plain NNI Lightning evaluator over the data halves ``run_search`` uses for ``config``."""
    generator = torch.Generator().manual_seed(config.seed)
    return Classification(
        train_dataloaders=DataLoader(inputs.train, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                     generator=generator),
        val_dataloaders=DataLoader(inputs.val, batch_size=config.batch_size, shuffle=True, drop_last=True),
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, num_classes=inputs.info.num_classes,
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=config.out,
    )


def search(config: SearchConfig) -> dict[str, Any]:
    """Run ``NasExperiment(space, evaluator, strategy)``; return NNI's exported sample and our architecture JSON."""
    seed_everything(config.seed)
    inputs = search_inputs(config)
    experiment = NasExperiment(inputs.space, evaluator(config, inputs), make_strategy(config))
    experiment.config.experiment_working_directory = str((Path(config.out) / "nni").resolve())
    experiment.run()
    sample = experiment.export_top_models(formatter="dict")[0]
    experiment.stop()  # now, rather than at interpreter exit
    return {"nni_export": sample, "architecture": architecture_of(sample, inputs.space, config.strategy).to_dict()}


def run_example(config: SearchConfig = EXAMPLE) -> dict[str, Any]:
    """Search with HM-NAS, then with DARTS; print both architectures and write them to ``out/architectures.json``."""
    config.validate()
    results = {name: search(dataclasses.replace(config, strategy=name)) for name in ("hmnas", "darts")}
    saved = write_json(Path(config.out) / "architectures.json", results)
    for name, result in results.items():
        print(f"== {name}: NNI export")
        print(json.dumps(result["nni_export"], indent=2, default=str))
        print(f"== {name}: architecture document (hmnas-architecture/1)")
        print(json.dumps(result["architecture"], indent=2))
    print(f"both written to {saved}")
    return results


if __name__ == "__main__":
    run_example()
