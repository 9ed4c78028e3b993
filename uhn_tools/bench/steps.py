"""The multi-target cases of `uhn bench`: train steps as a family run takes them (each on the
architectures drawn for that step) and as a multi-task run takes them (each on the member
drawn with the plan's probabilities, against each member's own steps)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from uhn_runtime.data.synthetic import synthetic_batch
from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.target import TargetCache
from uhn_runtime.model.target_segments import forward_in_segments
from uhn_runtime.train.draws import architecture_draw
from uhn_runtime.train.optim import make_adamw
from uhn_runtime.train.precision import Precision
from uhn_spec.metrics import METRICS
from uhn_spec.plan import Plan

from .memory import sync
from .options import BenchOptions

# Timed family steps per --repeats: enough draws to switch architecture many times.
FAMILY_STEPS_PER_REPEAT = 4


def measure_family_step(
    plan: Plan, options: BenchOptions, device: torch.device, precision: Precision
) -> dict[str, Any]:
    """Train steps of a family run: each on the architectures ``architecture_draw`` gives
    for that step, built through a ``TargetCache`` as ``uhn train`` does; one untimed
    warm-up step (library start-up), then ``FAMILY_STEPS_PER_REPEAT * repeats`` timed ones."""
    seen = [i for i, t in enumerate(plan.targets) if t.split == "seen"]
    train_spec = plan.targets[seen[0]].spec.train
    cache = TargetCache(plan, device)
    torch.manual_seed(options.seed)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=options.seed).to(device)
    generator.layout_cache_size = max(generator.layout_cache_size, cache.capacity)
    batch = synthetic_batch(plan.targets[seen[0]].spec.task, options.batch, device)
    metric = METRICS[plan.targets[seen[0]].spec.task.info.metric]
    optimizer = make_adamw(generator.parameters(), lr=1e-4)

    def step(index: int) -> int:
        positions = architecture_draw(train_spec.seed, index, len(seen), train_spec.models_per_step)
        drawn = [cache[seen[j]] for j in positions]
        with precision.autocast():
            losses = []
            for target in drawn:
                flat = target.generate(generator)
                outputs = forward_in_segments(target, flat, options.target_segments, **batch.model_kwargs())
                losses.append(metric.loss(*batch.select(outputs)))
            loss = torch.stack(losses).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return sum(t.num_params for t in drawn)

    step(0)
    times, weights, built = [], [], []
    for index in range(1, FAMILY_STEPS_PER_REPEAT * options.repeats + 1):
        misses = cache.misses
        start = time.perf_counter()
        weights.append(step(index))
        times.append(time.perf_counter() - start)
        built.append(cache.misses > misses)
    cached = [(t, w) for t, w, b in zip(times, weights, built) if not b]
    return {
        "steps": len(times),
        "seen_models": len(seen),
        "models_per_step": train_spec.models_per_step,
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
    """Multi-task train steps against each member's own, in one process and one generator.

    First every member alone, a streak of steps (one untimed warm-up, then
    ``MULTITASK_STEPS_PER_REPEAT * repeats`` timed): what its single-task run's step costs.
    Then as many steps per member drawn as ``uhn train`` draws them (``architecture_draw``
    with the probabilities), so switching member each step is in the time. Both share the
    targets (``TargetCache``) and the generator's layout cache, as the runs do."""
    members = list(range(len(plan.targets)))
    probabilities = [float(plan.targets[i].probability or 0.0) for i in members]
    cache = TargetCache(plan, device)
    torch.manual_seed(options.seed)
    generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=options.seed).to(device)
    generator.layout_cache_size = max(generator.layout_cache_size, cache.capacity)
    batches = [synthetic_batch(plan.targets[i].spec.task, options.batch, device) for i in members]
    optimizer = make_adamw(generator.parameters(), lr=1e-4)

    def step(member: int) -> float:
        start = time.perf_counter()
        target, batch = cache[member], batches[member]
        with precision.autocast():
            flat = target.generate(generator)
            outputs = forward_in_segments(target, flat, options.target_segments, **batch.model_kwargs())
            loss = METRICS[target.plan.spec.task.info.metric].loss(*batch.select(outputs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - start

    timed = MULTITASK_STEPS_PER_REPEAT * options.repeats
    own: list[float] = []
    for member in members:
        step(member)  # warm-up: builds the member's target, layout and feature tables
        own.append(statistics.fmean(step(member) for _ in range(timed)))
    seed = plan.targets[0].spec.train.seed
    drawn, times = [], []
    for index in range(1, timed * len(members) + 1):
        (member,) = architecture_draw(seed, index, len(members), 1, "train", probabilities)
        drawn.append(member)
        times.append(step(member))
    mean = statistics.fmean(times)
    by_probability = sum(p * t for p, t in zip(probabilities, own))
    by_draws = statistics.fmean(own[m] for m in drawn)
    names = [plan.targets[i].name for i in members]
    return {
        "steps": len(times),
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
