"""How a training step forms its gradient and takes the optimiser step: one strategy per
run, chosen once (``step_strategy``), each a callable ``strategy(step, work, where,
last_good) -> loss``.

* ``PlainStep``: one process; the drawn targets' losses on their batches, averaged.
* ``DDPStep``: under torchrun, each rank its share of the global batch, its loss scaled so
  that DistributedDataParallel's gradient average is the global batch's.
* ``ExactStep``: the same bits on any number of processes (docs/distributed.md, "Exact data
  parallel"): the generated weights' gradient as the ordered sum of fixed micro-shards'.
* ``SurgeryStep``: PCGrad over the drawn tasks' gradients (``gradient_surgery.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from signal import Signals
from typing import Any

import torch

from uhn_spec.metrics import METRICS

from ..model.target import DeviceTarget
from ..model.target_segments import forward_in_segments
from .distributed import (
    DistContext,
    agree_on_step,
    exchange_micro_shards,
    micro_shard,
    ordered_sum,
    owned_micro_shards,
    rank_seed,
    shard_batch,
)
from .gradient_surgery import SurgeryLog, project_conflicts, projection_orders
from .optim import Stepper, check_finite
from .precision import Precision
from .samplers import Sampler, Work
from .stop_signals import STOP_SIGNALS, StopSignals


@dataclass(frozen=True)
class StepContext:
    """What every strategy works with; the trainer builds it once per phase."""

    flat: Callable[[DeviceTarget], torch.Tensor]  # the weights as training takes them
    stepper: Stepper
    precision: Precision
    sampler: Sampler
    dist: DistContext
    stop: StopSignals
    seed: int
    segments: int  # train.target_segments
    device: torch.device


class PlainStep:
    """One optimiser step on the mean loss of the step's drawn targets (one: its own loss)."""

    name = "plain"  # in summary.json's train_step and uhn bench's report

    def __init__(self, ctx: StepContext):
        self.ctx = ctx

    def __call__(self, step: int, work: list[Work], where: str, last_good: str) -> float:
        with self.ctx.precision.autocast():
            loss = mean_loss([self.loss(item) for item in work])
        value = float(loss.detach())
        check_finite(value, self.named(where, work), last_good)
        self.ctx.stepper.step(loss)
        return value

    def loss(self, item: Work, share: float = 1.0) -> torch.Tensor:
        """The loss of one drawn target on its batch (in autocast); the sampler sees the outputs."""
        item = replace(item, batch=item.batch.to(self.ctx.device))
        item.target.model.train()
        outputs = forward_in_segments(
            item.target, self.ctx.flat(item.target), self.ctx.segments, **item.batch.model_kwargs()
        )
        if not share:  # an empty share still runs forward and backward: DDP needs every rank's gradients
            return outputs.sum() * 0.0
        self.ctx.sampler.observe(item, outputs)
        return METRICS[self.ctx.sampler.data_for(item.target).metric].loss(*item.batch.select(outputs))

    def named(self, where: str, work: list[Work]) -> str:
        """``where`` with the step's targets named, when the run has several."""
        return f"{where} ({', '.join(w.target.plan.name for w in work)})" if self.ctx.sampler.named else where

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass

    def interval_record(self) -> dict[str, Any]:
        """What the strategy adds to a log interval's record; a new interval starts."""
        return {}

    def phase_record(self) -> dict[str, Any]:
        return {}


class DDPStep(PlainStep):
    """This rank's share of each batch; the loss scaled by share x world size, so that DDP's
    average of the ranks' gradients is the gradient of the global batch's mean loss. Each
    rank draws its dropout from (seed, step, rank)."""

    name = "ddp"

    def __call__(self, step: int, work: list[Work], where: str, last_good: str) -> float:
        dist = self.ctx.dist
        torch.manual_seed(rank_seed(self.ctx.seed, step, dist.rank))
        shared = [shard_batch(item.batch, dist.rank, dist.world_size) for item in work]
        share = shared[0][1]
        work = [replace(item, batch=batch) for item, (batch, _) in zip(work, shared)]
        with self.ctx.precision.autocast():
            loss = mean_loss([self.loss(item, share) for item in work])
        report = agree_on_step(dist, float(loss.detach()) * share, self.ctx.stop.requested, STOP_SIGNALS)
        share_stop(self.ctx.stop, report.signal)
        check_finite(report.loss, self.named(where, work), last_good)
        self.ctx.stepper.step(loss * (share * dist.world_size))
        return report.loss


