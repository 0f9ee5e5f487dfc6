"""A minimal backend with a coarse, ticking counter and an instantaneous sensor, for meter tests.

Power is `idle_w` all the time, plus an impulse of `call_energy_j` each time the workload calls
`fake.call()`. Time is the injected `clock` (a `SimulatedClock` in the meter tests, so that no
result depends on how fast the machine running the tests is). The counter, like NVML's, only shows the integral as of its last tick; the sensor
answers the continuous (idle) part, as a real sensor cannot see sub-sample bursts either.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from energyprune.backends.base import Availability
from energyprune.backends.base import DomainInfo, EnergyReading, Provenance


class ScriptedBackend:
    name = "scripted"
    provenance = Provenance.MEASURED

    def __init__(self, idle_w: float = 100.0, call_energy_j: float = 0.5, tick_s: float = 0.02,
                 has_sensor: bool = True, domain: str = "fake:0",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.idle_w = idle_w
        self.call_energy_j = call_energy_j
        self.tick_s = tick_s
        self.has_sensor = has_sensor
        self.domain = domain
        self.clock = clock
        self._lock = threading.Lock()
        self._impulse_t: list[float] = []
        self._t_open = 0.0
        self.reads = 0

    # -- driving ----------------------------------------------------------------------------
    def call(self) -> None:
        with self._lock:
            self._impulse_t.append(self.clock())

    def true_energy_j(self, t0: float, t1: float) -> float:
        with self._lock:
            n = bisect.bisect_right(self._impulse_t, t1) - bisect.bisect_right(self._impulse_t, t0)
        return self.idle_w * (t1 - t0) + n * self.call_energy_j

    # -- Backend protocol -------------------------------------------------------------------
    def probe(self) -> Availability:
        return Availability(True, "scripted test backend")

    def open(self) -> None:
        self._t_open = self.clock()

    def domains(self) -> Sequence[DomainInfo]:
        return [DomainInfo(self.domain, self.name, Provenance.MEASURED, "energy-counter",
                           "scripted fake", has_counter=True, resolution_s=self.tick_s)]

    def read(self) -> EnergyReading:
        self.reads += 1
        now = self.clock()
        last_tick = self._t_open + ((now - self._t_open) // self.tick_s) * self.tick_s
        return EnergyReading(now, {self.domain: self.true_energy_j(self._t_open, last_tick)})

    def close(self) -> None:
        pass


class SensingScriptedBackend(ScriptedBackend):
    def power_w(self) -> Mapping[str, float]:
        return {self.domain: self.idle_w}
