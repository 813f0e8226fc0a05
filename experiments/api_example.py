"""HM-NAS next to NNI's DARTS through NNI's Python API: same space, same data, both exported architectures printed.

    python -m hmnas_nni.experiments.api_example --epochs 4 --subset 512

A one-shot ``NasExperiment`` starts no NNI manager and no web UI; for those, run the same search as
nnictl trials (``experiments/hmnas.yml``, see ``docs/experiments.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from hmnas_nni.spaces import ProjectSpace
from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.strategy import DARTS

from hmnas_nni import HMNAS
from hmnas_nni.search.run import SearchConfig, search_inputs, seed_everything, to_architecture


def space_and_evaluator(config: SearchConfig) -> tuple[ProjectSpace, Classification]:
    """The model space and data halves ``run_search`` uses for ``config``, under a plain Lightning evaluator."""
    seed_everything(config.seed)
    space, train_split, val_split, info = search_inputs(config)
    generator = torch.Generator().manual_seed(config.seed)
    evaluator = Classification(
        train_dataloaders=DataLoader(train_split, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                     generator=generator),
        val_dataloaders=DataLoader(val_split, batch_size=config.batch_size, shuffle=True, drop_last=True),
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, num_classes=info.num_classes,
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=config.out,
    )
    return space, evaluator


def search(config: SearchConfig, strategy: Any, name: str) -> dict[str, Any]:
    """Run ``NasExperiment(space, evaluator, strategy)``; return NNI's exported sample and our architecture JSON."""
    space, evaluator = space_and_evaluator(config)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str((Path(config.out) / "nni").resolve())
    experiment.run()
    sample = experiment.export_top_models(formatter="dict")[0]
    experiment.stop()  # now, rather than at interpreter exit
    return {"nni_export": sample, "architecture": to_architecture(sample, space, name).to_dict()}


def main(argv: list[str] | None = None) -> int:
    """Search with HM-NAS, then with DARTS; print both architectures and write them to ``out/architectures.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--subset", type=int, default=512, help="training images used (half weights, half arch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/python-api")
    args = parser.parse_args(argv)
    config = SearchConfig(space=args.space, dataset=args.dataset, epochs=args.epochs, subset=args.subset,
                          seed=args.seed, out=args.out, progress=False)
    try:
        config.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warmup, arch_epochs = config.schedule()

    hmnas = HMNAS(arc_learning_rate=config.arc_lr, mask_learning_rate=config.mask_lr, warmup_epochs=warmup,
                  arch_epochs=arch_epochs, tau=config.tau, mask_init=config.mask_init, sparsity=config.sparsity)
    darts = DARTS(arc_learning_rate=config.arc_lr, warmup_epochs=warmup)
    results = {"hmnas": search(config, hmnas, "hmnas"), "darts": search(config, darts, "darts")}
    saved = Path(config.out) / "architectures.json"
    saved.write_text(json.dumps(results, indent=2, default=str) + "\n")
    for name, result in results.items():
        print(f"== {name}: NNI export")
        print(json.dumps(result["nni_export"], indent=2, default=str))
        print(f"== {name}: architecture document (hmnas-architecture/1)")
        print(json.dumps(result["architecture"], indent=2))
    print(f"both written to {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
