"""Fixed, seeded splits shared by the real-data loaders.

With ``task.validate_split`` a loader holds out part of its training data as ``val`` and
trains on the rest, as the authors' ``--validate`` does: the fraction
is per dataset and the seed is ``42 + dataset id``, the permutation that
``torch.utils.data.random_split`` draws with that seed. Without it the whole training split
trains (the protocol of the paper's results) and there is no ``val`` split.
"""

from __future__ import annotations

import torch

from uhn_spec.enums import DatasetType

SplitTensors = dict[str, tuple[torch.Tensor, torch.Tensor]]

# Held-out fraction of the training data per dataset, as in the authors' code.
VAL_FRACTION = {DatasetType.MNIST: 0.2, DatasetType.CIFAR10: 0.1, DatasetType.AG_NEWS: 0.2, DatasetType.IMDB: 0.2}
FORMULA_VAL_FRACTION = 0.2  # 800 / 200 of the 1,000 training points
VAL_SEED_BASE = 42


def val_fraction(dataset: DatasetType) -> float:
    return VAL_FRACTION.get(dataset, FORMULA_VAL_FRACTION)


def split_off_val(inputs: torch.Tensor, targets: torch.Tensor, dataset: DatasetType) -> SplitTensors:
    """``train`` and ``val`` from one training set: a seeded permutation, the first
    (1 - fraction) of it trains."""
    n = len(targets)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED_BASE + int(dataset)))
    n_train = round(n * (1.0 - val_fraction(dataset)))
    train, val = order[:n_train], order[n_train:]
    return {"train": (inputs[train], targets[train]), "val": (inputs[val], targets[val])}


def train_val_test(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    dataset: DatasetType,
    validate: bool,
) -> SplitTensors:
    """The splits a loader serves: train (+ val held out of it when asked) and test."""
    splits = split_off_val(*train, dataset) if validate else {"train": train}
    splits["test"] = test
    return splits
