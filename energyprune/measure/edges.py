"""Window edges: reading every counter at the start and end of a window, and correcting for ticks.

A coarse counter (NVML's energy counter changes every ~100 ms) read at an arbitrary instant tells
the energy up to its *last tick*, not up to now. So at each edge the meter polls the coarse
counters until each one ticks, notes when it ticked, and subtracts the energy drawn between the tick
and the window edge (from the instantaneous-power samples, or the idle power where there are none).
What is left uncertain — when exactly within one read the tick fell — is reported as the edge
uncertainty. Fine-grained counters (RAPL, the estimate) are read once, right at the edge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from energyprune.backends.base import Backend
from energyprune.clock import sleep_on
from energyprune.errors import BackendError, EnergyPruneError
from energyprune.backends.base import DomainInfo
from energyprune.measure.sampler import PowerSampler

#: A counter whose value changes less often than this is polled for its tick at window edges.
COARSE_RESOLUTION_S = 0.01
#: Error assumed for an edge correction made with the idle power instead of power samples.
IDLE_CORRECTION_RELATIVE_ERROR = 0.25


@dataclass(frozen=True)
class CounterEdge:
    """Counter values at an edge; `tick_t_s[d]` is the instant domain d's value refers to."""

    t_s: float  # the window edge itself (start or end of the timed loop)
    counters_j: Mapping[str, float]
    tick_t_s: Mapping[str, float]
    tick_uncertainty_s: Mapping[str, float]
    missed_ticks: tuple[str, ...] = ()


@dataclass(frozen=True)
class EdgeEnergy:
    energy_j: dict[str, float]
    uncertainty_j: dict[str, float]
    raw_j: dict[str, float]  # the counters' own difference, before edge corrections


