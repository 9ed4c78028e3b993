"""The multi-target cases of `uhn bench`: train steps as a family run takes them (each on the
architectures its sampler draws for that step) and as a multi-task run takes them (each on
the member drawn with the plan's probabilities, against each member's own steps). Every step
is ``Trainer.train_step`` (``training.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from uhn_runtime.train.precision import Precision
from uhn_spec.plan import Plan

from .options import BenchOptions
from .training import BenchTrainer, alone, bench_trainer, with_target_segments

# Timed family steps per --repeats: enough draws to switch architecture many times.
FAMILY_STEPS_PER_REPEAT = 4


def measure_family_step(
    plan: Plan, options: BenchOptions, device: torch.device, precision: Precision
) -> dict[str, Any]:
    """Train steps of a family run: the family's trainer, whose sampler draws each step's
    architectures and builds them through its ``TargetCache`` as ``uhn train`` does; one
    untimed warm-up step (library start-up), then ``FAMILY_STEPS_PER_REPEAT * repeats`` timed ones."""
    plan = with_target_segments(plan, options.target_segments)
    with bench_trainer(plan, options.batch, device, precision) as bench:
        sampler = bench.trainer.sampler
        cache = sampler.targets
        bench.step(0)
        times, weights, built = [], [], []
        for index in range(1, FAMILY_STEPS_PER_REPEAT * options.repeats + 1):
            misses = cache.misses
            start = time.perf_counter()
            work = bench.step(index)
            times.append(time.perf_counter() - start)
            weights.append(sum(w.target.num_params for w in work))
            built.append(cache.misses > misses)
        cached = [(t, w) for t, w, b in zip(times, weights, built) if not b]
        return {
            "steps": len(times),
            "step": bench.strategy,
            "seen_models": len(sampler.seen),
            "models_per_step": sampler.cfg.models_per_step,
            "cache_capacity": cache.capacity,
            "cache_misses": cache.misses,
            "mean_seconds": statistics.fmean(times),
            "median_seconds": statistics.median(times),
            "mean_weights": statistics.fmean(weights),
            # Steps whose architectures were all cached: switching alone, no target built.
            "cached_steps": len(cached),
            "cached_seconds_per_weight": sum(t for t, _ in cached) / sum(w for _, w in cached) if cached else None,
            "times": times,
        }


# Timed steps per member and --repeats: each member's own streak, then the drawn steps.
MULTITASK_STEPS_PER_REPEAT = 4


def measure_multitask_step(
    plan: Plan, options: BenchOptions, device: torch.device, precision: Precision
) -> dict[str, Any]:
    """Multi-task train steps against each member's own, in one process.

    First every member alone, a streak of steps of its own single-task trainer (one untimed
    warm-up, then ``MULTITASK_STEPS_PER_REPEAT * repeats`` timed): what its single-task run's
    step costs. Then the multi-task trainer, as many steps per member as its sampler draws
    them (the plan's probabilities), so switching member each step is in the time."""
    plan = with_target_segments(plan, options.target_segments)
    names = [t.name for t in plan.targets]
    probabilities = [float(t.probability or 0.0) for t in plan.targets]
    timed = MULTITASK_STEPS_PER_REPEAT * options.repeats
    own: list[float] = []
    for name in names:
        with bench_trainer(alone(plan, name), options.batch, device, precision) as member:
            member.step(0)  # warm-up: builds the member's target, layout and feature tables
            own.append(statistics.fmean(timed_step(member.step, step) for step in range(1, timed + 1)))
    drawn: list[int] = []
    times: list[float] = []
    steps = range(1, timed * len(names) + 1)
    with bench_trainer(plan, options.batch, device, precision) as bench:
        warm_up_every_member(bench, steps.stop)  # as the own streaks: targets and layouts built
        for index in steps:
            drawn += bench.trainer.sampler.positions(index)
            times.append(timed_step(bench.step, index))
        step = bench.strategy
    mean = statistics.fmean(times)
    by_probability = sum(p * t for p, t in zip(probabilities, own))
    by_draws = statistics.fmean(own[m] for m in drawn)
    return {
        "steps": len(times),
        "step": step,
        "own_steps_per_member": timed,
        "probabilities": dict(zip(names, probabilities)),
        "own_mean_seconds": dict(zip(names, own)),
        "drawn": {name: drawn.count(i) for i, name in enumerate(names)},
        "mean_seconds": mean,
        "weighted_own_seconds": by_probability,
        "vs_probabilities": mean / by_probability,
        "vs_draws": mean / by_draws,
        "times": times,
    }


# Draws searched for a step that trains a member not yet warmed up (one of probability 0 never is).
WARM_UP_DRAWS = 10_000


def warm_up_every_member(bench: BenchTrainer, first: int) -> None:
    """Untimed steps, from step ``first`` on (past the timed ones), until every member the
    sampler can draw has been trained once."""
    sampler = bench.trainer.sampler
    cold = set(sampler.seen)
    for index in range(first, first + WARM_UP_DRAWS):
        if not cold:
            return
        drawn = set(sampler.positions(index))
        if drawn & cold:
            bench.step(index)
            cold -= drawn


def timed_step(step: Callable[[int], object], index: int) -> float:
    """Seconds of ``step(index)`` (a ``BenchTrainer.step``, which waits for the device)."""
    start = time.perf_counter()
    step(index)
    return time.perf_counter() - start
