"""BatchNorm running statistics for generated weights.

Running statistics gathered during training describe the weights of many different steps
(the generator changes every weight every step), so before an evaluation or an export they
are recomputed for the final weights: reset, then a cumulative average over a few training
batches, with only the BatchNorm layers in training mode (dropout stays off, so the
statistics are those the evaluation forward will see).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn

from uhn_spec.layers.norm import NormLayer

from ..data import Batch, TaskData
from .target import DeviceTarget

# Training batches a recalibration averages over by default (evaluation and export).
DEFAULT_CALIBRATION_BATCHES = 10


def batch_norm_layers(model: nn.Module) -> list[NormLayer]:
    return [m for m in model.modules() if isinstance(m, NormLayer) and m.spec.type == "batch"]


@torch.no_grad()
def recalibrate_batch_norm(target: DeviceTarget, flat: torch.Tensor, batches: Iterable[Batch], count: int) -> int:
    """Recompute every BatchNorm's running statistics for the weights ``flat`` from the first
    ``count`` of ``batches``; returns how many batches were used (0 without BatchNorm)."""
    layers = batch_norm_layers(target.model)
    if not layers or count <= 0:
        return 0
    was_training = target.model.training
    target.model.eval()
    used = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the calibration batches
            layer.train()
        for batch in islice(batches, count):
            target.forward(flat, **batch.to(target.device).model_kwargs())
            used += 1
    finally:
        for layer in layers:
            layer.momentum = layer.spec.momentum
        target.model.train(was_training)
    return used


def recalibrate_from_data(
    target: DeviceTarget, flat: torch.Tensor, data: TaskData, count: int = DEFAULT_CALIBRATION_BATCHES
) -> int:
    """``recalibrate_batch_norm`` over the training split, in a fixed order (seed 0)."""
    if not batch_norm_layers(target.model):
        return 0
    spec = target.plan.spec
    return recalibrate_batch_norm(target, flat, data.train_batches(spec.train.batch_size, 0), count)
