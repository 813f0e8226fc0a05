"""Masks binarize, pass gradients straight through, and a masked op is neither run nor counted."""

import torch
import torch.nn as nn
from nni.mutable import frozen_context
from nni.nas.nn.pytorch import LayerChoice

from hmnas_nni.nas.masks import MaskScores, binarize
from hmnas_nni.nas.supermodules import HMNASMixedInput, HMNASMixedLayer


def test_binarize_thresholds_and_passes_gradient_straight_through():
    s = torch.tensor([0.001, 0.005, 0.02], requires_grad=True)
    m = binarize(s, 5e-3)
    assert m.tolist() == [0.0, 1.0, 1.0]
    (m * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert s.grad.tolist() == [1.0, 2.0, 3.0]


def test_forced_entries_stay_on_and_removed_entries_stay_off():
    masks = MaskScores(3, init=1e-2, tau=5e-3)
    with torch.no_grad():
        masks.scores[:] = torch.tensor([0.0, 0.0, 1.0])
    masks.forced[0] = True
    masks.alive[2] = False
    assert masks().tolist() == [1.0, 0.0, 0.0]


class Counting(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.value


def _layer(values):
    ops = {f"op{i}": Counting(v) for i, v in enumerate(values)}
    alpha = nn.Parameter(torch.zeros(len(values)))
    with frozen_context():  # supermodules are built inside NNI's mutation context
        return HMNASMixedLayer(ops, alpha, MaskScores(len(values), 1e-2, 5e-3), "edge"), ops


def test_masked_op_is_not_executed_and_adds_nothing():
    layer, ops = _layer([1.0, 10.0, 100.0])
    x = torch.ones(2, 3)
    assert torch.allclose(layer(x), x * 37.0)  # softmax of zeros: 1/3 each
    layer.op_masks.live = [0, 2]  # op1 masked out
    y = layer(x)
    assert ops["op1"].calls == 1  # only the first, unmasked call
    assert torch.allclose(y, x * 50.5)  # renormalised over the live ops: (1 + 100) / 2


def test_mask_gradient_is_each_ops_own_contribution():
    layer, _ = _layer([1.0, -3.0])
    x = torch.ones(4, 2)
    layer(x).sum().backward()
    # d(sum of outputs)/dm_k = a_k * sum(op_k(x)) with a = softmax(0, 0) = 1/2
    assert torch.allclose(layer.op_masks.scores.grad, torch.tensor([0.5 * 8.0, 0.5 * -24.0]))


def test_removed_edge_outputs_zeros_of_the_right_shape_without_running_ops():
    layer, ops = _layer([1.0, 2.0])
    x = torch.ones(2, 5)
    layer(x)
    layer.op_masks.live = []
    y = layer(x)
    assert y.shape == (2, 5) and y.abs().sum() == 0
    assert all(op.calls == 1 for op in ops.values())


def test_input_choice_masks_inputs_and_keeps_any_number():
    beta = nn.Parameter(torch.zeros(3))
    with frozen_context():
        choice = HMNASMixedInput(3, 2, beta, MaskScores(3, 1e-2, 5e-3), "node")
    xs = [torch.full((1, 2), v) for v in (1.0, 2.0, 6.0)]
    assert torch.allclose(choice(xs), torch.full((1, 2), 3.0))  # all three inputs, no top-2
    choice.edge_masks.live = [2]
    assert torch.allclose(choice(xs), torch.full((1, 2), 6.0))
    assert choice.export({}) == {"node": [{"input": 2, "weight": 1.0}]}


def test_an_input_choice_hmnas_cannot_mask_is_named_with_the_fix():
    import pytest
    from nni.nas.nn.pytorch import InputChoice, ModelSpace

    from hmnas_nni import HMNAS

    class Space(ModelSpace):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.pick = InputChoice(2, 1, reduction="concat", label="pick")
            self.head = LayerChoice({"a": nn.Linear(4, 2), "b": nn.Linear(4, 2)}, label="head")

        def forward(self, x):
            return self.head(self.pick([self.a(x), self.b(x)]))

    with pytest.raises(TypeError, match=r"'pick' uses 'concat': use reduction='sum' or 'mean'"):
        HMNAS().mutate_model(Space())
