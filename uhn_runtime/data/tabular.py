"""scikit-learn's bundled tabular data: wine (178 x 13, 3 classes) and breast cancer
(569 x 30, 2 classes). No download, no data root.

A fixed seeded split holds out 20 % as the test set; features are standardised with the
training set's per-feature mean and std.
"""

from __future__ import annotations

from pathlib import Path

import torch

from uhn_spec.spec import TaskSpec

from .synthetic import TensorData
from .task_data import TaskData, register_loader

SPLIT_SEED = 0
TEST_FRACTION = 0.2


@register_loader("wine", "breast_cancer")
def load_tabular(task: TaskSpec, data_root: Path | None = None) -> TaskData:
    from sklearn import datasets  # local: keeps scikit-learn off other imports

    bunch = datasets.load_wine() if task.dataset == "wine" else datasets.load_breast_cancer()
    features = torch.tensor(bunch.data, dtype=torch.float32)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(len(labels) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    mean, std = features[train].mean(dim=0), features[train].std(dim=0).clamp_min(1e-8)
    features = (features - mean) / std
    data = TensorData(
        metric=task.info.metric,
        splits={"train": (features[train], labels[train]), "test": (features[test], labels[test])},
    )
    data.notes.append(
        f"scikit-learn {task.dataset}: {len(train)} train / {len(test)} test examples, fixed split (seed {SPLIT_SEED})"
    )
    return data
