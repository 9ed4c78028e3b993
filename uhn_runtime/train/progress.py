"""Training progress: live bars with ETA on a terminal, plain lines in logs and pipes.

A run shows two kinds of output. Lines (``Progress.line``) stay: one per epoch or log
interval, printed the same way everywhere. Tasks (``Progress.task``: the init phase, the
task phase, an evaluation) say how far along the current piece of work is. On a terminal a
task is a rich progress bar with the elapsed time and ETA, redrawn in place and gone when the
task ends. In CI logs and pipes a task prints a status line at most every half minute, so logs
stay short but a long epoch still shows life.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

LOG_STATUS_SECONDS = 30.0


class Progress:
    """Where a run reports itself: ``stream`` (default stderr); bars only if it is a terminal."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bars: RichProgress | None = None

    def _rich(self) -> RichProgress:
        if self._bars is None:
            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self._bars = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=True,
            )
            self._bars.start()
        return self._bars

    def task(self, description: str, total: int | None, completed: int = 0) -> ProgressTask:
        """A piece of work of ``total`` units (None: unknown), ``completed`` of them done already."""
        return ProgressTask(self, description, total, completed)

    def line(self, text: str) -> None:
        """A line that stays."""
        if self._bars is not None:
            self._bars.console.print(text, markup=False, highlight=False)
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Stop drawing bars (their refresh thread); lines still work afterwards."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None


class ProgressTask:
    """One bar (on a terminal) or an occasional status line (elsewhere)."""

    def __init__(self, progress: Progress, description: str, total: int | None, completed: int):
        self.progress, self.description, self.total = progress, description, total
        self.completed = self.start_completed = completed
        self.started = self._last_status = time.monotonic()
        self._id: TaskID | None = None
        if progress.live:
            self._id = progress._rich().add_task(description, total=total, completed=completed, info="")

    def update(self, completed: int, info: str = "") -> None:
        """``completed`` units are done now; ``info`` is shown after the bar (e.g. the loss)."""
        self.completed = completed
        if self._id is not None and self.progress._bars is not None:
            self.progress._bars.update(self._id, completed=completed, info=info)
            return
        now = time.monotonic()
        if now - self._last_status >= LOG_STATUS_SECONDS:
            self._last_status = now
            self.progress.line(f"{self.description} {self.status_text()}  {info}".rstrip())

    def status_text(self) -> str:
        """``done/total`` with the ETA from the rate since this task started."""
        if self.total is None:
            return f"{self.completed} done, {format_seconds(time.monotonic() - self.started)}"
        text = f"{self.completed}/{self.total}"
        eta = self.eta_seconds()
        return text if eta is None else f"{text}, eta {format_seconds(eta)}"

    def eta_seconds(self) -> float | None:
        done_here = self.completed - self.start_completed
        if self.total is None or done_here <= 0:
            return None
        rate = done_here / max(time.monotonic() - self.started, 1e-9)
        return (self.total - self.completed) / rate

    def close(self) -> None:
        if self._id is not None and self.progress._bars is not None:
            self.progress._bars.remove_task(self._id)
            self._id = None

    def __enter__(self) -> ProgressTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
