"""The train step `uhn bench` times: ``Trainer.train_step``, the step `uhn train` runs, of a
trainer built as `uhn train` builds it (``new_sampler``, ``new_trainer``): its weight source,
optimiser, gradient clipping, precision and step strategy (the default step, or the exact
one with micro-shards). The bench hands every step synthetic batches of each target's task
shape (``synthetic_stand_in``); the sampler still draws the step's targets (a family's
architectures, a multi-task run's members), as in a run. The run folder is a temporary one
that nothing is written to: a train step writes nothing.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from uhn_runtime.data import Batch, TaskData
from uhn_runtime.data.synthetic import synthetic_stand_in
from uhn_runtime.model.naive import naive_generate
from uhn_runtime.model.target import DeviceTarget
from uhn_runtime.model.weights import UHNSource
from uhn_runtime.train.distributed import DistContext
from uhn_runtime.train.options import TrainOptions
from uhn_runtime.train.precision import Precision
from uhn_runtime.train.progress import Progress
from uhn_runtime.train.run import new_sampler, new_trainer
from uhn_runtime.train.run_dir import RunDir
from uhn_runtime.train.run_tables import seen_positions
from uhn_runtime.train.samplers import Work
from uhn_runtime.train.stop_signals import StopSignals
from uhn_runtime.train.trainer import Trainer
from uhn_spec.plan import Plan

from .memory import sync


class NaiveSource(UHNSource):
    """The UHN weight source with the naive one-batch generator (``naive_generate``) in place
    of the fast one: the same parameters, initialisation and standardisation, so the naive
    baseline trains through the very step the fast generator does."""

    def __init__(self, plan: Plan, target: DeviceTarget, seed: int):
        super().__init__(plan, target, seed)
        self.rows: dict[str, torch.Tensor] = {}  # each target's explicit index rows, built once

    def generate(self, target: DeviceTarget) -> torch.Tensor:
        name = target.plan.name
        if name not in self.rows:
            self.rows[name] = target.index_rows()
        return naive_generate(self.generator, self.rows[name], target.structure_rows)


@dataclass
class BenchTrainer:
    """A trainer and the synthetic batch of each target it may draw (by name)."""

    trainer: Trainer
    batches: dict[str, Batch]

    def batches_at(self, step: int) -> list[Batch]:
        """The batches of the targets the sampler draws for ``step``, in its order."""
        targets = self.trainer.plan.targets
        return [self.batches[targets[p].name] for p in self.trainer.sampler.positions(step)]

    def step(self, step: int) -> list[Work]:
        """One ``Trainer.train_step``; returns what it trained, after the device finished."""
        batches = self.batches_at(step)
        _, work = self.trainer.train_step(step, 0, batches)
        sync(self.trainer.sampler.targets.device)
        return work

    @property
    def strategy(self) -> str:
        """The step strategy's name: plain, exact, ddp or pcgrad."""
        return self.trainer.strategy.name


@contextmanager
def bench_trainer(
    plan: Plan, batch: int, device: torch.device, precision: Precision, micro_shards: int = 0, naive: bool = False
) -> Iterator[BenchTrainer]:
    """A UHN trainer of ``plan`` as `uhn train` makes it, with ``micro_shards`` (0: the default
    step) and, ``naive``, the naive generator as its weight source; synthetic batches of
    ``batch`` examples (a graph task: nodes) of every seen target's task."""
    seen = [plan.targets[i] for i in seen_positions(plan)]
    by_task: dict[str, TaskData] = {}  # a family's members share one task: one stand-in
    data: dict[str, TaskData] = {}
    for target in seen:
        task = target.spec.task
        data[target.name] = by_task.setdefault(task.model_dump_json(), synthetic_stand_in(task, batch))
    batches = {name: next(iter(d.train_batches(batch, seed=0))).to(device) for name, d in data.items()}
    dist = DistContext()
    sampler = new_sampler(plan, data if plan.mode == "multitask" else data[seen[0].name], device, dist)
    source = None
    if naive:
        first = sampler.targets[sampler.seen[0]]
        torch.manual_seed(sampler.cfg.seed)  # as make_source: the same initial generator
        source = NaiveSource(plan, first, sampler.cfg.seed).to(device)
    options = TrainOptions(mode="uhn", device=device.type, progress=io.StringIO(), micro_shards=micro_shards)
    with tempfile.TemporaryDirectory(prefix="uhn-bench-run-") as folder:
        run = RunDir(Path(folder), writes=False)
        progress, stop = Progress(io.StringIO()), StopSignals()
        yield BenchTrainer(new_trainer("uhn", run, sampler, precision, options, progress, stop, dist, source), batches)


def alone(plan: Plan, name: str) -> Plan:
    """Target ``name`` of a multi-target plan as a single-model plan with the same generator and
    normalisation ranges: its own run's step (a family member's, a multi-task member's, or the
    leaf of a recursive plan generated by H0 directly)."""
    target = replace(plan.target(name), split="seen")
    return replace(plan, targets=[target], mode="single", evaluated_seen=None, task_sampling=None)


def with_target_segments(plan: Plan, segments: int | None) -> Plan:
    """``plan`` with every target's train.target_segments set to ``segments`` (None: as it is)."""
    if segments is None:
        return plan
    targets = []
    for target in plan.targets:
        train = target.spec.train.model_copy(update={"target_segments": segments})
        targets.append(replace(target, spec=target.spec.model_copy(update={"train": train})))
    return replace(plan, targets=targets)
