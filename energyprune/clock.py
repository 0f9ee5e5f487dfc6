"""Time, injectable: the wall clock for real runs, a simulated one for tests and trace replays.

A clock is any callable returning seconds (monotonic). The meter also needs to wait (`sleep`) and
to run something every few milliseconds in the background (the power sampler). `WallClock` does
that with `time.perf_counter`, `time.sleep` and a daemon thread. `SimulatedClock` moves only when
told to: `sleep`/`advance` move it forward and, on the way, run every periodic callback at the
exact instants it is due, in the calling thread. So a test (or a replay of a recorded trace) that
drives its fake hardware from a simulated clock gives the same figures on an idle laptop and on a
CI machine loaded to 100%: nothing depends on how fast the code runs.

A plain callable such as `time.perf_counter` is accepted wherever a clock is, and then
`sleep` and `start_periodic` fall back to the wall-clock behaviour.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

ClockFn = Callable[[], float]


class Periodic(Protocol):
    """A running periodic callback; `stop()` ends it (idempotent)."""

    def stop(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    def __call__(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def start_periodic(self, interval_s: float, callback: Callable[[], None], name: str = "") -> Periodic: ...


class _ThreadPeriodic:
    """Calls `callback` every `interval_s` on a daemon thread until stopped. A callback that
    raises stops the thread; the caller is expected to catch and keep its own errors."""

    def __init__(self, clock: ClockFn, interval_s: float, callback: Callable[[], None], name: str) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name or "energyprune-periodic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = self._clock()
        while not self._stop.is_set():
            try:
                self._callback()
            except BaseException:  # noqa: BLE001 - the callback keeps its own error; stop quietly
                return
            next_t += self._interval_s
            delay = next_t - self._clock()
            if delay < 0:  # fell behind (a slow read): do not try to catch up in a burst
                next_t = self._clock()
                delay = 0.0
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


class WallClock:
    """`time.perf_counter`, `time.sleep` and a thread for periodic work."""

    def __call__(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def start_periodic(self, interval_s: float, callback: Callable[[], None], name: str = "") -> Periodic:
        return _ThreadPeriodic(self, interval_s, callback, name)


class _SimulatedPeriodic:
    def __init__(self, clock: SimulatedClock, key: int) -> None:
        self._clock = clock
        self._key = key

    def stop(self) -> None:
        self._clock._cancel(self._key)


class SimulatedClock:
    """A clock that moves only when `sleep`/`advance` is called, running due periodic callbacks
    on the way, each at its own instant. Not thread-safe by design: one thread drives it."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._t = float(start_s)
        self._due: list[tuple[float, int]] = []  # (instant, key) heap
        self._periodic: dict[int, tuple[float, Callable[[], None]]] = {}
        self._keys = itertools.count()
        self._running = False

    def __call__(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        end = self._t + seconds
        if self._running:  # a callback that sleeps: move time, run nothing re-entrantly
            self._t = end
            return
        self._running = True
        try:
            while self._due and self._due[0][0] <= end:
                instant, key = heapq.heappop(self._due)
                if key not in self._periodic:
                    continue  # stopped
                interval_s, callback = self._periodic[key]
                self._t = max(self._t, instant)
                heapq.heappush(self._due, (instant + interval_s, key))
                callback()
            self._t = max(self._t, end)
        finally:
            self._running = False

    sleep = advance

    def start_periodic(self, interval_s: float, callback: Callable[[], None], name: str = "") -> Periodic:
        if not interval_s > 0:
            raise ValueError("a periodic callback needs a positive interval")
        key = next(self._keys)
        self._periodic[key] = (interval_s, callback)
        callback()  # at once, as a thread would on start
        heapq.heappush(self._due, (self._t + interval_s, key))
        return _SimulatedPeriodic(self, key)

    def _cancel(self, key: int) -> None:
        self._periodic.pop(key, None)


def sleep_on(clock: ClockFn, seconds: float) -> None:
    """Wait `seconds` on `clock`: its own `sleep` if it has one, else the wall clock's."""
    sleeper = getattr(clock, "sleep", None)
    if callable(sleeper):
        sleeper(seconds)
    elif seconds > 0:
        time.sleep(seconds)


def start_periodic(clock: ClockFn, interval_s: float, callback: Callable[[], None], name: str = "") -> Periodic:
    """Run `callback` every `interval_s` of `clock`: the clock's own scheduler if it has one
    (a simulated clock runs it as time is advanced), else a daemon thread on the wall clock."""
    starter = getattr(clock, "start_periodic", None)
    if callable(starter):
        return starter(interval_s, callback, name)
    return _ThreadPeriodic(clock, interval_s, callback, name)
