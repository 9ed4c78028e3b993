"""Image datasets kept as uint8 and turned into normalised floats one batch at a time.

A float32 copy of CIFAR-10 would take 740 MB; uint8 takes a quarter of that, and the
per-batch cost (a subtraction and a division) is negligible next to the model.
The CIFAR training augmentation -- reflect-pad 4, random 32x32 crop, random horizontal
flip -- is one gather per batch, seeded by the epoch's generator, with no torchvision.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .synthetic import TensorData
from .task_data import Batch

CROP_PAD = 4


@dataclass(kw_only=True)
class ImageData(TensorData):
    """uint8 images (N, C, H, W); per-channel ``mean`` and ``std`` are on the [0, 1] scale."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False  # pad-crop-flip on training batches only

    def _batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> Batch:
        return Batch(self.normalise(inputs), targets)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean).view(shape)
        std = torch.tensor(self.std).view(shape)
        return (images.float() / 255.0 - mean) / std

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        inputs, targets = self._split("train")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(targets), generator=generator)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            images = inputs[chosen]
            if self.augment:
                images = pad_crop_flip(images, generator)
            yield self._batch(images, targets[chosen])


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in [-pad, size + pad) onto the image as reflect padding does
    (the edge pixel is not repeated: -1 -> 1, size -> size - 2)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def pad_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = CROP_PAD) -> torch.Tensor:
    """Reflect-pad by ``pad``, crop a random window of the original size, flip half the
    images left-right: the same distribution as torchvision's Pad(pad, reflect) ->
    RandomHorizontalFlip -> RandomCrop, done as one gather without materialising the pad."""
    n, _, height, width = images.shape
    top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = reflect(top - pad + torch.arange(height), height)  # (n, H)
    cols = left - pad + torch.arange(width)
    cols = reflect(torch.where(flip, cols.flip(1), cols), width)  # (n, W)
    batch = torch.arange(n).view(n, 1, 1)
    # Advanced indexing puts the indexed dims first: (n, H, W, C) -> (n, C, H, W).
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
