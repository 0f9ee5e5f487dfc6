"""A progress bar on standard error, so standard output stays clean for `--json`."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Redraws one line in place on a terminal; on a pipe, prints a line per phase change."""

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._width = width
        self._phase = ""
        self._last_draw = 0.0

    def __call__(self, phase: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        if self._tty:
            if phase == self._phase and now - self._last_draw < 0.1 and fraction < 1.0:
                return
            filled = int(round(self._width * max(0.0, min(1.0, fraction))))
            bar = "#" * filled + "-" * (self._width - filled)
            self._stream.write(f"\r{phase:>7} [{bar}] {message[:60]:<60}")
            self._stream.flush()
        elif phase != self._phase:
            self._stream.write(f"{phase}: {message}\n")
            self._stream.flush()
        self._phase = phase
        self._last_draw = now

    def close(self) -> None:
        if self._tty and self._phase:
            self._stream.write("\r" + " " * (self._width + 80) + "\r")
            self._stream.flush()
