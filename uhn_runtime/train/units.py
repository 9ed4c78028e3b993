"""A phase's budget in units (epochs, or steps with ``train.steps``), how often it logs, and
how a step's place in it reads in messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from uhn_spec.spec import TrainSpec


@dataclass(frozen=True)
class Units:
    by_epoch: bool
    total: int  # units of the task phase
    steps_per_unit: int  # optimiser steps: an epoch's batches, or 1
    interval: int  # units per log record (and checkpoint chance)

    @classmethod
    def of(cls, cfg: TrainSpec, batches_per_epoch: int, pass_length: Callable[[int], int]) -> Units:
        """Log every epoch; in step units every ``eval_every`` steps, else every
        ``pass_length(total)`` (the sampler's: a pass over the data)."""
        by_epoch = cfg.epochs is not None
        total = int(cfg.epochs if by_epoch else cfg.steps)  # type: ignore[arg-type]  # the spec gives exactly one
        interval = 1 if by_epoch else (cfg.eval_every or pass_length(total))
        return cls(by_epoch, total, batches_per_epoch if by_epoch else 1, interval)

    @property
    def name(self) -> str:
        return "epoch" if self.by_epoch else "step"

    @property
    def total_steps(self) -> int:
        return self.total * self.steps_per_unit

    def counter(self, step: int, epoch: int) -> int:
        """The unit counter the schedule reads at ``step``."""
        return epoch if self.by_epoch else step

    def where(self, step: int, epoch: int) -> str:
        """Step ``step`` (0-based) for messages: "step 5 (epoch 2, batch 2/3)" or "step 5/10"."""
        if self.by_epoch:
            return f"step {step + 1} (epoch {epoch + 1}, batch {step % self.steps_per_unit + 1}/{self.steps_per_unit})"
        return f"step {step + 1}/{self.total}"

    def position(self, steps_done: int, units_done: int) -> str:
        """Where the phase stands, e.g. "epoch 2/9 and 3/7 steps of epoch 3"."""
        within = steps_done - units_done * self.steps_per_unit
        where = f"{self.name} {units_done}/{self.total}"
        return f"{where} and {within}/{self.steps_per_unit} steps of epoch {units_done + 1}" if within else where

    def status(self, epoch: int, interval_losses: list[float]) -> str:
        """What the bar shows beside the step count: the epoch and the interval's mean loss."""
        where = f"epoch {epoch + 1}/{self.total}  " if self.by_epoch else ""
        return f"{where}loss {sum(interval_losses) / max(len(interval_losses), 1):.4f}"
