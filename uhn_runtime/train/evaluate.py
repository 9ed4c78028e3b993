"""Evaluation of a weight source (generated once per evaluation) or of a plain module.

The target forward always runs in fp32: evaluation is cheap next to generation, and it makes
a run's own test metric and that of its exported plain module the same number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from uhn_spec.metrics import METRICS

from ..data import Batch, Split, TaskData
from ..model.batch_norm import recalibrate_from_data
from ..model.target import DeviceTarget
from ..model.weights import DirectSource, RecursiveSource, UHNSource
from .precision import Precision

EVAL_BATCH_SIZE = 1024


@torch.no_grad()
def evaluate_forward(
    forward: Callable[[Batch], torch.Tensor],
    data: TaskData,
    split: Split,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """The split's figure in the data's metric of ``forward`` over the eval batches;
    ``on_batch(n)`` after the n-th batch (progress display)."""
    metric = METRICS[data.metric]
    total, count = 0.0, 0
    for done, batch in enumerate(data.eval_batches(split, EVAL_BATCH_SIZE), 1):
        batch = batch.to(device)
        outputs, targets = batch.select(forward(batch))
        batch_total, batch_count = metric.sums(outputs, targets)
        total += batch_total
        count += batch_count
        if on_batch is not None:
            on_batch(done)
    return metric.finish(total, count)


@torch.no_grad()
def generate_weights(
    source: UHNSource | RecursiveSource | DirectSource, precision: Precision, target: DeviceTarget | None = None
) -> torch.Tensor:
    """The flat weight vector of ``target`` (default: the source's own) as training sees it
    (generated in the run's precision), in fp32."""
    with precision.autocast():
        return source.flat(target).detach().float()


def evaluate_source(
    source: UHNSource | RecursiveSource | DirectSource,
    target: DeviceTarget,
    data: TaskData,
    split: Split,
    precision: Precision,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Generate the weights once, then run every eval batch through the target with them."""
    flat = generate_weights(source, precision, target)
    # BatchNorm statistics of these weights, not of the training steps' (no-op without BN).
    recalibrate_from_data(target, flat, data)
    was_training = target.model.training
    target.model.eval()
    try:
        return evaluate_forward(
            lambda b: target.forward(flat, **b.model_kwargs()), data, split, target.device, on_batch
        )
    finally:
        target.model.train(was_training)


def evaluate_module(model: nn.Module, data: TaskData, split: Split, device: torch.device) -> float:
    """A plain (e.g. exported) target module."""
    model.eval()
    return evaluate_forward(lambda b: model(**b.model_kwargs()), data, split, device)
