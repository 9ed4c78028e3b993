"""Several tasks, each with its own data, batch size and metric: each step draws
``train.tasks_per_step`` members with the spec's probabilities (or, adaptive, re-weighted
by lag: ``task_sampling.py``) and takes the next batch of each drawn member's own endless
stream. A member's stream position is the number of earlier steps that drew it, recomputed
from the pure draw on resume, so a resumed run sees exactly the batches an uninterrupted
one does. Every member is evaluated with its own metric; summary.json gets ``tasks``."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

from uhn_spec.errors import UHNError
from uhn_spec.metrics import METRICS
from uhn_spec.modes.multitask import TaskSamplingSpec
from uhn_spec.plan import Plan

from ...data import Batch, TaskData
from ...model.target import DeviceTarget, TargetCache
from ..distributed import DistContext
from ..draws import architecture_draw, epoch_seed
from ..progress import Progress
from ..run_dir import RunDir
from ..run_tables import task_table_lines
from ..task_sampling import TaskSampling
from .base import Evaluate, Log, Sampler, Work


class MultitaskSampler(Sampler):
    def __init__(self, plan: Plan, data: dict[str, TaskData], targets: TargetCache, dist: DistContext):
        self.member_data = data
        names = [t.name for t in plan.targets]
        first = next(name for name, t in zip(names, plan.targets) if t.split == "seen")
        super().__init__(plan, data[first], targets, dist)
        self.names = [plan.targets[i].name for i in self.seen]
        self.probabilities = [float(plan.targets[i].probability or 0.0) for i in self.seen]
        self.tasks_per_step = self.cfg.tasks_per_step
        # The task phase's draw probabilities (fixed, or re-weighted by lag).
        self.sampling = TaskSampling(
            self.probabilities,
            TaskSamplingSpec.model_validate(plan.task_sampling or {}),
            [self.metric_of(name) for name in self.names],
            [plan.targets[i].reference for i in self.seen],
        )

    @classmethod
    def check(cls, plan: Plan, mode: str) -> None:
        what = f"a multi-task run trains one UHN for all {len(plan.targets)} tasks"
        cls.refuse_direct_baseline(mode, what, "MULTITASK")
        first = plan.targets[0]
        for target in plan.targets[1:]:  # own task and batch size each; one schedule
            if target.spec.train.model_copy(update={"batch_size": first.spec.train.batch_size}) != first.spec.train:
                raise UHNError(f"target {target.name}: its train section differs from {first.name}'s beyond batch_size")

    # ------------------------------------------------------------------ draws and batches
    def positions(self, step: int, stream: str = "train") -> list[int]:
        """The task phase draws ``tasks_per_step`` members as ``self.sampling`` says; the init
        phase ``models_per_step`` with the spec's probabilities."""
        training = stream == "train"
        probabilities = self.sampling.at(step) if training else self.probabilities
        k = self.tasks_per_step if training else self.models_per_step
        draw = architecture_draw(self.cfg.seed, step, len(self.seen), k, stream, probabilities, self.dist.rank)
        return [self.seen[i] for i in draw]

    def batches(self, start_step: int) -> Iterator[tuple[int, int, list[Batch]]]:
        """(step, 0, batches): one batch per drawn member, the next of its own stream."""
        taken = Counter(i for step in range(start_step) for i in self.positions(step))
        streams: dict[int, Iterator[Batch]] = {}
        step = start_step
        while True:
            positions = self.positions(step)
            for position in positions:
                if position not in streams:
                    target = self.plan.targets[position]
                    data = self.member_data[target.name]
                    streams[position] = endless_batches(
                        data, target.spec.train.batch_size, self.cfg.seed, taken[position]
                    )
            yield step, 0, [next(streams[position]) for position in positions]
            step += 1

    def data_for(self, target: DeviceTarget) -> TaskData:
        return self.member_data[target.plan.name]

    def metric_of(self, name: str) -> str:
        return self.member_data[name].metric

    def log_interval(self, total_units: int) -> int:
        """No one epoch length: without ``eval_every`` a run logs 20 times."""
        return max(1, total_units // 20)

    def observe(self, work: Work, outputs: torch.Tensor) -> None:
        if self.sampling.adaptive:
            figure = METRICS[self.data_for(work.target).metric].batch_figure(*work.batch.select(outputs))
            self.sampling.observe(self.seen.index(work.position), figure)

    def after_step(self, kind: str, steps_done: int, total_units: int, log: Log, progress: Progress) -> None:
        """Re-weight the draw by each member's training error ratio when one is due (before
        any checkpoint of this step: it holds the re-weighting)."""
        if not self.sampling.due(steps_done, total_units):
            return
        update = self.sampling.reweight(steps_done)
        if self.dist.active:  # each rank saw its own steps: all draw with rank 0's re-weighting
            update = self.sampling.updates[-1] = self.dist.broadcast(update)
        record: dict[str, Any] = {"phase": kind, "event": "sampling", "step": steps_done}
        fields = {"train_figure": update.figures, "error_ratio": update.ratios, "probabilities": update.probabilities}
        record.update({key: dict(zip(self.names, values)) for key, values in fields.items()})
        log(record)
        if self.dist.is_main:
            shown = "  ".join(
                f"{n} x{r:.2f} p={p:.3f}" for n, r, p in zip(self.names, update.ratios, update.probabilities)
            )
            progress.line(f"{kind} step {steps_done}: sampling by error ratio  {shown}")

    def state_dict(self) -> dict[str, Any] | None:
        return self.sampling.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.sampling.load_state_dict(state)

    # ------------------------------------------------------------------ reporting
    @classmethod
    def plan_description(cls, plan: Plan) -> str:
        members = ", ".join(f"{t.name} {t.num_params:,} params p={t.probability:.3f}" for t in plan.targets)
        return f"{len(plan.targets)} tasks ({members})"

    @classmethod
    def plan_label(cls, plan: Plan) -> str:
        return "+".join(t.name for t in plan.targets)  # unrelated tasks: no common prefix to speak of

    def final(self, evaluate: Evaluate, log_eval: Log) -> tuple[float, dict[str, float] | None]:
        """Each member with its own metric: no one figure (NaN)."""
        models = self.evaluate_models(evaluate)
        for name, value in models.items():
            log_eval({"model": name, "model_split": self.plan.target(name).split, self.metric_of(name): value})
        return math.nan, models

    def interval_evaluation(self, evaluate: Evaluate, record: dict[str, Any]) -> str:
        models = self.evaluate_models(evaluate)
        record["test"] = models
        return "  test " + "  ".join(f"{name} {self.metric_of(name)} {v:.4f}" for name, v in models.items())

    def times_by_target(self) -> bool:
        return True  # a step's time compares with the members' own runs

    def phase_record(self, total_units: int) -> dict[str, Any]:
        """The settings, each member's reference, how often the task phase drew it, the
        re-weightings; with PCGrad also what its projections saw (``steps.py``)."""
        draws = Counter(self.plan.targets[i].name for step in range(total_units) for i in self.positions(step))
        updates = [
            {
                "step": u.step,
                "error_ratio": dict(zip(self.names, u.ratios)),
                "probabilities": dict(zip(self.names, u.probabilities)),
            }
            for u in self.sampling.updates
        ]
        return {
            "task_sampling": {
                **self.sampling.settings.model_dump(),
                "references": {name: self.plan.target(name).reference for name in self.names},
                "draws": {name: draws[name] for name in self.names},
                "updates": updates,
            }
        }

    def summary(
        self, models: dict[str, float] | None, phase: dict[str, Any], progress: Progress, run: RunDir
    ) -> dict[str, Any]:
        assert models is not None  # a multi-task run trains its UHN only
        tasks = {name: {"metric": self.member_data[name].metric, "uhn": value} for name, value in models.items()}
        for line in task_table_lines(self.plan, tasks):
            progress.line(line)
        fields: dict[str, Any] = {"dataset": None, "metric": None, "uhn": None, "target_params": None, "tasks": tasks}
        fields["task_probabilities"] = {t.name: t.probability for t in self.plan.targets}
        fields["target_params_by_task"] = {t.name: t.num_params for t in self.plan.targets}
        fields["task_sampling"] = phase.get("task_sampling")
        fields.update(step_settings(self.plan))
        if phase.get("pcgrad") is not None:
            fields["pcgrad"] = phase["pcgrad"]
        return fields


def step_settings(plan: Plan) -> dict[str, Any]:
    """How a multi-task step trains, for run.json and summary.json."""
    train = plan.targets[0].spec.train
    return {"tasks_per_step": train.tasks_per_step, "gradient_surgery": train.gradient_surgery}


def endless_batches(data: TaskData, batch_size: int, seed: int, start: int) -> Iterator[Batch]:
    """One task's training batches from position ``start`` on, epoch after epoch, each epoch
    in the order ``epoch_seed(seed, epoch)`` gives (graphs: the whole graph every time)."""
    epoch, skip = divmod(start, data.num_train_batches(batch_size))
    while True:
        yield from itertools.islice(data.train_batches(batch_size, epoch_seed(seed, epoch)), skip, None)
        epoch, skip = epoch + 1, 0
