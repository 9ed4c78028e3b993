"""PCGrad (Yu et al. 2020, "Gradient surgery for multi-task learning") for a multi-task
step over k tasks (``train.gradient_surgery: pcgrad``, ``train.tasks_per_step: k``).

Each drawn task's gradient g_i w.r.t. the generator's trainable parameters is taken alone;
then for each g_i, over the other tasks' *original* gradients g_j in a random order,

    if g_i . g_j < 0:   g_i <- g_i - (g_i . g_j / |g_j|^2) g_j

(the authors' code: g_i is the copy being projected, g_j stays the unprojected gradient).
The step's gradient is the *mean* of the projected g_i, so without conflicts it equals the
gradient of the mean loss, which ``gradient_surgery: none`` steps on: the learning rate and
clipping mean the same with and without surgery. The order is a pure function of (seed,
step), like the task draw, so a resumed run projects exactly as an uninterrupted one.

``SurgeryLog`` sums what the projections saw (pairwise cosines of the original gradients,
each task's gradient norm, the projections made) for ``metrics.jsonl`` and summary.json:
the cheap measurements of interference the step computes anyway.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def projection_orders(seed: int, step: int, k: int) -> list[list[int]]:
    """For each of the k gradients, the others in the order it is projected against them: a
    seeded shuffle per gradient, a pure function of (seed, step) (``random.Random`` with a
    string seed, of which only ``random()`` is used, as the task draw)."""
    rng = random.Random(f"uhn-pcgrad:{seed}:{step}")
    orders = []
    for i in range(k):
        others = [j for j in range(k) if j != i]
        for a in range(len(others) - 1):  # Fisher-Yates
            b = a + int(rng.random() * (len(others) - a))
            others[a], others[b] = others[b], others[a]
        orders.append(others)
    return orders


@dataclass(frozen=True)
class Projection:
    """One step's surgery: the projected gradients and what the originals looked like."""

    gradients: torch.Tensor  # (k, P): each task's gradient after projection
    cosines: dict[tuple[int, int], float]  # i < j: cosine of the original g_i and g_j
    norms: tuple[float, ...]  # |g_i| of the originals
    projections: int  # how many (i, j) projections were made

    @property
    def mean_gradient(self) -> torch.Tensor:
        """What the optimiser steps on: the mean of the projected gradients."""
        return self.gradients.mean(dim=0)


def project_conflicts(gradients: torch.Tensor, orders: Sequence[Sequence[int]]) -> Projection:
    """PCGrad over the rows of ``gradients`` (k, P), each row projected against the others in
    ``orders[i]`` (module docstring). A zero g_j is skipped (no direction to remove)."""
    original = gradients.float()
    gram = original @ original.T  # every inner product of the originals, once
    squared = gram.diagonal()
    projected = original.clone()
    projections = 0
    for i, order in enumerate(orders):
        g_i = projected[i]
        for j in order:
            dot = g_i @ original[j]
            if dot < 0 and squared[j] > 0:
                g_i -= (dot / squared[j]) * original[j]
                projections += 1
    norms = squared.clamp_min(0).sqrt()
    cosines = {
        (i, j): float(gram[i, j] / (norms[i] * norms[j])) if norms[i] > 0 and norms[j] > 0 else 0.0
        for i in range(len(orders))
        for j in range(i + 1, len(orders))
    }
    return Projection(projected, cosines, tuple(float(n) for n in norms), projections)


class SurgeryLog:
    """Sums of what the PCGrad steps saw, by task name and task pair, reported as means."""

    def __init__(self) -> None:
        self.steps = 0
        self.projections = 0
        self.conflict_steps = 0  # steps with at least one negative cosine
        self.pairs: dict[str, list[float]] = {}  # "a/b" -> [cosine sum, negative count, count]
        self.norms: dict[str, list[float]] = {}  # name -> [norm sum, count]

    def add(self, names: Sequence[str], projection: Projection, scale: float = 1.0) -> None:
        """One step over the tasks ``names`` (in the rows' order); ``scale`` divides the
        norms (fp16's loss scale: the log shows the loss's own gradient)."""
        self.steps += 1
        self.projections += projection.projections
        self.conflict_steps += any(c < 0 for c in projection.cosines.values())
        for (i, j), cosine in projection.cosines.items():
            a, b = sorted((names[i], names[j]))
            entry = self.pairs.setdefault(f"{a}/{b}", [0.0, 0, 0])
            entry[0] += cosine
            entry[1] += cosine < 0
            entry[2] += 1
        for name, norm in zip(names, projection.norms):
            entry = self.norms.setdefault(name, [0.0, 0])
            entry[0] += norm / scale
            entry[1] += 1

    def record(self) -> dict[str, Any] | None:
        """The means since the log was (re)started; None before any step."""
        if not self.steps:
            return None
        cosine_sum = math.fsum(e[0] for e in self.pairs.values())
        pair_count = sum(e[2] for e in self.pairs.values())
        return {
            "steps": self.steps,
            "projections": self.projections,
            "projections_per_step": self.projections / self.steps,
            "conflict_step_fraction": self.conflict_steps / self.steps,
            "mean_cosine": cosine_sum / pair_count if pair_count else None,
            "cosine": {pair: e[0] / e[2] for pair, e in sorted(self.pairs.items())},
            "negative_fraction": {pair: e[1] / e[2] for pair, e in sorted(self.pairs.items())},
            "grad_norm": {name: e[0] / e[1] for name, e in sorted(self.norms.items())},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "projections": self.projections,
            "conflict_steps": self.conflict_steps,
            "pairs": {k: list(v) for k, v in self.pairs.items()},
            "norms": {k: list(v) for k, v in self.norms.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.projections = int(state["projections"])
        self.conflict_steps = int(state["conflict_steps"])
        self.pairs = {k: list(v) for k, v in state["pairs"].items()}
        self.norms = {k: list(v) for k, v in state["norms"].items()}
