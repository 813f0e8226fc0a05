"""What a search runs on: the two data halves and the model space sized from the data, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil
import torch
from torch.utils.data import TensorDataset

from hmnas_nni.format.errors import ResourceError, UsageError
from hmnas_nni.spaces import SpaceError, build_space, data_args, fit_input

from .data import DatasetInfo, load_dataset, search_splits

#: Bytes of training state per float32 parameter: the weight, its gradient and Adam's two moments.
TRAIN_BYTES_PER_PARAM = 16


@dataclass
class SearchInputs:
    """The space, the weight-training half, the architecture half and what the dataset is."""

    space: torch.nn.Module
    train: TensorDataset
    val: TensorDataset
    info: DatasetInfo


def search_inputs(config: Any) -> SearchInputs:
    """The space and the two data halves a search of ``config`` uses (space size taken from the data)."""
    train, _test, info = load_dataset(config.dataset, config.data_root)
    if config.subset is not None and config.subset > len(train):
        raise UsageError(f"subset {config.subset} is more than the {len(train):,} training images of "
                         f"{config.dataset}; pass --subset {len(train)} or less, or leave it out to use them all")
    train_split, val_split = search_splits(train, config.subset, config.seed)
    for name, split in (("training", train_split), ("validation", val_split)):
        if len(split) < config.batch_size:
            raise UsageError(f"the {name} half of the data has {len(split)} images, fewer than one batch "
                             f"(--batch-size {config.batch_size}); raise --subset or lower --batch-size")
    from_data = {"in_channels": info.in_channels, "input_size": info.input_size, "num_classes": info.num_classes}
    try:
        args = data_args(config.space, config.space_args, from_data, config.dataset)
        check_memory(config.space, args, config.accelerator)
        shape = (info.in_channels, info.input_size, info.input_size)
        space = fit_input(build_space(config.space, **args), shape)
    except SpaceError as e:
        raise UsageError(str(e)) from None
    space.hmnas_input_shape = list(shape)  # recorded in every architecture the search exports
    return SearchInputs(space, train_split, val_split, info)


def check_memory(space: str, args: dict[str, Any], accelerator: str) -> None:
    """Refuse a space whose training state alone does not fit the memory free here (sized without allocating)."""
    with torch.device("meta"):
        probe = build_space(space, **args)
    params = sum(p.numel() for p in probe.parameters())
    need = params * TRAIN_BYTES_PER_PARAM
    where, free = _free_memory(accelerator)
    if need > free:
        raise ResourceError(f"space {space!r} with {args} has {params:,} parameters: training it needs at least "
                            f"{need / 2**30:.1f} GiB (weights, gradients, Adam state), and {where} has "
                            f"{free / 2**30:.1f} GiB free; lower channels (or cells) in --space-args")


def _free_memory(accelerator: str) -> tuple[str, int]:
    """Where the supernet will live and how many bytes are free there."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return "the GPU", int(free)
    return "this machine", int(psutil.virtual_memory().available)
