"""Mode ``multitask``: one generator for the models of several tasks (the paper's Table 4).

A multi-task file lists its members under ``tasks``: each a spec file (relative to the
multi-task file) or an inline spec, with its sampling probability. Members keep their own
task (data, metric) and batch size; the run's ``generator`` (structure encoder on: it is
what tells the tasks' architectures apart) and its ``train`` section (in steps) replace
theirs. Probabilities must be positive and are normalised; compiling gives one plan with
shared (union) normalisation ranges whose targets carry their normalised probability.

Beyond the paper, ``sampling: {mode: adaptive}`` shifts the probabilities during training
towards the members whose validation metric lags their single-task ``reference`` figure
(``uhn_runtime.train.task_sampling``); the default ``fixed`` is the paper's i.i.d. draw.
``train.tasks_per_step`` (at most the number of members) draws several distinct members a
step, optionally with ``train.gradient_surgery: pcgrad`` (``uhn_runtime.train.gradient_surgery``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..compiler import compile_specs
from ..errors import SpecError
from ..fields import SpecName, StrictModel
from ..loading import apply_overrides, check_unique_names, read_mapping, read_spec_text, validated
from ..metrics import METRICS
from ..plan import Plan
from ..spec import ExperimentSpec, GeneratorSpec, TrainSpec
from .single import member_spec

# The top-level key that makes a YAML file a multi-task spec rather than a single spec.
KEYS = ("tasks",)


class TaskEntry(StrictModel):
    """One member: its spec and how often a step trains it."""

    spec: str | dict[str, Any] = Field(description="the member spec: a path (relative to this file) or an inline spec")
    probability: float = Field(description="sampling weight; all members' are normalised to sum to 1")
    batch_size: int | None = Field(
        None, ge=1, description="the member's batch size (default: its spec's train.batch_size)"
    )
    set: list[str] = Field([], description="overrides of the member spec, as `--set` (e.g. task.stands_in_for=pubmed)")
    reference: float | None = Field(
        None,
        description="the member's single-task figure in its own metric (accuracy or RMSE): "
        "what adaptive sampling compares with",
    )

    @field_validator("probability")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(
                "must be a positive number: every task's sampling weight "
                "(they are normalised to sum to 1); leave out a task that should never be drawn"
            )
        return value


class TaskSamplingSpec(StrictModel):
    """How a step picks its task: the fixed probabilities (the paper), or probabilities that
    move towards the members lagging their single-task reference (``uhn_runtime.train.task_sampling``)."""

    mode: Literal["fixed", "adaptive"] = Field(
        "fixed", description="fixed: the paper's i.i.d. draw; adaptive: re-weighted every `every` steps"
    )
    every: int = Field(
        100, ge=1, description="steps between re-weightings (each reads the members' training figures since the last)"
    )
    floor: float = Field(
        0.5, ge=0.0, lt=1.0, description="share of each member's own probability it always keeps (the rest goes by lag)"
    )
    strength: float = Field(
        1.0, gt=0.0, le=10.0, description="exponent on the error ratio: higher moves faster towards lagging members"
    )


class MultiTaskSpec(StrictModel):
    """A multi-task run: its members, the one generator and the one training schedule."""

    name: SpecName
    description: str = ""
    tasks: list[TaskEntry] = Field(min_length=1)
    generator: GeneratorSpec
    train: TrainSpec
    sampling: TaskSamplingSpec = Field(default_factory=TaskSamplingSpec)

    @model_validator(mode="after")
    def _run_settings(self) -> MultiTaskSpec:
        if not self.generator.structure_encoder:
            raise ValueError(
                "generator.structure_encoder: must be true for a multi-task run (it tells the tasks' "
                "architectures apart)"
            )
        if self.train.steps is None:
            raise ValueError(
                "train.steps: a multi-task run counts steps (tasks have different epochs); give steps, not epochs"
            )
        if self.train.models_per_step != 1:
            raise ValueError("train.models_per_step: a multi-task step trains one task; remove the field")
        if self.train.tasks_per_step > len(self.tasks):
            raise ValueError(
                f"train.tasks_per_step: {self.train.tasks_per_step} exceeds the {len(self.tasks)} tasks (a step draws "
                f"distinct tasks); give at most {len(self.tasks)}"
            )
        if self.sampling.mode == "adaptive" and self.sampling.every >= self.train.steps:
            raise ValueError(
                f"sampling.every: {self.sampling.every} is not below train.steps ({self.train.steps}), so adaptive "
                "sampling would never re-weight; give fewer steps between re-weightings"
            )
        return self


@dataclass(frozen=True)
class MultiTask:
    """A multi-task file's members (with the run's generator and train), in file order, and
    their normalised sampling probabilities."""

    spec: MultiTaskSpec
    members: tuple[ExperimentSpec, ...]
    probabilities: tuple[float, ...]
    source_text: str

    def probability(self, name: str) -> float:
        return self.probabilities[[m.name for m in self.members].index(name)]


def load_multitask(path: str | Path, overrides: Sequence[str] = ()) -> MultiTask:
    path = Path(path)
    return multitask_from_text(read_spec_text(path), path, overrides)


def multitask_from_text(text: str, source: Path | None = None, overrides: Sequence[str] = ()) -> MultiTask:
    """Parse, apply ``--set`` (to the multi-task file: ``train.steps=...``), validate, and
    load every member."""
    where = str(source) if source else None
    data = read_mapping(text, where, "a multi-task spec is a YAML mapping with name, tasks, generator and train")
    spec = validated(MultiTaskSpec, apply_overrides(copy.deepcopy(data), list(overrides)), where)
    members = tuple(run_member(spec, i, source) for i in range(len(spec.tasks)))
    check_unique_names([m.name for m in members], lambda i: f"tasks[{i}]", where, ".spec")
    check_references(spec, members, where)
    total = math.fsum(entry.probability for entry in spec.tasks)
    probabilities = tuple(entry.probability / total for entry in spec.tasks)
    return MultiTask(spec, members, probabilities, text)


def run_member(spec: MultiTaskSpec, index: int, source: Path | None) -> ExperimentSpec:
    """Member ``index`` with the run's generator and train (keeping its own batch size)."""
    entry, where, path = spec.tasks[index], str(source) if source else None, f"tasks[{index}].spec"
    own = member_spec(entry.spec, source, entry.set, path, where)
    train = spec.train.model_copy(update={"batch_size": entry.batch_size or own.train.batch_size})
    run_settings = {"generator": spec.generator.model_dump(), "train": train.model_dump()}
    return member_spec(own.model_dump(), source, (), path, where, run_settings)


