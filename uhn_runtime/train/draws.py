"""The draws a run makes from its seed: the data order of an epoch and the architectures (or
tasks) of a step. Pure functions of their arguments, with no RNG state, so that a resumed run
draws exactly what an uninterrupted one does, and a benchmark draws what training draws."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order seed of one epoch: a pure function, so a resumed run sees the same order."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


def architecture_draw(
    seed: int,
    step: int,
    count: int,
    k: int = 1,
    stream: str = "train",
    probabilities: Sequence[float] | None = None,
    rank: int = 0,
) -> list[int]:
    """Which of ``count`` seen architectures step ``step`` of ``stream`` ("train" or "init")
    trains on process ``rank``: ``min(k, count)`` distinct positions, uniformly, or with
    ``probabilities`` (a multi-task run, i.i.d. over steps: each position drawn with them
    among those not yet drawn, renormalised, so one position is the plain weighted draw).
    A pure function of its arguments (a private ``random.Random`` seeded with a string, of
    which only ``random()`` is used: the stream Python keeps across versions), so a resumed
    run draws what an uninterrupted one does. Under torchrun each rank draws its own (rank 0
    what one process would), so N ranks train N architectures (or tasks) per step. One
    architecture: always [0]."""
    k = min(k, count)
    if count == 1:
        return [0]
    key = f"uhn-architectures:{stream}:{seed}:{step}" + (f":rank{rank}" if rank else "")
    rng = random.Random(key)
    if probabilities is not None:
        if len(probabilities) != count:
            raise ValueError(f"a weighted draw over {count} positions got {len(probabilities)} probabilities")
        left, drawn = list(probabilities), []
        for _ in range(k):  # without replacement: a drawn position's weight drops to 0
            position = weighted_position(rng.random(), left)
            drawn.append(position)
            left[position] = 0.0
        return drawn
    pool = list(range(count))
    for i in range(k):  # partial Fisher-Yates: k distinct positions
        j = i + int(rng.random() * (count - i))
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


def weighted_position(u: float, weights: Sequence[float]) -> int:
    """The position whose cumulative-weight interval holds ``u`` (in [0, 1)) times the total."""
    threshold = u * math.fsum(weights)
    for position, weight in enumerate(weights):
        threshold -= weight
        if threshold < 0:
            return position
    return max(i for i, w in enumerate(weights) if w > 0)  # rounding at the top end
