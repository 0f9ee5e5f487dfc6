"""Progress on standard error (standard output stays clean for `--json`), with the time spent and
an estimate of what is left.

On a terminal a tqdm bar is redrawn in place, one per phase (idle, warm-up, measuring). On a pipe
or in a log, where a redrawn line becomes garbage, one line is written when a phase begins and then
one every `interval_s` seconds (5 by default), so a log shows that the run is alive and how far it
is. The estimate of what is left is the phase's elapsed time x (1 - fraction) / fraction, which is
only as good as the fraction: the meter's is the windows done over the windows its precision rule
still needs (`energyprune.measure.plan`), not a count that fills at the minimum and then waits.

Why tqdm: it does the terminal part well (width, redraw rate, elapsed / remaining formatting), it
has no dependencies of its own (~80 kB), and most PyTorch environments already have it
(huggingface_hub needs it). rich would bring pygments and markdown-it-py for a single bar. Neither
writes sensible periodic lines to a log, so that part is ours.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: Seconds between two lines when standard error is not a terminal.
LINE_INTERVAL_S = 5.0
#: Seconds between two redraws on a terminal.
REDRAW_INTERVAL_S = 0.1


def format_duration(seconds: float | None) -> str:
    """0:07, 1:05, 1:02:03; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def time_left_s(elapsed_s: float, fraction: float) -> float | None:
    """What is left of a phase that took `elapsed_s` to get `fraction` of the way; None at 0."""
    if fraction <= 0 or not math.isfinite(fraction):
        return None
    return elapsed_s * (1.0 - min(fraction, 1.0)) / fraction


class ProgressBar:
    """The meter's `progress(phase, fraction, message)` callback, drawn on `stream`.

    `clock` (seconds, monotonic) and `tty` are injectable so that tests do not depend on the wall
    clock or on where they run."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, *, interval_s: float = LINE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)()) if tty is None else tty
        self._width = width
        self._interval_s = interval_s
        self._clock = clock
        self._phase = ""
        self._phase_t0 = 0.0
        self._last_draw = -math.inf
        self._bar: Any = None

    def __call__(self, phase: str, fraction: float, message: str) -> None:
        now = self._clock()
        new_phase = phase != self._phase
        if new_phase:
            self._close_bar()
            self._phase, self._phase_t0 = phase, now
        fraction = max(0.0, min(1.0, fraction))
        if self._tty:
            if new_phase or now - self._last_draw >= REDRAW_INTERVAL_S or fraction >= 1.0:
                self._draw(fraction, message)
                self._last_draw = now
        elif new_phase or now - self._last_draw >= self._interval_s:
            elapsed = now - self._phase_t0
            left = time_left_s(elapsed, fraction)
            self._stream.write(f"{phase} {fraction * 100:3.0f}% | {message} | {format_duration(elapsed)} elapsed, "
                               + ("time left unknown yet" if left is None else f"~{format_duration(left)} left")
                               + "\n")
            self._stream.flush()
            self._last_draw = now

    def _draw(self, fraction: float, message: str) -> None:
        if self._bar is None:
            from tqdm import tqdm

            # smoothing=0: the rate is the phase's average, so "remaining" is elapsed x (1 - f) / f.
            self._bar = tqdm(total=1.0, file=self._stream, leave=False, dynamic_ncols=True, smoothing=0,
                             mininterval=0, desc=f"{self._phase:>7}",
                             bar_format="{desc} {percentage:3.0f}%|{bar:" + str(self._width) + "}| "
                                        "[{elapsed} elapsed, ~{remaining} left]{postfix}")
        self._bar.n = fraction
        self._bar.set_postfix_str(message[:60], refresh=False)
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()
        self._phase = ""
