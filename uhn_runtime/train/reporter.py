"""What a phase writes while it trains: metrics.jsonl records (and TensorBoard's copy), the
progress lines (about ``SHOWN_LINES`` a phase; the file keeps every interval) and each log
interval's mean step time."""

from __future__ import annotations

import statistics
from typing import Any

from .progress import Progress
from .run_dir import RunDir
from .tensorboard_log import TensorBoardLog

# Terminal lines per phase, at most about this many (metrics.jsonl keeps every interval).
SHOWN_LINES = 100
# The fields of metrics.jsonl records that measure time: the only ones in which a resumed
# (or repeated) run's records differ from an uninterrupted run's.
TIMING_FIELDS = ("seconds", "step_seconds", "step_seconds_by_task")


class Reporter:
    def __init__(self, run: RunDir, progress: Progress, show_every: int, times_by_target: bool):
        self.run, self.progress = run, progress
        self.show_every = show_every  # a progress line every this many log intervals
        self.times_by_target = times_by_target
        self.tensorboard: TensorBoardLog | None = None
        # (target label, seconds) of the interval's steps timed in this process: the batch and
        # the step, not evaluations or checkpoints (metrics.jsonl ``step_seconds``).
        self.step_times: list[tuple[str, float]] = []

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def line(self, text: str) -> None:
        self.progress.line(text)

    def shows(self, interval_index: int) -> bool:
        """Whether the ``interval_index``-th interval gets a progress line (besides evaluations and the end)."""
        return interval_index % self.show_every == 0

    def time_step(self, label: str, seconds: float) -> None:
        self.step_times.append((label, seconds))

    def step_time_fields(self) -> dict[str, Any]:
        """The interval's mean seconds per step (a multi-task run: also per task, so its step
        time compares with the members' own runs); starts the next interval's timing."""
        times, self.step_times = self.step_times, []
        if not times:  # resumed at the interval's end
            return {}
        fields: dict[str, Any] = {"step_seconds": round(statistics.fmean(t for _, t in times), 6)}
        if self.times_by_target:
            by_target: dict[str, list[float]] = {}
            for name, seconds in times:
                by_target.setdefault(name, []).append(seconds)
            fields["step_seconds_by_task"] = {name: round(statistics.fmean(ts), 6) for name, ts in by_target.items()}
        return fields

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
