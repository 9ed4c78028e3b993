"""The initialisation phase: train H until every generated parameter tensor has the mean and
population std of its target initialisation, as the authors' code does before the task
phase. The targets and their statistics are ``uhn_runtime.model.init_targets.InitTargets``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from ..model.init_targets import InitTargets
from ..model.weights import RecursiveSource, UHNSource
from .optim import Stepper, check_finite, make_adamw
from .precision import Precision
from .schedule import cosine_factor, set_lr, warmup_cosine_factor
from .step_bound import LevelChangeBound

# What the init phase does below H1's level (``train.init_deep_levels``).
DeepLevels = Literal["train", "calibrate"]


def run_init_phase(
    source: UHNSource | RecursiveSource,
    targets: InitTargets | Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    precision: Precision,
    last_good: str,
    on_step: Callable[[int, float, float], None] | None = None,
    flat: Callable[[], torch.Tensor] | None = None,
    change_bound: float | None = None,
    deep_levels: DeepLevels = "train",
) -> float:
    """Match the init statistics with a fresh AdamW and a per-step cosine schedule; the
    optimiser is discarded afterwards (the task phase builds its own). Returns the last loss.
    ``targets`` are one target's statistics, or a function giving step i's loss (a family
    run: the architectures drawn for that step); ``flat`` generates the weights otherwise
    (default ``source.flat``; under torchrun through DDP). A recursive source takes the
    top-down schedule instead (``run_top_down_init``). ``change_bound``: every step kept
    within that relative change of the generated weights (``LevelChangeBound``);
    ``deep_levels``: see ``run_top_down_init``."""
    if isinstance(source, RecursiveSource):
        return run_top_down_init(source, steps, lr, precision, last_good, on_step, change_bound, deep_levels)
    generate = flat or source.flat
    loss_at = targets if callable(targets) else lambda _: targets.loss(generate())
    bound = LevelChangeBound(source, change_bound, precision) if change_bound else None
    return _match_stats(
        source,
        loss_at,
        range(steps),
        lambda step: lr * cosine_factor(step, steps),
        precision,
        None,
        last_good,
        on_step,
        bound,
    )


def _match_stats(
    source: torch.nn.Module,
    loss_at: Callable[[int], torch.Tensor],
    steps: range,
    lr_at: Callable[[int], float],
    precision: Precision,
    grad_clip: float | None,
    last_good: str,
    on_step: Callable[[int, float, float], None] | None,
    bound: LevelChangeBound | None = None,
) -> float:
    """One optimiser (fresh AdamW) over ``steps`` (global step numbers) of ``loss_at(step)``."""
    stepper = Stepper(make_adamw(source.parameters(), lr_at(steps.start)), precision, grad_clip, bound)
    loss_value = float("nan")
    for step in steps:
        step_lr = lr_at(step)
        set_lr(stepper.optimizer, step_lr)
        with precision.autocast():
            loss = loss_at(step)
        loss_value = float(loss.detach())
        check_finite(loss_value, f"init step {step + 1}/{steps.stop}", last_good)
        stepper.step(loss)
        if on_step is not None:
            on_step(step, loss_value, step_lr)
    return loss_value


# Gradient clipping of the recursive init phase (max norm, after unscaling), as the authors'.
TOP_DOWN_GRAD_CLIP = 0.01


def top_down_stages(steps: int, depth: int) -> list[range]:
    """The init steps of each level of a depth-K chain (K + 1 levels: H1, ..., H_K, leaf),
    top down: S_lvl = steps // (K + 1) each, level k active for steps [k S_lvl, (k+1) S_lvl)
    (active level min(K, step // S_lvl): the leaf also takes the remainder)."""
    per_level = steps // (depth + 1)
    starts = [k * per_level for k in range(depth + 1)]
    return [range(start, stop) for start, stop in zip(starts, [*starts[1:], steps])]


def stage_lr_scale(depth: int, level: int) -> float:
    """The init lr factor of each level, as the authors' code sets it: depth 1 takes init_lr
    throughout; deeper chains x1/5 on levels 0-1, x1/10 on level 2, x1/40 below."""
    if depth <= 1:
        return 1.0
    return 0.2 if level <= 1 else 0.1 if level == 2 else 0.025


def run_top_down_init(
    source: RecursiveSource,
    steps: int,
    lr: float,
    precision: Precision,
    last_good: str,
    on_step: Callable[[int, float, float], None] | None = None,
    change_bound: float | None = None,
    deep_levels: DeepLevels = "train",
) -> float:
    """The recursive init phase: level by level from the top (H1's weights first, the leaf
    last), each stage with its own fresh AdamW and clipping at 0.01, matching only the
    active level's statistics while generating the chain down to it. Depth 1: cosine over
    each stage; deeper: linear warmup over the first half of each stage (the authors' 1,000
    of 2,000 steps), then cosine. Before each stage below H1's, the chain is calibrated
    (``RecursiveSource.calibrate``: beyond the paper) so the stage starts at its targets'
    scale. ``change_bound``: each stage's steps kept within that relative change of the levels
    it generates (H1 down to the active level). ``deep_levels="calibrate"`` (beyond the
    paper): H1's stage takes every step and the levels below it are calibrated only, as the
    calibration alone starts them near their targets and Adam steps on H0 there move them
    more than they gain (docs/results.md). Returns the last stage's last loss, or the
    leaf's stats loss when its stage has no steps."""
    depth = source.depth
    stages = top_down_stages(steps, depth) if deep_levels == "train" else [range(steps)] + [range(steps, steps)] * depth
    loss_value = float("nan")
    for level, stage in enumerate(stages):
        targets = InitTargets(source.levels[level].plan, source.target.device)
        if level >= 1:
            source.calibrate(level, targets)
        if not len(stage):
            with torch.no_grad(), precision.autocast():
                loss_value = float(targets.loss(source.level_flats(level + 1)[level]))
            continue
        stage_lr = lr * stage_lr_scale(depth, level)
        warmup = len(stage) // 2 if depth >= 2 else 0

        def lr_at(step: int, stage: range = stage, stage_lr: float = stage_lr, warmup: int = warmup) -> float:
            return stage_lr * warmup_cosine_factor(step - stage.start, warmup, len(stage))

        def loss_of_step(step: int, level: int = level, targets: InitTargets = targets) -> torch.Tensor:
            return targets.loss(source.level_flats(level + 1)[level])

        bound = LevelChangeBound(source, change_bound, precision, levels=level + 1) if change_bound else None
        loss_value = _match_stats(
            source, loss_of_step, stage, lr_at, precision, TOP_DOWN_GRAD_CLIP, last_good, on_step, bound
        )
    return loss_value
