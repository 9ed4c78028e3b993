"""TensorBoard event files mirroring metrics.jsonl (optional: ``pip install 'uhn[tensorboard]'``).

metrics.jsonl stays the record of a run; a phase that is asked for TensorBoard also writes
each of its records as scalars under ``RUN/tensorboard/<phase>`` (task phase: loss, lr, test
metric by epoch or step) and ``RUN/tensorboard/<phase>_init`` (init phase by init step). A
resumed phase opens its writer with ``purge_step`` at the first unit it redoes, so TensorBoard
hides what the killed run logged past its checkpoint, as metrics.jsonl is truncated there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uhn_spec.errors import UHNError

INSTALL_HINT = "pip install 'uhn[tensorboard]'"
# Keys of an eval record that are not the metric.
NOT_METRICS = {"phase", "event", "split", "final", "epoch", "step", "seconds"}


def require_tensorboard() -> None:
    """A one-line error naming the extra when TensorBoard is asked for but not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UHNError(f"train.tensorboard: TensorBoard is not installed; install it with {INSTALL_HINT}") from None


class TensorBoardLog:
    """Event writers of one phase; ``write`` takes the phase's metrics.jsonl records."""

    def __init__(self, folder: Path, kind: str, first_unit: int | None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.folder, self.kind = folder, kind
        # None for a fresh phase; else the first epoch/step this run logs again.
        self.task = SummaryWriter(str(folder / kind), purge_step=first_unit)
        self._init: Any = None

    def write(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == "init":
            if self._init is None:  # the init phase always runs from its start: purge all of it
                self._init = self._writer_class(str(self.folder / f"{self.kind}_init"), purge_step=0)
            for name in ("loss", "lr"):
                self._init.add_scalar(f"init/{name}", record[name], record["step"])
            return
        unit = record.get("epoch", record.get("step"))
        if unit is None:
            return
        for name, value in record.items():
            if name in ("loss", "lr"):
                self.task.add_scalar(f"train/{name}", value, unit)
            elif name.startswith("test_"):  # evaluations during training
                self.task.add_scalar(f"test/{name[len('test_') :]}", value, unit)
            elif name == "test" and isinstance(value, dict):  # a multi-task run: {task: its metric}
                for task, metric in value.items():
                    self.task.add_scalar(f"test/{task}", metric, unit)
        if event == "eval":  # the final evaluation: {"split": "test", <metric>: value}
            for name, value in record.items():
                if name not in NOT_METRICS and isinstance(value, float):
                    self.task.add_scalar(f"{record['split']}/{name}", value, unit)

    def close(self) -> None:
        for writer in (self.task, self._init):
            if writer is not None:
                writer.close()
