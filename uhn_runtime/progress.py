"""Training progress on the terminal without a progress-bar dependency.

On a terminal the status line is rewritten in place (at most a few times a second). In CI
logs and pipes the full lines are printed (one per epoch or log interval) plus the status
line at most every half minute, so logs stay short but a long epoch still shows life.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REFRESH_SECONDS = 0.25
LOG_STATUS_SECONDS = 30.0


class Progress:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_refresh = time.monotonic()
        self._showing_status = False

    def status(self, text: str) -> None:
        """A transient line: rewritten in place on a terminal, else printed now and then."""
        now = time.monotonic()
        if not self.live:
            if now - self._last_refresh >= LOG_STATUS_SECONDS:
                self._last_refresh = now
                self.stream.write(text + "\n")
                self.stream.flush()
            return
        if now - self._last_refresh < REFRESH_SECONDS:
            return
        self._last_refresh = now
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self._showing_status = True

    def line(self, text: str) -> None:
        """A line that stays."""
        if self._showing_status:
            self.stream.write("\r\033[K")
            self._showing_status = False
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_refresh = time.monotonic()


def bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + "]"
