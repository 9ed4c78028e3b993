"""Learning-rate schedules as pure functions of the unit counter (epoch or step).

A pure function of the counter needs no scheduler state of its own: a resumed run sets the
same rate as an uninterrupted one from the counter alone.
"""

from __future__ import annotations

import math

import torch


def cosine_factor(unit: int, total: int) -> float:
    """(1 + cos(pi * unit / total)) / 2: 1 at the start, falling to 0 at ``total``."""
    if total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(unit, total) / total))


def warmup_cosine_factor(unit: int, warmup: int, total: int) -> float:
    """The authors' SequentialLR: linear warmup (u+1)/(W+1) for the first W units, then
    cosine annealing over the remaining total - W units (12 epochs, W=5: 1/6 ... 5/6, 1, ...)."""
    if unit < warmup:
        return (unit + 1) / (warmup + 1)
    return cosine_factor(unit - warmup, total - warmup)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
