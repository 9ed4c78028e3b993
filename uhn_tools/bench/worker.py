"""A `uhn bench` worker process: one case (``python -m uhn_tools.bench.worker CASE PLAN
OPTIONS``) on a saved plan, printed as one JSON line. Times are the median of ``repeats`` runs
after one warm-up run; memory is the peak over them above the setup's. Train steps are the
trainer's own (``training.py``)."""

from __future__ import annotations

import functools
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from uhn_runtime.model.fast_features import build_layout
from uhn_runtime.model.generator import UHNGenerator
from uhn_runtime.model.naive import naive_generate
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.weights import RecursiveSource
from uhn_runtime.train.distributed import DEFAULT_MICRO_SHARDS
from uhn_runtime.train.precision import Precision
from uhn_spec.plan import Plan, load_plan

from .flops import measure_matmul, peak_square
from .memory import current_memory, peak_memory, reset_peak_memory, sync
from .options import BenchOptions
from .steps import measure_family_step, measure_multitask_step
from .training import alone, bench_trainer, with_target_segments


@dataclass
class Setup:
    plan: Plan
    target: DeviceTarget
    generator: UHNGenerator
    precision: Precision
    device: torch.device
    flat: Callable[[], torch.Tensor]  # the target's weights: generated, through the chain if recursive


def worker_main(case: str, plan_path: str, options_json: str) -> dict[str, Any]:
    options = BenchOptions(**json.loads(options_json))
    device = torch.device(options.device)
    plan = load_plan(plan_path)
    precision = Precision.resolve(options.precision, device, plan.task_types)  # type: ignore[arg-type]  # a checked CLI choice
    if case == "matmul":
        return measure_matmul(device, precision, plan.generator, options.repeats, peak_square(options))
    if case == "family_step":
        return measure_family_step(plan, options, device, precision)
    if case == "multitask_step":
        return measure_multitask_step(plan, options, device, precision)
    if case.endswith("train_step") or case == "train_step_k0":
        return measure_train_step(plan, case, options, device, precision)
    target = DeviceTarget(plan.target(options.target) if options.target else plan.trained_target, device)
    torch.manual_seed(options.seed)
    if plan.recursion_depth:  # the whole chain
        source = RecursiveSource(plan, target, options.seed)
        generator, flat = source.generator, source.flat
    else:
        generator = UHNGenerator(plan.generator, plan.index_ranges, plan.structure_ranges, seed=options.seed).to(device)
        flat = functools.partial(target.generate, generator)
    setup = Setup(plan, target, generator, precision, device, flat)
    naive_rows = target.index_rows() if case.startswith("naive_") else None
    if naive_rows is None:
        result = measure_generate(setup, options, naive_rows)
        layout_seconds = measure_layout(setup)
        result["layout_seconds"] = layout_seconds
        result["layout_fraction"] = layout_seconds / result["seconds"]
    else:
        result = measure_generate(setup, options, naive_rows)
    if naive_rows is not None and case == "naive_generate":  # the numerical check: same weights
        with torch.no_grad(), precision.autocast():
            ours = target.generate(generator).float()
            theirs = naive_generate(generator, naive_rows, target.structure_rows).float()
        result["max_abs_diff"] = float((ours - theirs).abs().max()) if ours.numel() else 0.0
        result["reference_scale"] = float(theirs.abs().max()) if ours.numel() else 0.0
    return result


def measure_layout(setup: Setup) -> float:
    """Seconds to build the work units of the target's descriptors and their feature tables:
    what the first generation after loading a plan adds (the generator then caches both).
    Built afresh after the timed generations, so one-time library start-up is not counted."""
    g = setup.generator
    start = time.perf_counter()
    with torch.no_grad():
        layout = build_layout(setup.target.index, g.spec.chunk_rows, g.spec.hidden, g.spec.index_freqs, setup.device)
        layout.tables(g.index_fourier.basis())
    sync(setup.device)
    return time.perf_counter() - start


def measure_generate(setup: Setup, options: BenchOptions, naive_rows: torch.Tensor | None) -> dict[str, Any]:
    """One generation; with ``naive_rows``, the naive generator's on those rows."""
    t, g = setup.target, setup.generator

    def step() -> None:
        with torch.no_grad(), setup.precision.autocast():
            if naive_rows is None:
                setup.flat()
            else:
                naive_generate(g, naive_rows, t.structure_rows)

    return measure(step, setup.device, t.num_params, options.repeats)


def measure_train_step(
    plan: Plan, case: str, options: BenchOptions, device: torch.device, precision: Precision
) -> dict[str, Any]:
    """``Trainer.train_step`` as `uhn train` takes it (``training.py``): ``train_step`` the
    default step, ``exact_train_step`` the exact one (micro-shards), ``naive_train_step`` the
    default step with the naive generator as the weight source, ``train_step_k0`` a recursive
    plan's leaf generated by H0 directly. A multi-target plan's target trains alone (its own
    run's step). The exact step where it does not apply (BatchNorm) reports why, untimed."""
    plan = with_target_segments(plan, options.target_segments)
    name = options.target or plan.trained_target.name
    if case == "train_step_k0" or (len(plan.targets) > 1 and not plan.recursion_depth):
        plan = alone(plan, name)
    micro_shards = min(DEFAULT_MICRO_SHARDS, options.batch) if case == "exact_train_step" else 0
    naive = case == "naive_train_step"
    with bench_trainer(plan, options.batch, device, precision, micro_shards, naive) as bench:
        if micro_shards and bench.strategy != "exact":
            return {
                "not_applicable": f"{name} has BatchNorm, whose statistics would be a micro-shard's: "
                "`uhn train --exact` takes the default step for it"
            }
        steps = iter(range(options.repeats + 1))
        source = bench.trainer.source
        result = measure(lambda: bench.step(next(steps)), device, source.target.num_params, options.repeats)
        result["batch"] = options.batch
        result["target_segments"] = bench.trainer.cfg.target_segments
        result["step"] = bench.strategy
        result["micro_shards"] = micro_shards
        result["grad_clip"] = bench.trainer.cfg.grad_clip
        generator = source.generator
        assert isinstance(generator, UHNGenerator)  # a UHN source's (the naive one's too)
        result["saving_policy"] = "naive: everything" if naive else generator.saving_policy(source.target.num_params)
    return result


def measure(step: Callable[[], object], device: torch.device, num_params: int, repeats: int) -> dict[str, Any]:
    """``step`` once (warm-up), then ``repeats`` timed times: the median, every time, and the
    peak memory above what was held before."""
    baseline = current_memory(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = peak_memory(device)
    n = num_params
    return {
        "seconds": statistics.median(times),
        "times": times,
        "first_call_seconds": first,
        "peak_memory_bytes": peak,
        "baseline_bytes": baseline,
        "bytes_per_weight": (peak - baseline) / max(n, 1),
        "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


if __name__ == "__main__":
    print(json.dumps(worker_main(*sys.argv[1:4])))
