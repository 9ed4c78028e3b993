"""``task.resize``: every image batch resized to [H, W] (bilinear, antialiased), after the
dataset's own preprocessing and augmentation, so any image dataset feeds any input size."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch.nn.functional as F

from .task_data import Batch, Split, TaskData


@dataclass
class ResizedData(TaskData):
    """``inner``'s batches with their images resized to ``size``."""

    inner: TaskData | None = None
    size: tuple[int, int] = (0, 0)

    def _resized(self, batch: Batch) -> Batch:
        images = F.interpolate(batch.inputs, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return replace(batch, inputs=images)

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        assert self.inner is not None
        return (self._resized(b) for b in self.inner.train_batches(batch_size, seed))

    def eval_batches(self, split: Split, batch_size: int) -> Iterator[Batch]:
        assert self.inner is not None
        return (self._resized(b) for b in self.inner.eval_batches(split, batch_size))

    def num_train_batches(self, batch_size: int) -> int:
        assert self.inner is not None
        return self.inner.num_train_batches(batch_size)


def resized(data: TaskData, size: tuple[int, int]) -> TaskData:
    return ResizedData(
        metric=data.metric,
        notes=list(data.notes) + [f"images resized to {size[0]}x{size[1]} (task.resize)"],
        inner=data,
        size=size,
    )