class ExactStep(PlainStep):
    """The generated weights' gradient of each of ``micro_shards`` fixed micro-shards of the
    batch, computed by the rank that owns it, exchanged and summed in micro-shard order on
    every rank; then one backward through the weight source, identical on every rank, so no
    gradient average is needed. A graph batch (one graph, every node needed) is one
    micro-shard that every rank computes. One target, one batch a step."""

    name = "exact"

    def __init__(self, ctx: StepContext, micro_shards: int):
        super().__init__(ctx)
        self.micro_shards = micro_shards

    def __call__(self, step: int, work: list[Work], where: str, last_good: str) -> float:
        ctx, dist = self.ctx, self.ctx.dist
        ((_, target, batch),) = [(w.position, w.target, w.batch) for w in work]
        metric = METRICS[ctx.sampler.data_for(target).metric]
        with ctx.precision.autocast():
            flat = ctx.flat(target)
        weights = flat.detach().requires_grad_()
        target.model.train()

        def loss_and_gradient(index: int, count: int) -> torch.Tensor:
            """[gradient of the generated weights, loss] of micro-shard ``index``, the loss
            weighted by its share of the batch's examples; dropout drawn from (seed, step, index)."""
            part, share = micro_shard(batch, index, count)
            if not share:  # a batch of fewer examples than micro-shards
                return torch.zeros(weights.numel() + 1, device=weights.device)
            torch.manual_seed(rank_seed(ctx.seed, step, index))
            part = part.to(ctx.device)
            with ctx.precision.autocast():
                outputs = forward_in_segments(target, weights, ctx.segments, **part.model_kwargs())
                loss = metric.loss(*part.select(outputs)) * share
            (gradient,) = torch.autograd.grad(loss, weights)
            return torch.cat([gradient.float(), loss.detach().float().view(1)])

        count = self.micro_shards
        if batch.node_mask is not None:
            total = loss_and_gradient(0, 1)
        elif dist.active:
            own = [loss_and_gradient(i, count) for i in owned_micro_shards(count, dist.rank, dist.world_size)]
            total = ordered_sum(exchange_micro_shards(dist, own, count, weights.numel() + 1, weights.device))
        else:  # the same left-to-right sum, without holding every micro-shard's row at once
            total = loss_and_gradient(0, count)
            for index in range(1, count):
                total += loss_and_gradient(index, count)
        gradient, value = total[:-1], float(total[-1])
        if dist.active:  # rank 0's value, unchanged (+ 0.0): the stop requests are what it collects
            report = agree_on_step(dist, value if dist.is_main else 0.0, ctx.stop.requested, STOP_SIGNALS)
            share_stop(ctx.stop, report.signal)
        check_finite(value, where, last_good)
        # d/dflat of sum(flat * gradient) is ``gradient``, exactly: the source's backward.
        ctx.stepper.step((flat * gradient.to(flat.dtype)).sum())
        return value


class SurgeryStep(PlainStep):
    """PCGrad: each drawn task's loss and gradient alone (one graph at a time), the
    conflicting components projected away in the step's seeded order, one step on the mean
    of the projected gradients (clipped as any step). One process."""

    name = "pcgrad"

    def __init__(self, ctx: StepContext):
        super().__init__(ctx)
        self.interval, self.total = SurgeryLog(), SurgeryLog()  # this log interval's, the run's

    def __call__(self, step: int, work: list[Work], where: str, last_good: str) -> float:
        stepper = self.ctx.stepper
        values, rows = [], []
        for item in work:
            with self.ctx.precision.autocast():
                loss = self.loss(item)
            values.append(float(loss.detach()))
            rows.append(torch.cat([g.reshape(-1).float() for g in stepper.gradients(loss)]))
        value = math.fsum(values) / len(values)
        names = [item.target.plan.name for item in work]
        check_finite(value, self.named(where, work), last_good)
        projection = project_conflicts(torch.stack(rows), projection_orders(self.ctx.seed, step, len(rows)))
        for log in (self.interval, self.total):
            log.add(names, projection, stepper.loss_scale)
        mean = projection.mean_gradient
        grads, offset = [], 0
        for param in (p for p in stepper.params() if p.requires_grad):
            grads.append(mean[offset : offset + param.numel()].view_as(param).to(param.dtype))
            offset += param.numel()
        stepper.step_on(grads)
        return value

    def state_dict(self) -> dict[str, Any] | None:
        return {"interval": self.interval.state_dict(), "total": self.total.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.interval.load_state_dict(state["interval"])
            self.total.load_state_dict(state["total"])

    def interval_record(self) -> dict[str, Any]:
        record, self.interval = self.interval.record(), SurgeryLog()
        return {"pcgrad": record}

    def phase_record(self) -> dict[str, Any]:
        return {"pcgrad": self.total.record()}


Strategy = PlainStep


def step_strategy(ctx: StepContext, micro_shards: int, pcgrad: bool) -> Strategy:
    """The run's one strategy: PCGrad when asked, else exact micro-shards when they apply
    (``micro_shards`` > 0), else DDP's average under torchrun, else the plain step."""
    if pcgrad:
        return SurgeryStep(ctx)
    if micro_shards:
        return ExactStep(ctx, micro_shards)
    return DDPStep(ctx) if ctx.dist.active else PlainStep(ctx)


def mean_loss(losses: list[torch.Tensor]) -> torch.Tensor:
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def share_stop(stop: StopSignals, signal: int | None) -> None:
    """A stop request another rank received becomes this rank's too."""
    if signal is not None and stop.requested is None:
        stop.requested = Signals(signal)
