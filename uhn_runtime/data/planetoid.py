"""Cora, CiteSeer and PubMed: the Planetoid citation graphs, read from their raw files.

The raw files live under ``<root>/planetoid/<Name>/raw/ind.<name>.*``: ``x``, ``tx``,
``allx`` (features, scipy CSR matrices), ``y``, ``ty``, ``ally`` (one-hot labels, numpy
arrays), ``graph`` (a defaultdict of neighbour lists), all pickled by Python 2, and
``test.index`` (text, one node id a line). The pickles are read with the restricted
unpickler of ``pickles.py``, which builds only those containers and arrays: a crafted file
is refused with one line naming it, and nothing in it runs. The graph is built here exactly
as torch_geometric's ``read_planetoid_data`` builds it (same x, y, edge order and masks;
tests/runtime/data/test_planetoid.py compares the two), so no ``processed/`` folder is read or
written anywhere: the data root is only read, and nothing is cached (Cora loads in well
under a second).

Preprocessing, as the authors do it: row-normalised features (as torch_geometric's
``NormalizeFeatures``) and the public split -- Cora 140/500/1000, CiteSeer 120/500/1000,
PubMed 60/500/1000 nodes -- trained full-batch: every epoch is one step on the whole graph,
the loss on train nodes.

PubMed is not in ../shared/data: its loader reads it when its files are present and
otherwise says that CiteSeer is the stand-in (``specs/citeseer_*.yaml`` with
``task.stands_in_for: pubmed``, which puts the fact in the run's notes); the PubMed specs
have PubMed's 500 features and 3 classes, so CiteSeer cannot silently take their place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from uhn_spec.spec import TaskSpec

from .files import PLANETOID_NAMES, PLANETOID_SUFFIXES, missing_error
from .pickles import DICTS_OF_LISTS, NUMPY_ARRAYS, SPARSE_MATRICES, as_array, load_pickle
from .synthetic import GraphData
from .task_data import DataError, TaskData, register_loader

PUBMED_STAND_IN = (
    "PubMed is not available here; CiteSeer stands in for it (train specs/citeseer_gcn.yaml "
    "or specs/citeseer_gat.yaml with --set task.stands_in_for=pubmed and report those numbers "
    "as the PubMed stand-in)"
)
PLANETOID_GLOBALS = {**NUMPY_ARRAYS, **SPARSE_MATRICES, **DICTS_OF_LISTS}
PUBLIC_VAL_NODES = 500  # the public split's validation nodes follow the training nodes
MAX_ID_DIGITS = 12  # node ids in test.index: far above any Planetoid graph, far below int64


def raw_files(name: str) -> list[str]:
    folder = PLANETOID_NAMES[name]
    return [f"planetoid/{folder}/raw/ind.{name}.{suffix}" for suffix in PLANETOID_SUFFIXES]


def raw_paths(root: Path, name: str) -> dict[str, Path]:
    """The 8 raw files by suffix; all must be regular files (a FIFO or device is not one)."""
    expected = raw_files(name)
    missing = [rel for rel in expected if not (root / rel).is_file()]
    if missing:
        err = missing_error(name, root, missing[:1], f"{len(missing)} of its 8 raw Planetoid files")
        if name == "pubmed":
            raise DataError(f"{err}. {PUBMED_STAND_IN}")
        raise err
    return {suffix: root / rel for suffix, rel in zip(PLANETOID_SUFFIXES, expected)}


def read_pickled(path: Path) -> object:
    with path.open("rb") as stream:
        # Pickled by Python 2: latin-1 turns its byte strings into str, as torch_geometric does.
        return load_pickle(stream, str(path), "a Planetoid file", PLANETOID_GLOBALS, encoding="latin1")


def read_matrix(path: Path) -> torch.Tensor:
    """Features or one-hot labels as float32, whether stored sparse or dense."""
    array = as_array(read_pickled(path), str(path))
    if array.ndim != 2:
        raise DataError(f"{path}: expected a matrix, found an array of shape {array.shape}")
    return torch.from_numpy(array).to(torch.float)


def read_graph(path: Path) -> dict[int, list[int]]:
    """The adjacency lists: node id -> neighbour ids, all non-negative ints."""
    graph = read_pickled(path)
    if not isinstance(graph, dict):
        raise DataError(f"{path}: expected a dict of neighbour lists, found {type(graph).__name__}")
    for node, neighbours in graph.items():
        if type(node) is not int or node < 0 or not isinstance(neighbours, list):
            raise DataError(f"{path}: entry {node!r} is not a node id with a list of neighbours")
        if not all(type(n) is int and n >= 0 for n in neighbours):
            raise DataError(f"{path}: the neighbours of node {node} are not all node ids")
    return graph


def read_test_index(path: Path) -> torch.Tensor:
    """The test nodes' ids, one a line, in file order (the order the rows of tx/ty have)."""
    try:
        words = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the test node ids ({err})") from None
    if not words or not all(word.isdigit() and len(word) <= MAX_ID_DIGITS for word in words):
        raise DataError(f"{path}: expected one node id (0 to {10**MAX_ID_DIGITS - 1}) a line")
    index = torch.tensor([int(word) for word in words], dtype=torch.long)
    if len(index.unique()) != len(index):
        raise DataError(f"{path}: a test node id appears twice")
    return index


