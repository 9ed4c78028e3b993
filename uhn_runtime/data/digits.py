"""scikit-learn's bundled 8x8 digits: the embedded default task (no download, no data root).

1,797 grey 8x8 images of the digits 0-9, pixel values 0..16. A fixed seeded split gives
1,437 training and 360 test images; pixels are scaled to [0, 1] and then standardised with
the training set's mean and std, as MNIST is with its (0.1307, 0.3081).
"""

from __future__ import annotations

from pathlib import Path

import torch

from uhn_spec.spec import TaskSpec

from .synthetic import TensorData
from .task_data import TaskData, register_loader

SPLIT_SEED = 0
TEST_IMAGES = 360


@register_loader("digits")
def load_digits_data(task: TaskSpec, data_root: Path | None = None) -> TaskData:
    from sklearn.datasets import load_digits  # local: keeps scikit-learn off other imports

    bunch = load_digits()
    images = torch.tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = order[:TEST_IMAGES], order[TEST_IMAGES:]
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    data = TensorData(
        metric=task.info.metric, splits={"train": (images[train], labels[train]), "test": (images[test], labels[test])}
    )
    data.notes.append(
        f"scikit-learn digits: {len(train)} train / {len(test)} test images, fixed split (seed {SPLIT_SEED})"
    )
    return data
