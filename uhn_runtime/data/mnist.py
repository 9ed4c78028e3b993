"""MNIST from the standard idx files (plain or gzip'd) under ``<root>/mnist/``.

60,000 training and 10,000 test images of 28x28 grey pixels, normalised with
(0.1307, 0.3081) as in the authors' code; no augmentation.
Images stay uint8 in memory and are normalised per batch (``images.ImageData``).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from uhn_spec.enums import DatasetType
from uhn_spec.spec import TaskSpec

from .files import first_existing, missing_error
from .images import ImageData
from .splits import train_val_test
from .task_data import DataError, TaskData, register_loader

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
IDX_UBYTE = 0x08  # the only element type the MNIST files use
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file: 2 zero bytes, element type, number of dims, big-endian int32 dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err}); the file may be truncated, download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise DataError(f"{path}: not an unsigned-byte idx file (header {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but {len(body)} bytes follow")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def find_idx(root: Path, stem: str) -> Path:
    candidates = [f"mnist/{stem}", f"mnist/{stem}.gz"]
    found = first_existing(root, candidates)
    if found is None:
        raise missing_error("mnist", root, candidates, stem)
    return found


def read_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_stem, labels_stem = FILES[split]
    images = read_idx(find_idx(root, images_stem))
    labels = read_idx(find_idx(root, labels_stem))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise DataError(f"mnist {split}: images {images.shape} and labels {labels.shape} do not pair up")
    # One copy out of the read-only buffer, as (N, 1, 28, 28) uint8.
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@register_loader("mnist")
def load_mnist(task: TaskSpec, root: Path) -> TaskData:
    splits = train_val_test(read_split(root, "train"), read_split(root, "test"), DatasetType.MNIST, task.validate_split)
    return ImageData(metric=task.info.metric, splits=splits, mean=MNIST_MEAN, std=MNIST_STD)