def edge_index_from_graph(graph: dict[int, list[int]], num_nodes: int, where: Path) -> torch.Tensor:
    """(2, E) edges of every adjacency list, self loops and repeats removed, sorted by
    (target, source): torch_geometric's ``remove_self_loops`` then ``coalesce(sort_by_row=False)``."""
    rows = [node for node, neighbours in graph.items() for _ in neighbours]
    cols = [n for neighbours in graph.values() for n in neighbours]
    largest = max(rows + cols, default=0)
    if largest >= num_nodes:
        raise DataError(f"{where}: an edge names node {largest}, but the graph has {num_nodes} nodes")
    row, col = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    keep = row != col
    key = torch.unique(col[keep] * num_nodes + row[keep])  # sorted, repeats removed
    return torch.stack([key % num_nodes, key // num_nodes])


def _check(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise DataError(f"{path}: {message}; the Planetoid files do not belong together")


@dataclass
class PlanetoidGraph:
    """The graph as torch_geometric's ``read_planetoid_data`` returns it (before transforms)."""

    x: torch.Tensor  # (N, F) float32
    y: torch.Tensor  # (N,) int64
    edge_index: torch.Tensor  # (2, E) int64
    masks: dict[str, torch.Tensor]  # train / val / test, (N,) bool


def read_planetoid(root: Path, name: str) -> PlanetoidGraph:
    """Build the graph from the 8 raw files. The public split: the ``y`` nodes train, the
    next 500 validate, ``test.index`` tests. Test ids need not be contiguous (CiteSeer has
    isolated test nodes missing from tx/ty): the gaps become zero rows, as torch_geometric
    does for CiteSeer (for contiguous ids, as Cora's and PubMed's, this changes nothing)."""
    paths = raw_paths(root, name)
    x, tx, allx, y, ty, ally = (read_matrix(paths[s]) for s in ("x", "tx", "allx", "y", "ty", "ally"))
    test_index = read_test_index(paths["test.index"])
    _check(x.shape[1] == tx.shape[1] == allx.shape[1], paths["tx"], "x, tx and allx have different feature counts")
    _check(y.shape[1] == ty.shape[1] == ally.shape[1], paths["ty"], "y, ty and ally have different class counts")
    _check(len(allx) == len(ally) and len(x) == len(y), paths["ally"], "features and labels have different row counts")
    _check(len(tx) == len(ty) == len(test_index), paths["test.index"], "tx, ty and the test ids differ in count")
    lowest_test_id = int(test_index.min())
    _check(lowest_test_id == len(allx), paths["test.index"], f"the lowest test id is {lowest_test_id}, not {len(allx)}")

    sorted_test_index = test_index.sort()[0]
    span = int(test_index.max() - test_index.min()) + 1
    tx_ext = torch.zeros(span, tx.shape[1], dtype=tx.dtype)
    tx_ext[sorted_test_index - test_index.min(), :] = tx
    ty_ext = torch.zeros(span, ty.shape[1], dtype=ty.dtype)
    ty_ext[sorted_test_index - test_index.min(), :] = ty

    features = torch.cat([allx, tx_ext], dim=0)
    features[test_index] = features[sorted_test_index]
    labels = torch.cat([ally, ty_ext], dim=0).max(dim=1)[1]
    labels[test_index] = labels[sorted_test_index]
    num_nodes = len(labels)
    _check(len(y) + PUBLIC_VAL_NODES <= num_nodes, paths["y"], f"fewer than {len(y)} + {PUBLIC_VAL_NODES} nodes")

    def mask(index: torch.Tensor) -> torch.Tensor:
        selected = torch.zeros(num_nodes, dtype=torch.bool)
        selected[index] = True
        return selected

    return PlanetoidGraph(
        x=features,
        y=labels,
        edge_index=edge_index_from_graph(read_graph(paths["graph"]), num_nodes, paths["graph"]),
        masks={
            "train": mask(torch.arange(len(y))),
            "val": mask(torch.arange(len(y), len(y) + PUBLIC_VAL_NODES)),
            "test": mask(test_index),
        },
    )


def normalize_features(x: torch.Tensor) -> torch.Tensor:
    """Rows summing to 1 (empty rows stay zero): torch_geometric's ``NormalizeFeatures``."""
    x = x - x.min()
    return x.div_(x.sum(dim=-1, keepdim=True).clamp_(min=1.0))


@register_loader("cora", "citeseer", "pubmed")
def load_planetoid(task: TaskSpec, root: Path) -> TaskData:
    name = task.dataset
    graph = read_planetoid(root, name)
    features, classes = graph.x.shape[1], int(graph.y.max()) + 1
    info = task.info
    if features != info.input_dims[0] or classes != info.num_outputs:
        raise DataError(
            f"{name}: the files under {root / 'planetoid' / PLANETOID_NAMES[name] / 'raw'} have {features} features "
            f"and {classes} classes; {name} has {info.input_dims[0]} and {info.num_outputs}"
        )
    return GraphData(
        metric=info.metric, x=normalize_features(graph.x), y=graph.y, edge_index=graph.edge_index, masks=graph.masks
    )
