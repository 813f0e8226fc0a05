"""Hierarchy rules: removed edges take their ops, dead nodes take their out-edges, the last path stays."""

import logging

import torch

from tests.helpers import hmnas_supernet


def _set(mask, values):
    with torch.no_grad():
        mask.scores.copy_(torch.tensor(values, dtype=torch.float32))


def test_edge_mask_zero_removes_its_ops_nb201():
    space, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    _set(h.edge_masks["cell/0_2"], [0.0])
    h.apply()
    assert h.op_masks["cell/0_2"].live == []  # the whole edge is gone
    assert h.op_masks["cell/0_1"].live == list(range(5))


def test_node_without_inputs_is_removed_with_its_out_edges():
    space, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    _set(h.op_masks["cell/0_1"], [0.0] * 5)  # node 1's only input edge
    h.apply()
    assert h.op_masks["cell/1_2"].live == [] and h.op_masks["cell/1_3"].live == []
    assert h.op_masks["cell/0_2"].live  # node 2 still reached from the input


def test_node_feeding_nothing_is_removed_with_its_in_edges():
    space, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    _set(h.edge_masks["cell/2_3"], [0.0])  # node 2 no longer reaches the output
    h.apply()
    assert h.op_masks["cell/0_2"].live == [] and h.op_masks["cell/1_2"].live == []


def test_last_path_is_kept_and_logged(caplog):
    space, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    for label in ("cell/0_3", "cell/1_3", "cell/2_3"):
        _set(h.edge_masks[label], [0.0])
    _set(h.edge_masks["cell/1_3"], [0.004])  # highest score below tau
    with caplog.at_level(logging.WARNING):
        messages = h.apply()
    assert any("kept edge 1->3" in m for m in messages)
    assert "kept edge 1->3" in caplog.text
    assert h.edge_masks["cell/1_3"].live == [0]


def test_darts_node_without_inputs_leaves_the_concat():
    space, strategy = hmnas_supernet("darts")
    h = strategy.hierarchy
    _set(h.input_masks["normal/input_2"], [0.0, 0.0])
    h.apply()
    assert h.input_masks["normal/input_2"].live == []
    for j in (3, 4, 5):  # edges leaving node 2 are gone
        assert 2 not in h.input_masks[f"normal/input_{j}"].live
        assert h.op_masks[f"normal/op_2_{j}"].live == []


def test_chain_block_keeps_its_best_op():
    space, strategy = hmnas_supernet("mobile")
    h = strategy.hierarchy
    n = len(h.op_masks["block_1"].scores)
    _set(h.op_masks["block_1"], [0.001 * (i == 2) for i in range(n)])
    messages = h.apply()
    assert h.op_masks["block_1"].live == [2]
    assert any("block_1" in m for m in messages)