def check_references(spec: MultiTaskSpec, members: Sequence[ExperimentSpec], where: str | None) -> None:
    """A reference is a figure in the member's own metric that leaves an error to compare with
    (``Metric.reference_fits``); adaptive sampling needs every one."""
    for i, (entry, member) in enumerate(zip(spec.tasks, members)):
        field = f"tasks[{i}].reference"
        metric = METRICS[member.task.info.metric]
        value = entry.reference
        if value is None:
            if spec.sampling.mode == "adaptive":
                raise SpecError(
                    field,
                    f"sampling.mode adaptive compares every member with its single-task figure; give {member.name}'s "
                    f"test {metric.name} (e.g. from `uhn train MULTITASK --model {member.name}`)",
                    where,
                )
            continue
        if not metric.reference_fits(value):
            raise SpecError(
                field, f"{value} is not {metric.reference_range} ({member.name}'s metric is {metric.name})", where
            )


def compile_multitask(multitask: MultiTask, source_text: str = "") -> Plan:
    """One plan over every member with shared (union) normalisation ranges, as the authors
    normalise over all tasks; each target records its normalised sampling probability (and
    its reference figure), the plan the sampling settings."""
    plan = compile_specs(list(multitask.members), source_text or multitask.source_text, mode="multitask")
    for target, probability, entry in zip(plan.targets, multitask.probabilities, multitask.spec.tasks):
        target.probability = probability
        target.reference = entry.reference
    plan.task_sampling = multitask.spec.sampling.model_dump()
    return plan


__all__ = ["MultiTask", "MultiTaskSpec", "TaskEntry", "TaskSamplingSpec", "compile_multitask", "load_multitask"]
