"""What every mode's sampler says: which seen targets a step trains, on which batches, and
how the mode reports its results (a value, a family's groups, or each task's own metric).

A mode is one subclass (single.py, family.py, multitask.py); the training loop asks it and
never branches on the mode itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from uhn_spec.errors import UHNError
from uhn_spec.plan import Plan

from ...data import Batch, TaskData
from ...model.target import DeviceTarget, TargetCache
from ..distributed import DistContext
from ..draws import architecture_draw, epoch_seed
from ..progress import Progress
from ..run_dir import RunDir
from ..run_tables import evaluated_targets, seen_positions

Log = Callable[[dict[str, Any]], None]
# The test metric of one target; the trainer evaluates (and under torchrun shares) it.
Evaluate = Callable[[DeviceTarget], float]


@dataclass(frozen=True)
class Work:
    """One drawn target of a step and the batch it trains on."""

    position: int  # in the plan
    target: DeviceTarget
    batch: Batch


class Sampler:
    """Draws of a plan whose seen targets share one task: every step takes the next batch of
    one data stream (epochs in the order ``epoch_seed`` gives) for each drawn target."""

    named = True  # several targets: records and messages name the ones meant

    @classmethod
    def check(cls, plan: Plan, mode: str) -> None:
        """Refuse, with one line, a plan this mode cannot train in ``mode`` ("uhn", "direct", "both")."""

    @staticmethod
    def refuse_direct_baseline(mode: str, what: str, source: str) -> None:
        """Several targets train one UHN; the direct baseline is one model's own weights."""
        if mode != "uhn":
            raise UHNError(
                f"--mode {mode}: {what}, and the direct baseline is one model's own weights; train a member "
                f"alone with `uhn train {source} --model NAME --mode both`"
            )

    def __init__(self, plan: Plan, data: TaskData, targets: TargetCache, dist: DistContext):
        self.plan, self.data, self.targets, self.dist = plan, data, targets, dist
        self.seen = seen_positions(plan)
        self.evaluated = evaluated_targets(plan)
        self.cfg = plan.targets[self.seen[0]].spec.train
        self.models_per_step = min(self.cfg.models_per_step, len(self.seen))
        self.batches_per_epoch = data.num_train_batches(self.cfg.batch_size)

    # ------------------------------------------------------------------ draws and batches
    def positions(self, step: int, stream: str = "train") -> list[int]:
        """Plan positions of the targets step ``step`` of ``stream`` ("train" or "init") trains."""
        draw = architecture_draw(
            self.cfg.seed, step, len(self.seen), self.models_per_step, stream, None, self.dist.rank
        )
        return [self.seen[i] for i in draw]

    def batches(self, start_step: int) -> Iterator[tuple[int, int, list[Batch]]]:
        """(step, epoch, batches) from ``start_step`` on: the drawn targets share one batch."""
        epoch, skip = divmod(start_step, self.batches_per_epoch)
        step = start_step
        while True:
            batches = self.data.train_batches(self.cfg.batch_size, epoch_seed(self.cfg.seed, epoch))
            for batch in itertools.islice(batches, skip, None):
                yield step, epoch, [batch]
                step += 1
            epoch, skip = epoch + 1, 0

    def work(self, step: int, batches: list[Batch]) -> list[Work]:
        positions = self.positions(step)
        if len(batches) == 1:
            batches = batches * len(positions)
        return [Work(p, self.targets[p], b) for p, b in zip(positions, batches, strict=True)]

    def label(self, step: int) -> str:
        """The target(s) step ``step`` trains, for its time: "cora_gcn", or "mlp_0+mlp_3"."""
        return "+".join(self.plan.targets[i].name for i in sorted(self.positions(step)))

    def data_for(self, target: DeviceTarget) -> TaskData:
        return self.data

    def metric_of(self, name: str) -> str:
        return self.data.metric

    def log_interval(self, total_units: int) -> int:
        """Steps between log records in step units without ``eval_every``: one pass."""
        return self.batches_per_epoch

    def observe(self, work: Work, outputs: torch.Tensor) -> None:
        """A training step's outputs (adaptive task sampling reads them)."""

    def after_step(self, kind: str, steps_done: int, total_units: int, log: Log, progress: Progress) -> None:
        """Anything the mode does between steps (multi-task: re-weight its draw)."""

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass

    # ------------------------------------------------------------------ reporting
    @classmethod
    def plan_description(cls, plan: Plan) -> str:
        """What the run trains, for its first line."""
        raise NotImplementedError

    @classmethod
    def plan_label(cls, plan: Plan) -> str:
        """What the run trains, in a word: summary.json's ``spec``, a default run folder's name."""
        raise NotImplementedError

    def final(self, evaluate: Evaluate, log_eval: Log) -> tuple[float, dict[str, float] | None]:
        """The phase's end result: (value, each evaluated model's value or None), logged."""
        raise NotImplementedError

    def interval_evaluation(self, evaluate: Evaluate, record: dict[str, Any]) -> str:
        """Evaluate mid-run into ``record``; returns what the progress line shows."""
        raise NotImplementedError

    def evaluate_models(self, evaluate: Evaluate) -> dict[str, float]:
        return {self.plan.targets[i].name: evaluate(self.targets[i]) for i in self.evaluated}

    def phase_record(self, total_units: int) -> dict[str, Any]:
        """What the mode adds to a phase's result in summary.json."""
        return {}

    def summary(
        self, models: dict[str, float] | None, phase: dict[str, Any], progress: Progress, run: RunDir
    ) -> dict[str, Any]:
        """The mode's fields of summary.json from the UHN phase's ``models`` and ``phase_record``;
        it prints (and writes) the mode's table of results."""
        raise NotImplementedError

    def times_by_target(self) -> bool:
        """Whether a log record also times each target's steps apart."""
        return False
