"""Cora, CiteSeer and PubMed: the Planetoid citation graphs, read by torch_geometric.

The raw files live under ``<root>/planetoid/<Name>/raw/ind.<name>.*``. torch_geometric
writes ``processed/`` beside ``raw/``, and uhn never writes into a data root, so the raw files
are first copied to ``<cache>/planetoid/<version>/<Name>/raw``.

Preprocessing (reference-facts §7): row-normalised features (``NormalizeFeatures``) and the
public split -- Cora 140/500/1000, CiteSeer 120/500/1000, PubMed 60/500/1000 nodes --
trained full-batch: every epoch is one step on the whole graph, the loss on train nodes.

PubMed is not in ../shared/data: its loader reads it when its files are present and
otherwise says that CiteSeer is the stand-in (``specs/citeseer_*.yaml`` with
``task.stands_in_for: pubmed``, which puts the fact in the run's notes); the PubMed specs
have PubMed's 500 features and 3 classes, so CiteSeer cannot silently take their place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from uhn_spec.spec import TaskSpec

from . import DataError, TaskData, register_loader
from .files import (
    PLANETOID_NAMES,
    PLANETOID_SUFFIXES,
    atomic_copy,
    cache_root,
    missing_error,
    source_key,
)
from .synthetic import GraphData

PUBMED_STAND_IN = (
    "PubMed is not available here; CiteSeer stands in for it (train specs/citeseer_gcn.yaml "
    "or specs/citeseer_gat.yaml with --set task.stands_in_for=pubmed and report those numbers "
    "as the PubMed stand-in)"
)


def raw_files(name: str) -> list[str]:
    folder = PLANETOID_NAMES[name]
    return [f"planetoid/{folder}/raw/ind.{name}.{suffix}" for suffix in PLANETOID_SUFFIXES]


def planetoid_base(root: Path, name: str) -> Path:
    """The folder to hand torch_geometric: a copy of the raw files in the cache, never the
    data root itself (torch_geometric writes ``processed/`` beside ``raw/``). The copy's
    folder is named by the raw files' paths, sizes and times, so replaced files get a new
    copy and a fresh ``processed/``."""
    expected = raw_files(name)
    missing = [rel for rel in expected if not (root / rel).is_file()]
    if missing:
        err = missing_error(name, root, missing[:1], f"{len(missing)} of its 8 raw Planetoid files")
        if name == "pubmed":
            raise DataError(f"{err}. {PUBMED_STAND_IN}")
        raise err
    version = hashlib.sha256("\n".join(source_key(root / rel) for rel in expected).encode()).hexdigest()[:20]
    base = cache_root() / "planetoid" / version
    try:
        for rel in expected:
            dst = base / Path(rel).relative_to("planetoid")
            if not dst.is_file():
                atomic_copy(root / rel, dst)
    except OSError as err:
        raise DataError(
            f"{name}: copying its raw files from {root / 'planetoid'} to the cache {base} failed ({err}); "
            "set UHN_CACHE to a writable folder"
        ) from None
    return base


@register_loader("cora", "citeseer", "pubmed")
def load_planetoid(task: TaskSpec, root: Path) -> TaskData:
    from torch_geometric.datasets import Planetoid  # local: heavy import, graphs only
    from torch_geometric.transforms import NormalizeFeatures

    name = task.dataset
    base = planetoid_base(root, name)
    dataset = Planetoid(str(base), PLANETOID_NAMES[name], split="public", transform=NormalizeFeatures())
    graph = dataset[0]
    info = task.info
    if graph.num_features != info.input_dims[0] or dataset.num_classes != info.num_outputs:
        raise DataError(
            f"{name}: the files under {base / PLANETOID_NAMES[name]} have {graph.num_features} features and "
            f"{dataset.num_classes} classes; {name} has {info.input_dims[0]} and {info.num_outputs}"
        )
    data = GraphData(
        metric="accuracy",
        x=graph.x,
        y=graph.y,
        edge_index=graph.edge_index,
        masks={"train": graph.train_mask, "val": graph.val_mask, "test": graph.test_mask},
    )
    return data
