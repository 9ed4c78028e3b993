"""Planetoid graphs read from their raw files by uhn's own reader, without running code.

The reader must build what torch_geometric's ``read_planetoid_data`` (the loader uhn used
before) builds: compared here on small synthetic raw files and on the real Cora and CiteSeer,
whose tensors are also pinned by digest so the equality stays provable without
torch_geometric. Crafted files -- pickles that would run code, or that build the allowed
types with inconsistent contents -- are refused with one line naming the file.
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from typer.testing import CliRunner

from uhn_cli.main import app
from uhn_runtime.data import DataError, load_task_data
from uhn_runtime.data.planetoid import PlanetoidGraph, normalize_features, read_planetoid
from uhn_spec.spec import TaskSpec

FOLDERS = {"cora": "Cora", "citeseer": "CiteSeer"}
SIZES = {"cora": (1433, 7), "citeseer": (3703, 6)}  # features, classes: what the specs expect


def raw_folder(root: Path, name: str) -> Path:
    return root / "planetoid" / FOLDERS[name] / "raw"


def write_planetoid(root: Path, name: str, gaps: bool, seed: int = 0) -> Path:
    """Small raw files in the Planetoid layout: 7 labelled training nodes, 510 in allx (the
    public split's 500 validation nodes among them), 20 test nodes (with 3 missing ids, as
    CiteSeer's isolated nodes, when ``gaps``) and a graph with a self loop and a repeat."""
    features, classes = SIZES[name]
    rng = np.random.default_rng(seed)
    n_all, n_test = 510, 20
    ids = np.arange(n_all, n_all + n_test + (3 if gaps else 0))
    if gaps:
        ids = np.delete(ids, [4, 9, 15])
    test_ids = rng.permutation(ids)
    num_nodes = int(ids.max()) + 1

    def sparse(rows: int) -> sp.csr_matrix:
        return (sp.random(rows, features, density=0.01, format="csr", random_state=rng) > 0).astype(np.float32)

    def one_hot(rows: int) -> np.ndarray:
        return np.eye(classes, dtype=np.int32)[rng.integers(0, classes, rows)]

    allx, ally = sparse(n_all), one_hot(n_all)
    graph: collections.defaultdict[int, list[int]] = collections.defaultdict(list)
    for node in range(num_nodes):
        graph[node] += [int(n) for n in rng.integers(0, num_nodes, 3)]
    graph[5] += [5, 6, 6]  # a self loop and a repeated edge, both dropped
    files: dict[str, object] = {
        "x": allx[:7],
        "y": ally[:7],
        "allx": allx,
        "ally": ally,
        "tx": sparse(n_test),
        "ty": one_hot(n_test),
        "graph": graph,
    }
    folder = raw_folder(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, value in files.items():
        (folder / f"ind.{name}.{suffix}").write_bytes(pickle.dumps(value, protocol=4))
    (folder / f"ind.{name}.test.index").write_text("".join(f"{i}\n" for i in test_ids))
    return folder


def torch_geometric_graph(root: Path, name: str) -> PlanetoidGraph:
    """What the previous loader built: torch_geometric's own reader (trusted files only)."""
    from torch_geometric.io import read_planetoid_data

    data = read_planetoid_data(str(raw_folder(root, name)), name)
    masks = {"train": data.train_mask, "val": data.val_mask, "test": data.test_mask}
    return PlanetoidGraph(x=data.x, y=data.y, edge_index=data.edge_index, masks=masks)


def assert_same_graph(ours: PlanetoidGraph, theirs: PlanetoidGraph) -> None:
    assert torch.equal(ours.x, theirs.x) and ours.x.dtype == theirs.x.dtype
    assert torch.equal(ours.y, theirs.y) and ours.y.dtype == theirs.y.dtype
    assert torch.equal(ours.edge_index, theirs.edge_index)  # same edges in the same order
    assert ours.masks.keys() == theirs.masks.keys()
    for split, mask in theirs.masks.items():
        assert torch.equal(ours.masks[split], mask)


@pytest.mark.parametrize("name, gaps", [("cora", False), ("citeseer", True)])
def test_synthetic_files_give_what_torch_geometric_gave(tmp_path: Path, name: str, gaps: bool) -> None:
    write_planetoid(tmp_path, name, gaps)
    ours = read_planetoid(tmp_path, name)
    assert_same_graph(ours, torch_geometric_graph(tmp_path, name))
    assert len(ours.y) == (533 if gaps else 530)
    assert [int(m.sum()) for m in ours.masks.values()] == [7, 500, 20]
    assert not (ours.edge_index[0] == ours.edge_index[1]).any()


def test_a_legitimate_data_root_loads_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    write_planetoid(root, "cora", gaps=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    monkeypatch.setenv("UHN_CACHE", str(tmp_path / "cache"))
    data = load_task_data(TaskSpec(dataset="cora"), root)  # type: ignore[arg-type]
    assert data.x.shape == (530, 1433)  # type: ignore[attr-defined]
    row_sums = data.x.sum(dim=1)  # type: ignore[attr-defined]
    torch.testing.assert_close(row_sums[row_sums > 0], torch.ones(int((row_sums > 0).sum())))
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert not (tmp_path / "cache").exists()  # no processed/ folder, no copy, no cache


class RunsShell:
    """Unpickling this calls os.system: what a crafted data file does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class RunsPython:
    """Unpickling this calls builtins.exec on Python source."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple:
        return (builtins.exec, (self.source,))


def crafted(kind: str, marker: Path) -> bytes:
    if kind == "os.system":
        return pickle.dumps(RunsShell(f"touch {marker}"))
    if kind == "builtins.exec":
        return pickle.dumps(RunsPython(f"open({str(marker)!r}, 'w').close()"), protocol=2)
    # The payload hidden inside an allowed container, as a real attack would hide it.
    return pickle.dumps(collections.defaultdict(list, {0: [1, RunsShell(f"touch {marker}")]}), protocol=4)


@pytest.mark.parametrize(
    "suffix, kind", [("x", "os.system"), ("x", "builtins.exec"), ("ally", "builtins.exec"), ("graph", "nested")]
)
def test_a_crafted_pickle_is_refused_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, kind: str
) -> None:
    folder = write_planetoid(tmp_path / "data", "cora", gaps=False)
    marker = tmp_path / "MARKER"
    (folder / f"ind.cora.{suffix}").write_bytes(crafted(kind, marker))
    monkeypatch.setenv("UHN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError) as caught:
        load_task_data(TaskSpec(dataset="cora"), tmp_path / "data")  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"{folder / f'ind.cora.{suffix}'}: ") and "\n" not in message
    assert "is not allowed" in message and "nothing in it was run" in message
    assert not marker.exists()


def test_data_info_refuses_a_crafted_file_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_planetoid(tmp_path / "data", "cora", gaps=False)
    marker = tmp_path / "MARKER"
    (folder / "ind.cora.x").write_bytes(crafted("os.system", marker))
    monkeypatch.setenv("UHN_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["data", "info", "cora", "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(folder / "ind.cora.x") in errors[0] and "posix.system" in errors[0]
    assert "Traceback" not in result.output and not marker.exists()


def _sparse_with_bad_index() -> bytes:
    matrix = sp.csr_matrix(np.eye(3, dtype=np.float32))
    matrix.indices[1] = 1_000_000  # scipy's own densifying would write out of bounds
    return pickle.dumps(matrix, protocol=4)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (lambda: pickle.dumps(np.array([{"a": 1}], dtype=object), protocol=4), "not a plain number type"),
        (_sparse_with_bad_index, "inconsistent sparse matrix"),
        (lambda: pickle.dumps(sp.csr_matrix((10**6, 10**6), dtype=np.float32), protocol=4), "entries dense"),
        (lambda: pickle.dumps(np.zeros(3, np.float32), protocol=4), "expected a matrix"),
        (lambda: pickle.dumps(collections.defaultdict(list), protocol=4), "expected an array, found dict"),
        (lambda: pickle.dumps(np.zeros((2, 2), np.float32), protocol=4)[:-30], "nothing in it was run"),
        (lambda: b"", "nothing in it was run"),
        (lambda: b"\x80\x04\x8e" + (1 << 62).to_bytes(8, "little") + b"abc", r"\(MemoryError\); nothing in it was run"),
    ],
    ids=["object-array", "index-out-of-range", "huge-sparse", "vector", "dict", "truncated", "empty", "2^62-bytes"],
)
def test_malformed_contents_are_refused_in_one_line(tmp_path: Path, payload: Callable[[], bytes], reason: str) -> None:
    folder = write_planetoid(tmp_path, "cora", gaps=False)
    (folder / "ind.cora.x").write_bytes(payload())
    with pytest.raises(DataError, match=reason) as caught:
        read_planetoid(tmp_path, "cora")
    assert str(caught.value).startswith(str(folder / "ind.cora.x")) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "suffix, content, reason",
    [
        ("graph", pickle.dumps(collections.defaultdict(object), protocol=4), "may only default to list"),
        ("graph", pickle.dumps({0: [10**6]}, protocol=4), "an edge names node 1000000"),
        ("graph", pickle.dumps({0: [1.5]}, protocol=4), "not all node ids"),
        ("test.index", b"510\nfive\n", "one node id"),
        ("test.index", b"9" * 40 + b"\n", "one node id"),
        ("test.index", b"515\n516\n", "differ in count"),
    ],
    ids=["defaultdict-object", "edge-out-of-range", "float-neighbour", "word-id", "huge-id", "short-test-index"],
)
def test_inconsistent_files_are_refused_in_one_line(tmp_path: Path, suffix: str, content: bytes, reason: str) -> None:
    folder = write_planetoid(tmp_path, "cora", gaps=False)
    (folder / f"ind.cora.{suffix}").write_bytes(content)
    with pytest.raises(DataError, match=reason) as caught:
        read_planetoid(tmp_path, "cora")
    assert "\n" not in str(caught.value)


