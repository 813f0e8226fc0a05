"""Hierarchy rules: removed edges take their ops, dead nodes take their out-edges, the last path stays.

NAS-Bench-201 cells sum their edges without an InputChoice: their graph is read from the supernet's first
training forward pass. DARTS cells are NNI ``Cell``s: their graph comes from the cell itself.
"""

import logging

import torch

from tests.helpers import hmnas_supernet


def _set(mask, values):
    with torch.no_grad():
        mask.scores.copy_(torch.tensor(values, dtype=torch.float32))


def test_nb201_graph_is_traced_from_the_forward_pass():
    _, strategy = hmnas_supernet("nb201")
    flow = strategy.hierarchy.traced
    assert flow is not None and len(flow.edges) == 18  # 3 cells x 6 edges
    first = {e.key.split("@")[0].rsplit(".", 1)[-1]: sorted(flow.sources[e.key]) for e in flow.edges[:6]}
    assert first["0_1"] == ["<input>"] and first["0_3"] == ["<input>"]
    assert first["1_2"] == ["net.cells.0.edges.0_1@0"]
    assert first["2_3"] == ["net.cells.0.edges.0_2@1", "net.cells.0.edges.1_2@2"]


def test_edge_mask_zero_removes_its_ops_nb201():
    _, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    _set(h.masks["edge:cell/0_2"], [0.0])
    h.apply()
    assert h.masks["ops:cell/0_2"].live == []  # the whole edge is gone
    assert h.masks["ops:cell/0_1"].live == list(range(5))


def test_node_without_inputs_is_removed_with_its_out_edges():
    _, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    _set(h.masks["ops:cell/0_1"], [0.0] * 5)  # node 1's only input edge
    h.apply()
    assert h.masks["ops:cell/1_2"].live == [] and h.masks["ops:cell/1_3"].live == []
    assert h.masks["ops:cell/0_2"].live  # node 2 still reached from the input


def test_node_feeding_nothing_is_removed_with_its_in_edges():
    _, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    _set(h.masks["edge:cell/2_3"], [0.0])  # node 2 no longer reaches the output
    h.apply()
    assert h.masks["ops:cell/0_2"].live == [] and h.masks["ops:cell/1_2"].live == []


def test_last_path_is_kept_and_logged(caplog):
    _, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    for label in ("cell/0_3", "cell/1_3", "cell/2_3"):
        _set(h.masks[f"edge:{label}"], [0.0])
    _set(h.masks["edge:cell/1_3"], [0.004])  # highest score below tau
    with caplog.at_level(logging.WARNING):
        messages = h.apply()
    assert any("edges.1_3" in m for m in messages)
    assert "masking cut every path" in caplog.text
    assert h.masks["edge:cell/1_3"].live == [0]


def test_darts_node_without_inputs_is_removed_with_its_out_edges():
    _, strategy = hmnas_supernet("darts")
    h = strategy.hierarchy
    _set(h.masks["cell:normal/2#inputs"], [0.0, 0.0])  # node 2 takes no input
    h.apply()
    assert h.masks["cell:normal/2#inputs"].live == []
    for i in (3, 4, 5):  # edges leaving node 2 are gone
        assert 2 not in h.masks[f"cell:normal/{i}#inputs"].live
        assert h.masks[f"cell:normal/{i}_2#ops"].live == []
    assert h.masks["cell:normal/3_0#ops"].live  # the rest of the cell is untouched


def test_darts_cell_keeps_a_path():
    _, strategy = hmnas_supernet("darts")
    h = strategy.hierarchy
    for i in range(2, 6):
        _set(h.masks[f"cell:reduce/{i}#inputs"], [0.0] * i)
    _set(h.masks["cell:reduce/4#inputs"], [0.0, 0.004, 0.0, 0.0])
    messages = h.apply()
    assert any("cell 'reduce'" in m and "reduce/1->4" in m for m in messages)
    assert h.masks["cell:reduce/4#inputs"].live == [1]


def test_chain_block_keeps_its_best_op():
    _, strategy = hmnas_supernet("mobile")
    h = strategy.hierarchy
    n = len(h.masks["ops:block_1"].scores)
    _set(h.masks["ops:block_1"], [0.001 * (i == 2) for i in range(n)])
    messages = h.apply()
    assert h.masks["ops:block_1"].live == [2]
    assert any("block_1" in m for m in messages)


def test_a_none_op_does_not_connect_an_edge_and_no_forced_path_runs_through_it():
    """NB201's 'none' outputs zeros: an edge keeping only it is removed, and the last-path rule skips it."""
    _, strategy = hmnas_supernet("nb201")
    h = strategy.hierarchy
    assert h.masks["ops:cell/0_1"].carries == [False, True, True, True, True]  # none, skip, conv1x1, conv3x3, pool
    _set(h.masks["ops:cell/0_2"], [1.0, 0.0, 0.0, 0.0, 0.0])  # only 'none' left on edge 0_2
    h.apply()
    assert h.masks["ops:cell/0_2"].live == []
    for label in ("cell/0_1", "cell/0_2", "cell/1_2", "cell/0_3", "cell/1_3", "cell/2_3"):
        _set(h.masks[f"ops:{label}"], [0.004, 0.001, 0.002, 0.003, 0.0])  # 'none' scores highest everywhere
    h.apply()
    kept = {label: h.masks[f"ops:{label}"].live for label in ("cell/0_1", "cell/1_2", "cell/2_3", "cell/0_3")}
    assert kept["cell/0_3"] == [3] and all(0 not in live for live in kept.values())  # conv_3x3, never 'none'
