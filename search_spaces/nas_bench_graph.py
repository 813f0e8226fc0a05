"""NAS-Bench-Graph as an NNI model space whose evaluation is a table look-up.

NAS-Bench-Graph (Qin et al., NeurIPS 2022) trained every GNN of a 4-node space on 9 graph datasets. An architecture is
a link pattern (node i reads the output of node ``link[i]``, 0 being the input; one of the 9 patterns of the package's
``link_list``) and one operation per node (``gnn_list``; proteins has its own 5-op ``gnn_list_proteins``). The
``nas-bench-graph`` package ships the tables (``nas_bench_graph/light/<dataset>.bench``); they are read here with
:func:`~hmnas_nni.format.safe_pickle.read_plain_pickle`, never ``pickle.load``.

NNI's samples look like ``{"link": 3, "op1": "gcn", "op2": "sage", "op3": "skip", "op4": "gat"}`` (``link`` indexes
``link_list``). The package's ``Arch(link, ops).valid_hash()`` gives the table key; isomorphic architectures share one
key (the 59,049 samples of the 9-op space map to 26,207 keys), and the all-skip architecture (:data:`ALL_SKIP_KEY`)
is in no table: the evaluator reports it as a failed trial, as NNI's benchmark evaluators do with empty queries.

Searching it with an NNI multi-trial strategy, as NNI's own benchmark tests do::

    evaluator = NasBenchGraphEvaluator("cora")
    space = BenchmarkModelSpace(NasBenchGraphSpace("cora"), evaluator)
    Random(seed=0)(space, SequentialExecutionEngine(max_model_count=100, continue_on_failure=True))
"""

from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import nas_bench_graph
import nni
from nas_bench_graph.architecture import Arch, gnn_list, gnn_list_proteins, link_list
from nni.mutable import Categorical, Sample, ensure_frozen
from nni.nas.benchmark import BenchmarkEvaluator, BenchmarkModelSpace, SlimBenchmarkSpace
from nni.nas.nn.pytorch import ModelSpace
from nni.nas.space import model_context

from hmnas_nni.format.errors import UsageError
from hmnas_nni.format.safe_pickle import read_plain_pickle

#: The datasets whose tables the package ships, in the paper's order.
DATASETS = ("cora", "citeseer", "pubmed", "cs", "physics", "photo", "computers", "arxiv", "proteins")
#: Entries in each table: every architecture up to isomorphism, but the all-skip one.
TABLE_SIZES = {name: 2021 if name == "proteins" else 26206 for name in DATASETS}
#: The key ``valid_hash`` gives the all-skip architecture, which no table holds.
ALL_SKIP_KEY = 88888
#: Fields of a table entry: validation and test performance, latency (s), parameters (millions).
FIELDS = ("valid_perf", "perf", "latency", "para")
#: NNI labels of the architecture's choices: the link pattern, then one operation per node.
LINK_LABEL = "link"
OP_LABELS = ("op1", "op2", "op3", "op4")
REINSTALL = "reinstall the tables with: pip install --force-reinstall nas-bench-graph==1.4.0"


@dataclass(frozen=True)
class TableEntry:
    """One architecture's row of a NAS-Bench-Graph table."""

    valid: float
    test: float
    latency: float
    params: float

    def metrics(self) -> dict[str, float]:
        """The metric dict reported to NNI: ``default`` is the validation performance a search maximises."""
        return {"default": self.valid, "valid": self.valid, "test": self.test,
                "latency": self.latency, "params": self.params}