def test_a_fifo_in_place_of_a_raw_file_is_missing_not_a_hang(tmp_path: Path) -> None:
    folder = write_planetoid(tmp_path, "cora", gaps=False)
    (folder / "ind.cora.graph").unlink()
    os.mkfifo(folder / "ind.cora.graph")
    with pytest.raises(DataError, match="1 of its 8 raw Planetoid files not found"):
        read_planetoid(tmp_path, "cora")


# --------------------------------------------------------------------------- the real graphs


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


# What the torch_geometric loader gave on ../shared/data (uhn 75c3403), after NormalizeFeatures:
# x float32, y and edge_index int64, masks bool, digests of their bytes.
PINNED = {
    "cora": {
        "shapes": ((2708, 1433), (2, 10556)),
        "x": "1a213087243ca1ee",
        "y": "d0018d7ffd314eb2",
        "edge_index": "299cb541efef8bc7",
        "train": "b211325c561d6f73",
        "val": "96c8f5dc197fc3c0",
        "test": "ec05c123cc125ff3",
    },
    "citeseer": {
        "shapes": ((3327, 3703), (2, 9104)),
        "x": "d00c6fd7410af296",
        "y": "448f8c04e02516b2",
        "edge_index": "0826c26dc48439ab",
        "train": "8efce52f9800be63",
        "val": "b11b25e3892ac265",
        "test": "e5f2dd697aa94045",
    },
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["cora", "citeseer"])
def test_the_real_graphs_are_what_the_torch_geometric_loader_gave(data_root: Path, name: str) -> None:
    data = load_task_data(TaskSpec(dataset=name), data_root)  # type: ignore[arg-type]
    pinned = PINNED[name]
    assert (tuple(data.x.shape), tuple(data.edge_index.shape)) == pinned["shapes"]  # type: ignore[attr-defined]
    tensors = {"x": data.x, "y": data.y, "edge_index": data.edge_index, **data.masks}  # type: ignore[attr-defined]
    assert [t.dtype for t in tensors.values()] == [torch.float32, torch.int64, torch.int64] + [torch.bool] * 3
    assert {key: digest(tensor) for key, tensor in tensors.items()} == {k: pinned[k] for k in tensors}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["cora", "citeseer"])
def test_the_real_raw_files_read_as_torch_geometric_reads_them(data_root: Path, tmp_path: Path, name: str) -> None:
    shutil.copytree(data_root / "planetoid" / FOLDERS[name] / "raw", raw_folder(tmp_path, name))
    ours = read_planetoid(tmp_path, name)
    theirs = torch_geometric_graph(tmp_path, name)
    assert_same_graph(ours, theirs)
    assert torch.equal(normalize_features(ours.x), normalize_features(theirs.x.clone()))
