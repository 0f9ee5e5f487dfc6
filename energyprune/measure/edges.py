"""Window edges: reading every counter at the start and end of a window, and correcting for ticks.

A coarse counter (NVML's energy counter changes every ~100 ms) read at an arbitrary instant tells
the energy up to its *last tick*, not up to now. So at each edge the meter polls the coarse
counters until each one ticks, notes when it ticked, and subtracts the energy drawn between the tick
and the window edge (from the instantaneous-power samples, or the idle power where there are none).
What is left uncertain — when exactly within one read the tick fell — is reported as the edge
uncertainty. Fine-grained counters (RAPL, the estimate) are read once, right at the edge.

A power field is used for those corrections only where it changes faster than the counter
(`SensorPeriods.power_for_edges`); on an H200 field 186 is held for ~100 ms like the counter, and
the idle power (the device is synchronised and idle at both corrections) is the better figure.
The end edge waits `margin_s` past the window before polling for the tick, because a counter books
energy a few milliseconds late (~10 ms on the H200).

Besides the point figure, every window gets honest **bounds**: the energy outside the window but
inside the counter difference is somewhere between the idle power (less 10%) and the most the
device can draw (`DomainInfo.max_power_w`) over those gaps, and the window's own energy cannot be
below idle or above that maximum either. For a span shorter than a few counter periods the bounds,
not the point figure, are what the counter can vouch for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from energyprune.backends.base import Backend
from energyprune.clock import sleep_on
from energyprune.errors import BackendError, EnergyPruneError
from energyprune.backends.base import DomainInfo
from energyprune.measure.sampler import PowerSampler

#: A counter whose value changes less often than this is polled for its tick at window edges.
COARSE_RESOLUTION_S = 0.01
#: Error assumed for an edge correction made with the idle power instead of power samples.
IDLE_CORRECTION_RELATIVE_ERROR = 0.25
#: The lowest power a device is taken to draw outside a window: its idle power less this share
#: (idle drifts by a few percent over minutes: 122-124 W on the H200).
IDLE_FLOOR = 0.9


@dataclass(frozen=True)
class CounterEdge:
    """Counter values at an edge; `tick_t_s[d]` is the instant domain d's value refers to."""

    t_s: float  # the window edge itself (start or end of the timed loop)
    counters_j: Mapping[str, float]
    tick_t_s: Mapping[str, float]
    tick_uncertainty_s: Mapping[str, float]
    missed_ticks: tuple[str, ...] = ()
    #: Power over the counter period next to this edge's tick (after it for an end edge, before it
    #: for a start edge, where asked to probe): the best figure for the gap between the edge and
    #: the tick when the device may be busy around a span.
    next_power_w: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EdgeEnergy:
    energy_j: dict[str, float]
    uncertainty_j: dict[str, float]
    raw_j: dict[str, float]  # the counters' own difference, before edge corrections
    bounds_j: dict[str, tuple[float, float]] = field(default_factory=dict)  # what the energy surely lies in


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
        #: Learned sensor periods (`MeterSession.idle_power_w` sets them); declared ones otherwise.
        self.periods: dict[str, SensorPeriods] = {}

    def counter_period_s(self, name: str) -> float:
        known = self.periods.get(name)
        return known.counter_s if known is not None else self._domains[name].resolution_s

    def power_for_edges(self, name: str) -> bool:
        """The sampler corrects an edge only where its power field was seen to change faster than
        the counter. Unlearned (no idle phase long enough), it is not trusted: a field the vendor
        calls instantaneous was held for 100 ms on an H200."""
        known = self.periods.get(name)
        return self._sampler.has(name) and known is not None and known.power_for_edges

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

    def read_counters(self, names: list[str]) -> dict[str, float]:
        """The current values of these counter domains (one read of each backend holding them)."""
        out: dict[str, float] = {}
        for backend in self._backends:
            mine = [n for n in names if self._backend_of.get(n) is backend]
            if mine:
                _, _, energy = self._read(backend)
                out.update({n: energy[n] for n in mine if n in energy})
        return out

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

    def start_edge(self, probe_previous: bool = False) -> CounterEdge:
        """Call with the device synchronised; the timed loop must start right after. With
        `probe_previous`, two ticks are awaited and the power over the period between them
        recorded (`next_power_w`, the figure for the short gap before the span when the code
        around it may keep the device busy)."""
        before_v: dict[str, float] = {}
        before_t: dict[str, float] = {}
        if probe_previous and self._coarse:
            before_v, before_t, _, _ = self._settle(set(self._coarse))
        coarse_v, coarse_t, coarse_u, missed = self._settle(set(self._coarse))
        fine_v, fine_t, fine_u = self._fine()
        t_start = self._clock()
        around: dict[str, float] = {}
        for name, value in before_v.items():
            span = coarse_t.get(name, 0.0) - before_t[name]
            if name in coarse_v and name not in missed and span > 0:
                around[name] = (coarse_v[name] - value) / span
        return CounterEdge(t_start, {**coarse_v, **fine_v}, {**coarse_t, **fine_t},
                           {**coarse_u, **fine_u}, tuple(missed), around)

    def end_edge(self, margin_s: float | None = None, probe_next: bool = False) -> CounterEdge:
        """Call right after the timed loop and a device synchronisation. The coarse counters are
        polled for a tick no earlier than `margin_s` after the edge (default 30% of their period,
        at most 30 ms: the counter books energy late). With `probe_next`, one more tick is awaited
        and the power over that next period recorded, for spans whose surroundings may be busy."""
        t_end = self._clock()
        fine_v, fine_t, fine_u = self._fine()
        if self._coarse:
            period = max(self.counter_period_s(d) for d in self._coarse)
            wait = min(0.03, 0.3 * period) if margin_s is None else margin_s
            if wait > 0:
                sleep_on(self._clock, wait)
        coarse_v, coarse_t, coarse_u, missed = self._settle(set(self._coarse))
        next_power: dict[str, float] = {}
        if probe_next and self._coarse:
            after_v, after_t, _, after_missed = self._settle(set(self._coarse) - set(missed))
            for name in after_v:
                span = after_t[name] - coarse_t[name]
                if name not in after_missed and span > 0:
                    next_power[name] = (after_v[name] - coarse_v[name]) / span
        return CounterEdge(t_end, {**coarse_v, **fine_v}, {**coarse_t, **fine_t},
                           {**coarse_u, **fine_u}, tuple(missed), next_power)

    def window_energy(
        self, start: CounterEdge, end: CounterEdge, fallback_power_w: Mapping[str, float]
    ) -> EdgeEnergy:
        """Energy per domain between `start.t_s` and `end.t_s`, with each edge's uncertainty and
        the bounds it surely lies in (module docstring).

        `fallback_power_w` (normally the idle power: the device is idle and synchronised at both
        corrections) corrects the edges where no fast power field does; where the end edge probed
        the next counter period, that period's power corrects the end gap instead (a span inside
        busy code)."""
        energy: dict[str, float] = {}
        uncertainty: dict[str, float] = {}
        raw_j: dict[str, float] = {}
        bounds: dict[str, tuple[float, float]] = {}
        length_s = max(0.0, end.t_s - start.t_s)
        for name, domain in self._domains.items():
            p_low = IDLE_FLOOR * fallback_power_w.get(name, 0.0)
            p_high = domain.max_power_w if domain.max_power_w is not None else math.inf
            if not domain.has_counter:
                power_t = self._sampler.integrate_j(name, start.t_s, end.t_s)
                # One sampling interval at each edge is not covered exactly.
                p_mean_w = self._sampler.mean_power_w(name, start.t_s, end.t_s)
                energy[name] = power_t
                uncertainty[name] = math.sqrt(2) * self._sampler.interval_s * p_mean_w
                bounds[name] = (max(0.0, power_t - 2 * uncertainty[name]), power_t + 2 * uncertainty[name])
                continue
            raw = end.counters_j[name] - start.counters_j[name]
            raw_j[name] = raw
            before = dict(fallback_power_w)
            if name in start.next_power_w:
                before[name] = start.next_power_w[name]
            head_j, head_u = self._correction(name, start.tick_t_s[name], start.t_s,
                                              start.tick_uncertainty_s[name], before)
            outside = dict(fallback_power_w)
            if name in end.next_power_w:
                outside[name] = end.next_power_w[name]
            tail_j, tail_u = self._correction(name, end.t_s, end.tick_t_s[name],
                                              end.tick_uncertainty_s[name], outside)
            energy[name] = raw - head_j - tail_j
            uncertainty[name] = math.hypot(head_u, tail_u)
            # Bounds: the gaps between the ticks and the edges hold between p_low and p_high watts.
            gaps = abs(start.t_s - start.tick_t_s[name]) + abs(end.tick_t_s[name] - end.t_s)
            slack = start.tick_uncertainty_s[name] + end.tick_uncertainty_s[name]
            low = raw - (p_high * (gaps + slack) if math.isfinite(p_high) else math.inf)
            high = raw - p_low * max(0.0, gaps - slack)
            low = max(low, p_low * length_s, 0.0)
            if math.isfinite(p_high):
                high = min(high, p_high * length_s)
            if high < low:  # float noise at the edges of a quiet counter
                low = high = (low + high) / 2
            bounds[name] = (low, high)
            # The point figure can come out of what is physically possible (a short span, a busy
            # neighbourhood whose power changed): it is then held at the nearest bound.
            energy[name] = min(max(energy[name], low), high)
        return EdgeEnergy(energy, uncertainty, raw_j, bounds)

    def _correction(
        self, name: str, t0: float, t1: float, tick_u_s: float, fallback_power_w: Mapping[str, float]
    ) -> tuple[float, float]:
        """Energy drawn between t0 and t1 (outside the window, inside the counter difference)."""
        span_s = t1 - t0
        if self.power_for_edges(name):
            p_w = self._sampler.mean_power_w(name, min(t0, t1), max(t0, t1))
            energy_j = self._sampler.integrate_j(name, t0, t1) if span_s > 0 else -self._sampler.integrate_j(name, t1, t0)
            return energy_j, tick_u_s * p_w
        p_w = fallback_power_w.get(name, 0.0)
        energy_j = p_w * span_s
        return energy_j, math.hypot(tick_u_s * p_w, IDLE_CORRECTION_RELATIVE_ERROR * abs(energy_j))
