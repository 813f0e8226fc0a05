"""The memory trace counts the same parts for HM-NAS's and DARTS's supernets and prints their ratios."""

from __future__ import annotations

import warnings

from hmnas_nni.experiments.memory_trace import main, trace
from hmnas_nni.search.config import TINY_SPACE_ARGS

warnings.filterwarnings("ignore")


def test_a_weight_step_is_traced_part_by_part(capsys):
    args = {**TINY_SPACE_ARGS["nb201"], "input_size": 8}
    rows = {s: trace(s, "nb201", args, (1, 8, 8), 4) for s in ("hmnas", "darts")}
    for parts in rows.values():
        assert parts["network weights"] > 0 and parts["saved for backward"] > 0
        assert parts["gradients"] >= parts["network weights"]  # every weight gets a gradient
    assert rows["hmnas"]["network weights"] == rows["darts"]["network weights"]
    assert rows["hmnas"]["architecture parameters"] > rows["darts"]["architecture parameters"]  # the mask scores
    main(["--space", "nb201", "--space-args", '{"channels": 4, "input_size": 8, "in_channels": 1}',
          "--input", "1,8,8", "--batch", "4"])
    out = capsys.readouterr().out
    assert "| saved for backward |" in out and "| total |" in out
