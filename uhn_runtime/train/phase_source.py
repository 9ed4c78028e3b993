"""What one phase trains and how a step reaches it: the weight source (a UHN, its recursive
chain, or the direct weights), the weights as training takes them (through DDP under
torchrun unless the exact path sums the gradients itself), the optimiser with its clipping
and level-change bound, and the run's one step strategy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.generation_shard import GenerationShard
from ..model.target import DeviceTarget
from ..model.weights import RecursiveSource, SourceKind, UHNSource, WeightSource, depth_lr_scale, make_source
from .distributed import DistContext, broadcast_parameters, synced_flat
from .optim import Stepper, make_adamw
from .options import TrainOptions
from .precision import Precision
from .samplers import Sampler
from .step_bound import LevelChangeBound
from .steps import StepContext, Strategy, step_strategy
from .stop_signals import StopSignals


@dataclass
class PhaseSource:
    source: WeightSource
    flat: Callable[[DeviceTarget], torch.Tensor]
    lr: float
    stepper: Stepper
    strategy: Strategy
    change_bound: float | None  # train.level_change_bound of a UHN phase
    evaluated_by_all: bool  # sharded generation: every rank takes part in evaluating


def phase_source(
    kind: SourceKind,
    sampler: Sampler,
    precision: Precision,
    options: TrainOptions,
    stop: StopSignals,
    micro_shards: int,
    dist: DistContext,
    source: WeightSource | None = None,
) -> PhaseSource:
    """``micro_shards``: ``run.exact_micro_shards``'s (0 where the exact step does not apply,
    sharded generation included); ``source``: one made elsewhere (``uhn bench``'s naive
    generator), else ``make_source``'s."""
    plan, cfg = sampler.plan, sampler.cfg
    first = sampler.targets[sampler.seen[0]]
    source = source if source is not None else make_source(kind, plan, first, cfg.seed)
    if isinstance(source, UHNSource):  # keep a layout for every cached target
        source.generator.layout_cache_size = max(source.generator.layout_cache_size, sampler.targets.capacity)
    lr = cfg.lr * depth_lr_scale(plan.recursion_depth) if kind == "uhn" else (cfg.direct_lr or cfg.lr)
    sharded = kind == "uhn" and options.shard_generation and dist.active
    if sharded:
        source.generator.shard = GenerationShard.for_context(dist)  # type: ignore[union-attr]  # kind "uhn": a generator
    if micro_shards:  # exact: the same bits on any number of processes and threads
        broadcast_parameters(source, dist)
        if isinstance(source, UHNSource | RecursiveSource):
            source.generator.thread_invariant = True
    flat = source.flat if micro_shards else synced_flat(source, dist, first.device)
    change_bound = cfg.level_change_bound if kind == "uhn" else None
    bound = LevelChangeBound(source, change_bound, precision) if change_bound else None  # type: ignore[arg-type]  # only kind "uhn" has a bound
    stepper = Stepper(make_adamw(source.parameters(), lr), precision, cfg.grad_clip, bound)
    context = StepContext(flat, stepper, precision, sampler, dist, stop, cfg.seed, cfg.target_segments, first.device)
    pcgrad = plan.mode == "multitask" and cfg.gradient_surgery == "pcgrad"
    strategy = step_strategy(context, micro_shards, pcgrad)
    return PhaseSource(source, flat, lr, stepper, strategy, change_bound, sharded)
