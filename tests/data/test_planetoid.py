"""Planetoid graphs read from their raw files by uhn's own reader (no torch_geometric)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uhn_runtime.data import load_task_data
from uhn_runtime.data.planetoid import normalize_features, read_planetoid
from uhn_spec.spec import TaskSpec


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["cora", "citeseer"])
def test_the_raw_reader_builds_what_the_torch_geometric_loader_built(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("UHN_CACHE", str(tmp_path / "cache"))
    before = load_task_data(TaskSpec(dataset=name), data_root)  # type: ignore[arg-type]
    graph = read_planetoid(data_root, name)
    assert torch.equal(normalize_features(graph.x), before.x)  # type: ignore[attr-defined]
    assert torch.equal(graph.y, before.y)  # type: ignore[attr-defined]
    assert torch.equal(graph.edge_index, before.edge_index)  # type: ignore[attr-defined]
    for split, mask in before.masks.items():  # type: ignore[attr-defined]
        assert torch.equal(graph.masks[split], mask)
