"""The loaders on the real datasets of ../shared/data (or $UHN_DATA); skipped where absent.

Derived files (decoded CIFAR-10 images, encoded text) go to
the ordinary cache ($UHN_CACHE, else ~/.cache/uhn/cache), as in any run: the first run of
this module decodes CIFAR-10 and tokenises IMDB (about 10-30 s each), later runs load them
in about a second.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from uhn_runtime.data import DataError, TaskData, load_task_data
from uhn_runtime.data.text import CLS, PAD
from uhn_spec.spec import TaskSpec

pytestmark = pytest.mark.shared_data


def load(data_root: Path, dataset: str, **task: object) -> TaskData:
    return load_task_data(TaskSpec(dataset=dataset, **task), data_root)  # type: ignore[arg-type]


def sizes(data: TaskData) -> dict[str, int]:
    return {split: len(targets) for split, (_, targets) in data.splits.items()}  # type: ignore[attr-defined]


def test_mnist(data_root: Path) -> None:
    data = load(data_root, "mnist")
    assert sizes(data) == {"train": 60_000, "test": 10_000}
    images, labels = data.splits["train"]
    assert images.shape == (60_000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    batch = next(data.eval_batches("test", 10_000))
    assert batch.inputs.shape == (10_000, 1, 28, 28) and batch.targets.max() == 9
    # Normalize(0.1307, 0.3081) is MNIST's own pixel mean and std.
    assert abs(float(batch.inputs.mean())) < 0.02 and abs(float(batch.inputs.std()) - 1) < 0.02
    assert sizes(load(data_root, "mnist", validate_split=True)) == {"train": 48_000, "val": 12_000, "test": 10_000}


def test_cifar10(data_root: Path) -> None:
    data = load(data_root, "cifar10")
    assert sizes(data) == {"train": 50_000, "test": 10_000}
    assert torch.bincount(data.splits["train"][1]).tolist() == [5000] * 10
    assert torch.bincount(data.splits["test"][1]).tolist() == [1000] * 10
    assert data.splits["train"][0].shape == (50_000, 3, 32, 32)
    test = torch.cat([b.inputs for b in data.eval_batches("test", 5000)])
    # The normalisation constants are CIFAR-10's per-channel statistics.
    assert test.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (test.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
    augmented = next(data.train_batches(256, seed=0))
    assert augmented.inputs.shape == (256, 3, 32, 32)
    assert sizes(load(data_root, "cifar10", validate_split=True)) == {"train": 45_000, "val": 5_000, "test": 10_000}


@pytest.mark.parametrize(
    "name, nodes, features, classes, split",
    [("cora", 2708, 1433, 7, (140, 500, 1000)), ("citeseer", 3327, 3703, 6, (120, 500, 1000))],
)
def test_planetoid(data_root: Path, name: str, nodes: int, features: int, classes: int, split: tuple) -> None:
    data = load(data_root, name)
    assert data.x.shape == (nodes, features) and int(data.y.max()) + 1 == classes  # type: ignore[attr-defined]
    masks = data.masks  # type: ignore[attr-defined]
    assert tuple(int(masks[s].sum()) for s in ("train", "val", "test")) == split
    assert not (masks["train"] & masks["val"]).any() and not (masks["val"] & masks["test"]).any()
    row_sums = data.x.sum(dim=1)  # type: ignore[attr-defined]
    nonempty = row_sums > 0  # CiteSeer has isolated nodes without features
    torch.testing.assert_close(row_sums[nonempty], torch.ones(int(nonempty.sum())))
    batch = next(data.train_batches(256, seed=0))
    assert batch.edge_index.shape[0] == 2 and int(batch.node_mask.sum()) == split[0]
    assert data.num_train_batches(256) == 1


def test_pubmed_is_missing_and_citeseer_stands_in(data_root: Path) -> None:
    if (data_root / "planetoid" / "PubMed").exists():
        pytest.skip("PubMed is present in this data root")
    with pytest.raises(DataError, match="CiteSeer stands in"):
        load(data_root, "pubmed")
    assert not load(data_root, "citeseer").notes  # a plain CiteSeer run stands in for nothing
    assert load(data_root, "citeseer", stands_in_for="pubmed").notes == [
        "citeseer stands in for pubmed (task.stands_in_for)"
    ]


def test_planetoid_writes_nothing_anywhere(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A writable copy of the raw files: torch_geometric once wrote processed/ beside raw/
    # (later into a cache); uhn's own reader builds the graph from the raw files each time.
    root = tmp_path / "data"
    shutil.copytree(data_root / "planetoid" / "Cora" / "raw", root / "planetoid" / "Cora" / "raw")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    monkeypatch.setenv("UHN_CACHE", str(tmp_path / "cache"))
    assert load(root, "cora").x.shape == (2708, 1433)  # type: ignore[attr-defined]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert not (tmp_path / "cache").exists()


def test_ag_news_stand_in_split(data_root: Path) -> None:
    if (data_root / "ag_news" / "train.csv").exists():
        pytest.skip("the official training split is present in this data root")
    data = load(data_root, "ag_news", max_length=128)
    assert sizes(data) == {"train": 6080, "test": 1520}  # 80/20 of the 7,600 rows
    assert torch.bincount(data.splits["train"][1]).tolist() == [1520] * 4
    assert torch.bincount(data.splits["test"][1]).tolist() == [380] * 4
    assert any("80/20" in note for note in data.notes)
    inputs = data.splits["train"][0]
    assert inputs.shape[1] <= 128 and bool((inputs[:, 0] == CLS).all()) and int(inputs.max()) < 5000


def test_imdb(data_root: Path) -> None:
    data = load(data_root, "imdb")
    assert sizes(data) == {"train": 25_000, "test": 25_000}
    for split in ("train", "test"):
        inputs, labels = data.splits[split]
        assert torch.bincount(labels).tolist() == [12_500, 12_500]
        assert inputs.shape[1] == 512 and bool((inputs[:, 0] == CLS).all())
    train = data.splits["train"][0]
    assert int(train.max()) == 4999  # a full 5,000-entry vocabulary
    batch = next(data.train_batches(32, seed=0))
    assert torch.equal(batch.padding_mask, batch.inputs == PAD)
    assert batch.inputs.shape[1] == int((~batch.padding_mask).sum(dim=1).max())
