"""Ctrl-C and SIGTERM during training: stop cleanly after the current step.

The first SIGINT or SIGTERM only records the request; the training loop checks it after each
finished step, saves a checkpoint of that state and raises ``RunStopped``. A second signal
abandons the run at once (``KeyboardInterrupt``), keeping the last checkpoint on disk. Outside
the main thread (where Python cannot install handlers) signals keep their usual effect.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """A run stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


class StopSignals:
    """While active, SIGINT/SIGTERM set ``requested`` (the first) or abandon the run (the second)."""

    def __init__(self, on_request: Callable[[str], None] | None = None):
        self.on_request = on_request
        self.requested: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(number)
        if self.on_request is not None:
            self.on_request(self.requested.name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
