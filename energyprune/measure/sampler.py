"""A background thread that samples instantaneous power, for sub-tick edges and power traces.

NVML's field 186 answers in ~4 us and follows a load step within ~40 ms, while the energy counter
ticks only every 100 ms (hardware-notes.md); sampling it every 5 ms lets the meter correct window
edges between ticks and integrate power for GPUs that have no counter at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from energyprune.clock import Periodic, start_periodic
from energyprune.measure.results import PowerTrace

logger = logging.getLogger(__name__)

PowerSource = Callable[[], Mapping[str, float]]


class PowerSampler:
    """Samples every source every `interval_s` until stopped: on a daemon thread for the wall
    clock, or at each simulated instant for a `clock.SimulatedClock`."""

    def __init__(
        self,
        sources: Sequence[PowerSource],
        interval_s: float = 0.005,
        clock: Callable[[], float] = time.perf_counter,
        max_samples: int = 2_000_000,
    ) -> None:
        self._sources = list(sources)
        self._interval_s = interval_s
        self._clock = clock
        self._max_samples = max_samples  # ~3 h at 5 ms; beyond, the oldest half is dropped
        self._t_s: list[float] = []
        self._power_w: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._periodic: Periodic | None = None
        self.error: BaseException | None = None

    @property
    def interval_s(self) -> float:
        return self._interval_s

    @property
    def active(self) -> bool:
        return bool(self._sources)

    def start(self) -> None:
        if not self._sources or self._periodic is not None:
            return
        self.sample_once()  # one sample before returning, so a window never starts uncovered
        self._periodic = start_periodic(self._clock, self._interval_s, self._tick, "energyprune-power")

    def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None

    def sample_once(self) -> None:
        values: dict[str, float] = {}
        for source in self._sources:
            values.update(source())
        t_s = self._clock()
        with self._lock:
            if len(self._t_s) >= self._max_samples:
                half = len(self._t_s) // 2
                del self._t_s[:half]
                for series in self._power_w.values():
                    del series[:half]
            self._t_s.append(t_s)
            for name, power_w in values.items():
                series = self._power_w.setdefault(name, [math_nan()] * (len(self._t_s) - 1))
                series.append(power_w)
            for name, series in self._power_w.items():
                if len(series) < len(self._t_s):
                    series.append(math_nan())

    def _tick(self) -> None:
        if self.error is not None:
            return
        try:
            self.sample_once()
        except BaseException as error:  # reported by the meter at the next window edge
            self.error = error  # from then on the callback does nothing
            logger.debug("power sampler stopped: %s", error)

    def has(self, domain: str) -> bool:
        with self._lock:
            return domain in self._power_w

    def integrate_j(self, domain: str, t0_s: float, t1_s: float) -> float:
        """Energy over [t0, t1] by the trapezoid rule on the samples, linearly interpolated at the
        edges. Raises KeyError for a domain that was never sampled."""
        if t1_s <= t0_s:
            return 0.0
        t, p = self._series(domain)
        if t.size == 0:
            raise KeyError(domain)
        inside = (t > t0_s) & (t < t1_s)
        grid = np.concatenate(([t0_s], t[inside], [t1_s]))
        values = np.interp(grid, t, p)
        return float(np.sum((values[1:] + values[:-1]) * np.diff(grid)) / 2)

    def mean_power_w(self, domain: str, t0_s: float, t1_s: float) -> float:
        if t1_s <= t0_s:
            t, p = self._series(domain)
            return float(np.interp(t0_s, t, p))
        return self.integrate_j(domain, t0_s, t1_s) / (t1_s - t0_s)

    def samples(self, domain: str) -> tuple[list[float], list[float]]:
        """Every (time, power) sample of a domain so far, as lists."""
        t, p = self._series(domain)
        return t.tolist(), p.tolist()

    def _series(self, domain: str) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            t = np.asarray(self._t_s, dtype=float)
            p = np.asarray(self._power_w[domain], dtype=float)
        keep = ~np.isnan(p)
        return t[keep], p[keep]

    def trace(self, t0_s: float | None = None, max_points: int = 2000) -> PowerTrace:
        """The samples since `t0_s`, decimated to at most `max_points`, times relative to t0."""
        with self._lock:
            t = np.asarray(self._t_s, dtype=float)
            series = {k: np.asarray(v, dtype=float) for k, v in self._power_w.items()}
        start = t0_s if t0_s is not None else (t[0] if t.size else 0.0)
        keep = t >= start
        step = max(1, int(np.ceil(keep.sum() / max_points)))
        t_sel = t[keep][::step] - start
        return PowerTrace(
            t_s=tuple(round(float(x), 6) for x in t_sel),
            power_w={k: tuple(round(float(x), 3) for x in v[keep][::step]) for k, v in series.items()},
        )


def math_nan() -> float:
    return float("nan")