def check_dataset(dataset: str) -> str:
    """``dataset`` if NAS-Bench-Graph has a table for it; else a one-line error listing the names."""
    if dataset not in DATASETS:
        raise UsageError(f"NAS-Bench-Graph has no dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return dataset


def operations(dataset: str) -> tuple[str, ...]:
    """The operations a node may take on ``dataset`` (proteins was benchmarked over 5 of the 9)."""
    return tuple(gnn_list_proteins if check_dataset(dataset) == "proteins" else gnn_list)


def table_path(dataset: str) -> Path:
    """Where the ``nas-bench-graph`` package keeps ``dataset``'s table."""
    return Path(nas_bench_graph.__file__).resolve().parent / "light" / f"{check_dataset(dataset)}.bench"


@functools.cache
def load_table(dataset: str) -> Mapping[int, TableEntry]:
    """``dataset``'s table, key -> entry, read safely and checked once per process (read-only)."""
    path = table_path(dataset)
    raw = read_plain_pickle(path, fix=REINSTALL)
    return MappingProxyType(_checked_entries(raw, TABLE_SIZES[dataset], path))


def _checked_entries(raw: Any, expected: int, path: Path) -> dict[int, TableEntry]:
    """The entries of a table as read, once they have the expected count, integer keys and numeric fields."""
    if not isinstance(raw, dict) or len(raw) != expected:
        size = f"{len(raw)} entries" if isinstance(raw, dict) else f"a {type(raw).__name__}"
        raise UsageError(f"{path} holds {size}, not the {expected} entries of NAS-Bench-Graph's table; {REINSTALL}")
    entries = {}
    for key, row in raw.items():
        if not isinstance(key, int) or not isinstance(row, dict) or set(row) != set(FIELDS) \
                or not all(isinstance(row[f], (int, float)) and not isinstance(row[f], bool) for f in FIELDS):
            raise UsageError(f"{path} has a malformed entry {key!r}: {row!r} (expected numbers {', '.join(FIELDS)}); "
                             f"{REINSTALL}")
        entries[key] = TableEntry(*(float(row[f]) for f in FIELDS))
    return entries


def search_choices(dataset: str = "cora") -> dict[str, Categorical]:
    """The space's choices by label: the link pattern (an index into ``link_list``) and one operation per node."""
    ops = list(operations(dataset))
    choices = [Categorical(list(range(len(link_list))), label=LINK_LABEL)]
    choices += [Categorical(ops, label=label) for label in OP_LABELS]
    return {choice.label: choice for choice in choices}


def architecture(sample: Mapping[str, Any]) -> tuple[list[int], list[str]]:
    """The link pattern and operations of an NNI sample (labels may carry a scope prefix, ``net/op1``)."""
    values = {label.rsplit("/", 1)[-1]: value for label, value in sample.items()}
    missing = [label for label in (LINK_LABEL, *OP_LABELS) if label not in values]
    if missing:
        raise UsageError(f"sample {dict(sample)} lacks {', '.join(missing)}; a NAS-Bench-Graph sample has "
                         f"{LINK_LABEL} and {', '.join(OP_LABELS)}")
    link, ops = values[LINK_LABEL], [values[label] for label in OP_LABELS]
    if not isinstance(link, numbers.Integral) or isinstance(link, bool) or not 0 <= link < len(link_list):
        raise UsageError(f"sample link {link!r} is not a pattern index; use 0..{len(link_list) - 1} (link_list)")
    wrong = [op for op in ops if op not in gnn_list]
    if wrong:
        raise UsageError(f"sample operations {wrong} are not NAS-Bench-Graph's; use {', '.join(gnn_list)}")
    return list(link_list[int(link)]), ops


def architecture_key(sample: Mapping[str, Any]) -> int:
    """The table key of an NNI sample: isomorphic architectures share it; the all-skip one is :data:`ALL_SKIP_KEY`."""
    link, ops = architecture(sample)
    return _valid_hash(tuple(link), tuple(ops))


@functools.cache
def _valid_hash(link: tuple[int, ...], ops: tuple[str, ...]) -> int:
    """The package's canonical key of an architecture, kept per process (a search revisits architectures)."""
    return Arch(list(link), list(ops)).valid_hash()


def lookup(dataset: str, sample: Mapping[str, Any]) -> TableEntry | None:
    """The table entry of an NNI sample on ``dataset``, or None when the table has none (the all-skip one)."""
    return load_table(dataset).get(architecture_key(sample))


def all_samples(dataset: str = "cora") -> list[dict[str, Any]]:
    """Every NNI sample of the space, in the order of the choices' values (59,049; proteins 5,625)."""
    ops = operations(dataset)
    return [{LINK_LABEL: link, **dict(zip(OP_LABELS, chosen))}
            for link in range(len(link_list)) for chosen in itertools.product(ops, repeat=len(OP_LABELS))]


def best_entry(dataset: str, metric: str = "valid") -> tuple[int, TableEntry]:
    """The table's best architecture by ``metric`` ("valid" or "test") and its entry, the reference of a regret.
    Validation scores tie often: ties go to the smallest key, so the answer is the same in every process."""
    if metric not in ("valid", "test"):
        raise UsageError(f"best_entry ranks by 'valid' or 'test', not {metric!r}")
    table = load_table(dataset)
    key = min(table, key=lambda k: (-getattr(table[k], metric), k))
    return key, table[key]


def count_architectures(dataset: str) -> int:
    """The number of distinct architectures with a table entry (isomorphic samples counted once)."""
    return len(load_table(dataset))


class NasBenchGraphSpace(ModelSpace):
    """NAS-Bench-Graph's space on one dataset as an NNI PyTorch model space: choices ``link`` and ``op1``..``op4``.

    No GNN is computed: the table is the evaluation. ``forward()`` returns the table's metric dict for the space's
    architecture (the frozen sample's, or the first choices' before freezing), or None for the all-skip one.
    """

    def __init__(self, dataset: str = "cora") -> None:
        super().__init__()
        self.dataset = check_dataset(dataset)
        chosen = {label: ensure_frozen(self.add_mutable(choice))
                  for label, choice in search_choices(dataset).items()}
        self.arch: dict[str, Any] = chosen

    def freeze(self, sample: Sample) -> NasBenchGraphSpace:
        """The space rebuilt with every choice fixed to ``sample``'s value (NNI's recipe for added mutables)."""
        with model_context(sample):
            return NasBenchGraphSpace(self.dataset)

    def forward(self) -> dict[str, float] | None:
        """The table's metrics of this architecture; None when the table has no entry (the all-skip one)."""
        entry = lookup(self.dataset, self.arch)
        return None if entry is None else entry.metrics()


class NotInTable(ValueError):
    """A sample whose architecture has no table entry; the trial fails, as with NNI's empty benchmark queries."""


class NasBenchGraphEvaluator(BenchmarkEvaluator):
    """Evaluates a sample by looking it up in ``dataset``'s table and reporting its metrics to NNI.

    The reported dict is ``{"default": valid, "valid", "test", "latency", "params"}``: strategies see the
    validation performance (``default``); test performance is there to report what a search found.
    """

    def __init__(self, dataset: str = "cora") -> None:
        super().__init__()
        self.dataset = check_dataset(dataset)
        load_table(dataset)  # a missing or corrupt table is reported here, before any search starts

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dataset={self.dataset!r})"

    def default_space(self) -> SlimBenchmarkSpace:  # an instance method: proteins has its own operations
        """The choices a space must have to be looked up in this evaluator's table."""
        return SlimBenchmarkSpace(search_choices(self.dataset))

    def evaluate(self, sample: Sample) -> dict[str, float]:
        """Report the sample's table metrics to NNI and return them; :class:`NotInTable` fails the trial."""
        key = architecture_key(sample)
        entry = load_table(self.dataset).get(key)
        if entry is None:
            raise NotInTable(f"architecture {key} of {sample} has no entry in NAS-Bench-Graph's {self.dataset} table "
                             "(the all-skip architecture was not trained)")
        metrics = entry.metrics()
        nni.report_final_result(metrics)
        return metrics


def benchmark_space(dataset: str = "cora") -> BenchmarkModelSpace:
    """The executable space NNI's strategies search: :class:`NasBenchGraphSpace` checked against and evaluated by
    :class:`NasBenchGraphEvaluator`, with no model built per sample."""
    return BenchmarkModelSpace(NasBenchGraphSpace(dataset), NasBenchGraphEvaluator(dataset))
