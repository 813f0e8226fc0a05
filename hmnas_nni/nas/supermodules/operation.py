"""The weight level: value choices inside NNI's mutable layers (``MutableConv2d``, ``MutableLinear``,
``MutableBatchNorm2d``, ``MutableLayerNorm``, ``MutableMultiheadAttention``, and the mixed operations a space
brings itself, such as AutoFormer's class token and position embedding) under HM-NAS's step masks.

NNI's own mixed operations (its super-kernels, which slice a prefix of channels and a centre of kernels) do
the weight sharing; :class:`HMNASValuePolicy` is the sampling policy that feeds them a one-hot weight per
candidate from :class:`~hmnas_nni.nas.supermodules.values.ValueMasks`, so a masked-out step zeroes its
channels (or kernel ring) in the supernet while its gradient still reaches the mask. Every layer that uses a
label (a width and the next layer's input, both sides of a residual add) reads the same masks, so shared
widths stay consistent. The derived layer is NNI's ``freeze`` of the super-kernel at the chosen values:
weights sliced, a physically smaller layer.

Where a layer's output is not a weighted sum of its candidates' sliced weights (LayerNorm's statistics, attention's
head split), NNI's weighted form computes at the largest width, which the derived layer does not: HM-NAS's versions
compute at the chosen values (:meth:`DerivableOperation.mixture`), so the supernet computes the derived network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.nas.oneshot.pytorch.supermodule._expression_utils import traverse_all_options
from nni.nas.oneshot.pytorch.supermodule.operation import (
    NATIVE_MIXED_OPERATIONS,
    MixedLayerNorm,
    MixedMultiHeadAttention,
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


#: Arguments of NNI's mutable layers whose choices are not widths (NNI relaxes them only by sampling paths).
NOT_WIDTHS = {"MutableConv2d": ("stride", "dilation"), "MutableBatchNorm2d": ("eps", "momentum"),
              "MutableLayerNorm": ("eps",), "MutableMultiheadAttention": ("dropout",)}


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
        """Relax only the layers that hold a choice (NNI's own hook turns every mutable layer into a super-kernel);
        a choice of an argument that is not a width is refused here, not at the first forward pass."""
        if not getattr(module, "mutables", None):
            return None
        try:
            op = super().mutate(module, name, memo, {**mutate_kwargs, "mixed_op_sampling": HMNASValuePolicy})
        except (TypeError, NotImplementedError) as e:
            raise TypeError(f"a choice in {name!r} ({type(module).__name__}) is not supported by HMNAS: {e}") from None
        fixed = sorted(set(getattr(op, "mutable_arguments", {})) & set(NOT_WIDTHS.get(cls.bound_type.__name__, ())))
        if fixed:
            raise TypeError(f"a choice of {fixed} in {name!r} ({type(module).__name__}) is not supported by HMNAS: it "
                            "relaxes widths, kernel sizes and heads; fix those arguments or search with a sampling "
                            "strategy (NNI's ENAS, RandomOneShot)")
        return op

    def chosen_arguments(self) -> dict[str, Any]:
        """Each argument at the values the masks pick now (read from their live steps, no device sync)."""
        sample = {m.label: m.picked() for m in self.value_masks.values()}
        return {name: self.mutable_arguments[name].freeze(sample) if name in self.mutable_arguments
                else self.init_arguments.get(name) for name in self.argument_list}

    def mixture(self, arguments: dict[str, Any], run: Callable[[dict[str, Any]], Any]) -> Any:
        """``run`` at the values the masks chose, times their one-hot weight (1); while training, also at each other
        candidate of one argument at a time, times its weight (0): the chosen layer's output, with the gradient each
        candidate's weight has in the mixture of all candidates. ``arguments`` holds fixed values or, for a
        choice, ``{candidate: weight}``; ``run`` takes one value per argument and returns the output padded to the
        super-kernel's width."""
        weighted = {k: v for k, v in arguments.items() if isinstance(v, dict)}
        picked = self.chosen_arguments()
        chosen = {**arguments, **{k: picked[k] for k in weighted}}
        combos = [chosen]
        if torch.is_grad_enabled():
            combos += [{**chosen, k: c} for k, options in weighted.items() for c in options if c != chosen[k]]
        total = None
        for combo in combos:
            weight = math.prod(weighted[k][combo[k]] for k in weighted)
            total = _weighted_add(total, run(combo), weight)
        return total


def _weighted_add(total: Any, output: Any, weight: Any) -> Any:
    """``total + weight * output`` for a tensor or a tuple of tensors (``None`` entries stay ``None``)."""
    if isinstance(output, tuple):
        return tuple(_weighted_add(None if total is None else t, o, weight) for t, o in
                     zip(total or (None,) * len(output), output))
    if output is None:
        return None
    return output * weight if total is None else total + output * weight


def _pad_last(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` with zeros appended to its last dimension up to ``width`` (the super-kernel's)."""
    return F.pad(x, (0, width - x.shape[-1]))


class HMNASMixedLayerNorm(DerivableOperation, MixedLayerNorm):
    """``MutableLayerNorm`` with a width choice: normalised over the chosen width only, as the derived layer is
    (NNI's weighted form normalises over the largest width, zeros included)."""

    def forward_with_args(self, normalized_shape: Any, eps: float, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(normalized_shape, dict):
            return super().forward_with_args(normalized_shape, eps, inputs)
        if not all(isinstance(n, int) for n in normalized_shape):
            raise TypeError(f"a LayerNorm choice between shapes {list(normalized_shape)} is not supported by HMNAS: "
                            "it relaxes a choice of the last dimension's width (int candidates)")
        width = self.normalized_shape[-1]

        def run(args: dict[str, Any]) -> torch.Tensor:
            n = args["normalized_shape"]
            weight = None if self.weight is None else self.weight[:n]
            bias = None if self.bias is None else self.bias[:n]
            return _pad_last(F.layer_norm(inputs[..., :n], (n,), weight, bias, args["eps"]), width)

        return self.mixture({"normalized_shape": normalized_shape, "eps": eps}, run)


class HMNASMixedMultiHeadAttention(DerivableOperation, MixedMultiHeadAttention):
    """``MutableMultiheadAttention`` with choices of ``embed_dim``, ``num_heads``, ``kdim`` or ``vdim``: attention at
    the chosen widths and heads, as the derived layer computes it (NNI's weighted form splits the largest width
    into heads, and takes no choice of heads)."""

    def forward_with_args(self, embed_dim: Any, num_heads: Any, kdim: Any, vdim: Any, dropout: Any,
                          query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                          attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(dropout, dict):
            raise TypeError("a choice of attention dropout is not supported by HMNAS (it is not a width); fix it")
        parent = super()

        def run(args: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
            e = args["embed_dim"]
            q, k, v = query[..., :e], key[..., :args["kdim"] or e], value[..., :args["vdim"] or e]
            out, weights = parent.forward_with_args(e, args["num_heads"], args["kdim"], args["vdim"], dropout, q, k, v,
                                                    key_padding_mask, need_weights, attn_mask)
            return _pad_last(out, self.embed_dim), weights

        arguments = {"embed_dim": embed_dim, "num_heads": num_heads, "kdim": kdim, "vdim": vdim}
        if not any(isinstance(a, dict) for a in arguments.values()):
            return parent.forward_with_args(embed_dim, num_heads, kdim, vdim, dropout, query, key, value,
                                            key_padding_mask, need_weights, attn_mask)
        return self.mixture(arguments, run)


_DERIVABLE: dict[type, type] = {MixedLayerNorm: HMNASMixedLayerNorm,
                                MixedMultiHeadAttention: HMNASMixedMultiHeadAttention}


def derivable(op: type[MixedOperation]) -> type[MixedOperation]:
    """NNI's mixed operation ``op`` (one NNI ships, or one a space brings in its ``extra_oneshot_hooks``) under HM-NAS's
    value masks, with ``derive``: the exact version above where there is one, else ``op`` with
    :class:`DerivableOperation` mixed in (made once per ``op``)."""
    if op not in _DERIVABLE:
        _DERIVABLE[op] = type(f"HMNAS{op.__name__}", (DerivableOperation, op),
                              {"__doc__": op.__doc__, "__module__": __name__})
    return _DERIVABLE[op]


#: One derivable class per mixed operation NNI ships (MixedConv2d, MixedLinear, MixedBatchNorm2d, ...).
HMNAS_MIXED_OPERATIONS = [derivable(op) for op in NATIVE_MIXED_OPERATIONS]
