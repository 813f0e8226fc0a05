"""The weight level: value choices inside NNI's mutable layers (``MutableConv2d``, ``MutableLinear``,
``MutableBatchNorm2d``, ``MutableLayerNorm``, ``MutableMultiheadAttention``) under HM-NAS's step masks.

NNI's own mixed operations (its super-kernels, which slice a prefix of channels and a centre of kernels) do
the weight sharing; :class:`HMNASValuePolicy` is the sampling policy that feeds them a one-hot weight per
candidate from :class:`~hmnas_nni.nas.supermodules.values.ValueMasks`, so a masked-out step zeroes its
channels (or kernel ring) in the supernet while its gradient still reaches the mask. Every layer that uses a
label (a width and the next layer's input, both sides of a residual add) reads the same masks, so shared
widths stay consistent. The derived layer is NNI's ``freeze`` of the super-kernel at the chosen values:
weights sliced, a physically smaller layer.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from nni.nas.oneshot.pytorch.supermodule._expression_utils import traverse_all_options
from nni.nas.oneshot.pytorch.supermodule.operation import (
    NATIVE_MIXED_OPERATIONS,
    MixedOperation,
    MixedOperationSamplingPolicy,
)

from hmnas_nni.format.architecture import Architecture

from .values import ValueMasks


def shared_value_masks(memo: dict[str, Any], label: str, values: list[Any], settings: dict[str, Any]) -> ValueMasks:
    """The step masks of value choice ``label``, one object for every module that uses it."""
    key = f"{label}#values"
    if key not in memo:
        memo[key] = ValueMasks(list(values), settings["mask_init"], settings["tau"], label)
    return memo[key]


class HMNASValuePolicy(MixedOperationSamplingPolicy):
    """NNI's mixed-operation policy for HM-NAS: each argument is its candidates' one-hot mask weights."""

    def __init__(self, operation: MixedOperation, memo: dict[str, Any], mutate_kwargs: dict[str, Any]) -> None:
        operation.value_masks = nn.ModuleDict({
            _key(label): shared_value_masks(memo, label, mutable.values, mutate_kwargs)
            for label, mutable in operation.simplify().items()
        })

    def resample(self, operation: MixedOperation, memo: dict[str, Any]) -> dict[str, Any]:
        return {}

    def export(self, operation: MixedOperation, memo: dict[str, Any]) -> dict[str, Any]:
        """The candidate the masks pick for each label of this layer."""
        return {m.label: m.chosen() for m in operation.value_masks.values() if m.label not in memo}

    def export_probs(self, operation: MixedOperation, memo: dict[str, Any]) -> dict[str, Any]:
        return {m.label: {v: float(w) for v, w in m.weights().items()} for m in operation.value_masks.values()
                if m.label not in memo}

    def forward_argument(self, operation: MixedOperation, name: str) -> Any:
        if name not in operation.mutable_arguments:
            return operation.init_arguments[name]
        weights = {m.label: m.weights() for m in operation.value_masks.values()}
        return dict(traverse_all_options(operation.mutable_arguments[name], weights=weights))


def _key(label: str) -> str:
    """A label as a ``ModuleDict`` key (which may not hold dots)."""
    return label.replace(".", "__")


class DerivableOperation:
    """Mixin for NNI's mixed operations under :class:`HMNASValuePolicy`: the derived layer is the super-kernel
    frozen at the values ``arch`` chose, with its weights sliced."""

    def derive(self, arch: Architecture) -> nn.Module:
        labels = [m.label for m in self.value_masks.values()]
        missing = [label for label in labels if label not in arch.values]
        if missing:
            raise ValueError(f"architecture has no value for {missing}, which a layer of the space uses")
        sample = {label: arch.values[label] for label in labels}
        arguments = {**self.init_arguments, **{k: v.freeze(sample) for k, v in self.mutable_arguments.items()}}
        if "kernel_size" in self.mutable_arguments:
            arguments["padding"] = self._cropped_padding(arguments["kernel_size"])
        layer = self.bound_type(**arguments)
        # NNI's freeze_weight names an absent bias as None; the frozen layer has no such entry
        layer.load_state_dict({k: v for k, v in self.freeze_weight(**arguments).items() if v is not None})
        return layer.train(self.training)

    def _cropped_padding(self, kernel: int | tuple[int, int]) -> tuple[int, int]:
        """The padding that keeps a centre-cropped kernel where the super-kernel was: the supernet pads for its
        largest kernel (as NNI's mixed convolution does), so a kernel ``2r`` smaller needs ``r`` less padding."""
        k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        return tuple(p - (big - small) // 2 for p, big, small in zip(self.padding, self.kernel_size, k))

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
        """Relax only the layers that hold a choice (NNI's own hook turns every mutable layer into a super-kernel)."""
        if not getattr(module, "mutables", None):
            return None
        return super().mutate(module, name, memo, {**mutate_kwargs, "mixed_op_sampling": HMNASValuePolicy})


#: One derivable class per mixed operation NNI ships (MixedConv2d, MixedLinear, MixedBatchNorm2d, ...).
HMNAS_MIXED_OPERATIONS = [type(f"HMNAS{op.__name__}", (DerivableOperation, op),
                               {"__doc__": op.__doc__, "__module__": __name__}) for op in NATIVE_MIXED_OPERATIONS]