class EdgeReader:
    """Reads a set of opened backends at window edges, polling coarse counters for their tick."""

    def __init__(
        self,
        backends: Sequence[Backend],
        domains: Sequence[DomainInfo],
        sampler: PowerSampler,
        clock: Callable[[], float] = time.perf_counter,
        poll_pause_s: float = 0.0002,
    ) -> None:
        self._backends = list(backends)
        self._domains = {d.name: d for d in domains}
        self._sampler = sampler
        self._clock = clock
        self._poll_pause_s = poll_pause_s
        self._coarse = {d.name for d in domains if d.has_counter and d.resolution_s >= COARSE_RESOLUTION_S}
        self._backend_of: dict[str, Backend] = {}
        for backend in self._backends:
            for domain in backend.domains():
                self._backend_of[domain.name] = backend
        self._max_resolution_s = max((self._domains[d].resolution_s for d in self._coarse), default=0.0)

    @property
    def counter_domains(self) -> list[str]:
        return [name for name, d in self._domains.items() if d.has_counter]

    def _read(self, backend: Backend) -> tuple[float, float, Mapping[str, float]]:
        t_before = self._clock()
        try:
            reading = backend.read()
        except EnergyPruneError:
            raise
        except Exception as error:  # a vendor library's own exception type: one line, not a traceback
            raise BackendError(f"the {backend.name} backend failed to read its counters: "
                               f"{type(error).__name__}: {error}") from error
        return t_before, self._clock(), reading.energy_j

    def _settle(self, wanted: set[str]) -> tuple[dict[str, float], dict[str, float], dict[str, float], list[str]]:
        """Poll the backends holding `wanted` coarse domains until each of them ticks once.

        Returns counter values, tick instants, tick uncertainties and the domains that never
        ticked before the deadline (three resolutions)."""
        values: dict[str, float] = {}
        tick_t: dict[str, float] = {}
        tick_u: dict[str, float] = {}
        previous_start: dict[str, float] = {}
        base: dict[str, float] = {}
        backends = [b for b in self._backends if any(self._backend_of.get(d) is b for d in wanted)]
        for backend in backends:
            t_before, t_after, energy = self._read(backend)
            for name in wanted:
                if name in energy:
                    base[name] = energy[name]
                    previous_start[name] = t_before
        pending = set(base)
        deadline = self._clock() + 3 * self._max_resolution_s + 0.05
        while pending and self._clock() < deadline:
            for backend in backends:
                names = [n for n in pending if self._backend_of.get(n) is backend]
                if not names:
                    continue
                t_before, t_after, energy = self._read(backend)
                for name in names:
                    if energy[name] != base[name]:
                        # The tick fell after the previous read began and before this one ended.
                        tick_t[name] = (previous_start[name] + t_after) / 2
                        tick_u[name] = (t_after - previous_start[name]) / 2
                        values[name] = energy[name]
                        pending.discard(name)
                    else:
                        previous_start[name] = t_before
            if pending and self._poll_pause_s:
                sleep_on(self._clock, self._poll_pause_s)
        missed = sorted(pending)
        now = self._clock()
        for name in missed:
            # Never ticked (an idle device whose counter is frozen, or a trace with a gap): the value
            # refers to some instant within the last resolution period.
            values[name] = base[name]
            tick_t[name] = now - self._domains[name].resolution_s / 2
            tick_u[name] = self._domains[name].resolution_s / 2
        return values, tick_t, tick_u, missed

    def _fine(self) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        values: dict[str, float] = {}
        tick_t: dict[str, float] = {}
        tick_u: dict[str, float] = {}
        for backend in self._backends:
            names = [d.name for d in backend.domains() if d.has_counter and d.name not in self._coarse]
            if not names:
                continue
            t_before, t_after, energy = self._read(backend)
            for name in names:
                values[name] = energy[name]
                tick_t[name] = (t_before + t_after) / 2
                tick_u[name] = (t_after - t_before) / 2
        return values, tick_t, tick_u

    def start_edge(self) -> CounterEdge:
        """Call with the device idle and synchronised; the timed loop must start right after."""
        coarse_v, coarse_t, coarse_u, missed = self._settle(set(self._coarse))
        fine_v, fine_t, fine_u = self._fine()
        t_start = self._clock()
        return CounterEdge(t_start, {**coarse_v, **fine_v}, {**coarse_t, **fine_t},
                           {**coarse_u, **fine_u}, tuple(missed))

    def end_edge(self) -> CounterEdge:
        """Call right after the timed loop and a device synchronisation."""
        t_end = self._clock()
        fine_v, fine_t, fine_u = self._fine()
        coarse_v, coarse_t, coarse_u, missed = self._settle(set(self._coarse))
        return CounterEdge(t_end, {**coarse_v, **fine_v}, {**coarse_t, **fine_t},
                           {**coarse_u, **fine_u}, tuple(missed))

    def window_energy(
        self, start: CounterEdge, end: CounterEdge, fallback_power_w: Mapping[str, float]
    ) -> EdgeEnergy:
        """Energy per domain between `start.t_s` and `end.t_s`, with each edge's uncertainty.

        `fallback_power_w` is used for edge corrections of domains the sampler does not cover
        (normally the idle power: the device is idle and synchronised at both corrections)."""
        energy: dict[str, float] = {}
        uncertainty: dict[str, float] = {}
        raw_j: dict[str, float] = {}
        for name, domain in self._domains.items():
            if not domain.has_counter:
                power_t = self._sampler.integrate_j(name, start.t_s, end.t_s)
                # One sampling interval at each edge is not covered exactly.
                p_mean_w = self._sampler.mean_power_w(name, start.t_s, end.t_s)
                energy[name] = power_t
                uncertainty[name] = math.sqrt(2) * self._sampler.interval_s * p_mean_w
                continue
            raw = end.counters_j[name] - start.counters_j[name]
            raw_j[name] = raw
            head_j, head_u = self._correction(name, start.tick_t_s[name], start.t_s,
                                              start.tick_uncertainty_s[name], fallback_power_w)
            tail_j, tail_u = self._correction(name, end.t_s, end.tick_t_s[name],
                                              end.tick_uncertainty_s[name], fallback_power_w)
            energy[name] = raw - head_j - tail_j
            uncertainty[name] = math.hypot(head_u, tail_u)
        return EdgeEnergy(energy, uncertainty, raw_j)

    def _correction(
        self, name: str, t0: float, t1: float, tick_u_s: float, fallback_power_w: Mapping[str, float]
    ) -> tuple[float, float]:
        """Energy drawn between t0 and t1 (outside the window, inside the counter difference)."""
        span_s = t1 - t0
        if self._sampler.has(name):
            p_w = self._sampler.mean_power_w(name, min(t0, t1), max(t0, t1))
            energy_j = self._sampler.integrate_j(name, t0, t1) if span_s > 0 else -self._sampler.integrate_j(name, t1, t0)
            return energy_j, tick_u_s * p_w
        p_w = fallback_power_w.get(name, 0.0)
        energy_j = p_w * span_s
        return energy_j, math.hypot(tick_u_s * p_w, IDLE_CORRECTION_RELATIVE_ERROR * abs(energy_j))
