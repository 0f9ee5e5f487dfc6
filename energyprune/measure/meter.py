"""The meter: turns cumulative counter readings into honest joules per inference.

Method (README, "How a measurement is taken"):
1. open the backends and start the instantaneous-power sampler;
2. measure idle power over a tick-aligned window while the device does nothing;
3. warm the workload up until its latency is stable;
4. run windows of N calls each (N chosen so a window lasts at least `window_s`), synchronising the
   device and reading the counters only at the edges, never inside the loop;
5. repeat windows until the 95% interval is as tight as `precision` asks or `max_duration_s` runs
   out, and say which; record clocks, temperature and throttle reasons with every window.
`compare` interleaves two workloads' windows (A B A ... B A) so that the card's drift cancels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from energyprune import stats
from energyprune.backends.base import (
    Backend,
    DeviceFactsReporter,
    DeviceStateReporter,
    PowerSensor,
    RunNotesReporter,
)
from energyprune.clock import sleep_on
from energyprune.measure.edges import COARSE_RESOLUTION_S, CounterEdge, EdgeEnergy, EdgeReader
from energyprune.measure.periods import SensorPeriods, change_times, update_period_s
from energyprune.measure.plan import measure_plan
from energyprune.errors import BackendError, EnergyPruneError, ImpossibleReading, MeasurementError, UsageError
from energyprune.backends.base import DeviceState, DomainInfo, Provenance
from energyprune.measure.results import Measurement, PowerTrace, Window
from energyprune.measure.sampler import PowerSampler

logger = logging.getLogger(__name__)

Workload = Callable[[], Any]
#: Why a measurement stopped adding windows (`Measurement.stop_reason`), in words.
METER_STOP_REASONS = {
    "precision-reached": "the 95% interval reached the precision asked",
    "max-duration-reached": "--max-duration ran out before the precision asked was reached",
    "repeats-done": "the windows asked for were done (no precision target)",
}

#: Sampling interval when samples only draw the power trace (no energy figure depends on them).
TRACE_INTERVAL_S = 0.1
#: A counter that has not changed for this many of its tick periods (and at least MIN_FROZEN_S)
#: while the device works is frozen: every device draws some power, so its counter moves.
FROZEN_TICKS = 10
MIN_FROZEN_S = 0.05
#: How often the idle phase polls the coarse counters to learn their update period.
POLL_FOR_PERIODS_S = 0.002
#: progress(phase, fraction_done, message): phase is "idle", "warmup" or "measure".
Progress = Callable[[str, float, str], None]

@dataclass(frozen=True)
class MeterConfig:
    window_s: float = 2.0  # minimum length of one window; >= 20 ticks of a 100 ms counter
    repeats: int = 6  # minimum number of windows: the fewest for a 95% interval of the median
    precision: float = 0.02  # stop once the 95% half-width is within this fraction of the figure
    max_duration_s: float = 60.0  # stop adding windows once their total time would exceed this
    idle_s: float = 1.0  # length of the idle-power window before warm-up
    # A GPU's clocks and temperature take a while to reach their working point: warm up for at
    # least this long even once the latency looks stable.
    min_warmup_s: float = 1.0
    max_warmup_s: float = 10.0
    sample_interval_s: float = 0.005
    keep_trace: bool = True

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise UsageError(f"the window duration must be positive (got {self.window_s} s): try --duration 2")
        if self.repeats < 1:
            raise UsageError(f"--repeats must be at least 1 (got {self.repeats})")
        if not self.precision >= 0:
            raise UsageError(f"--precision must be >= 0 (got {self.precision}); 0.02 asks for +-2%")
        if not self.max_duration_s > 0:
            raise UsageError(f"--max-duration must be positive (got {self.max_duration_s} s)")
        for name, value in (("--duration", self.window_s), ("--max-duration", self.max_duration_s),
                            ("--precision", self.precision), ("--idle", self.idle_s),
                            ("the warm-up", self.min_warmup_s), ("the warm-up", self.max_warmup_s)):
            if not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number, got {value}")
        if self.window_s > self.max_duration_s:
            raise UsageError(f"--duration {self.window_s:g} s is longer than --max-duration {self.max_duration_s:g} s: "
                             "one window cannot last longer than the whole measurement; lower --duration or raise "
                             "--max-duration")
        if self.idle_s < 0 or self.min_warmup_s < 0 or self.max_warmup_s < 0:
            raise UsageError("idle and warm-up durations cannot be negative")
        if not self.sample_interval_s > 0:
            raise UsageError("the power sampling interval must be positive")


@dataclass(frozen=True)
class Comparison:
    """B against A, from interleaved windows: each B window's energy per inference over the mean
    of the A windows just before and just after it, so a linear drift of the card cancels."""

    a: Measurement
    b: Measurement
    ratios: tuple[float, ...]
    stop_reason: str

    @property
    def ratio(self) -> float:
        """The median of the bracketed ratios."""
        return stats.median(self.ratios)

    @property
    def ratio_ci95(self) -> stats.Interval:
        """The order-statistic interval of that median (the same estimator as a measurement's)."""
        return stats.median_interval(self.ratios, non_negative=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "energyprune.comparison/1",
            "ratio_b_over_a": self.ratio,
            "ratio_ci95": list(self.ratio_ci95),
            "ratio_ci_level": self.ratio_ci95.level,
            "ratio_cov": stats.cov(self.ratios),
            "ratios": list(self.ratios),
            "stop_reason": self.stop_reason,
            "provenance": (
                Provenance.ESTIMATED.value
                if Provenance.ESTIMATED in (self.a.provenance, self.b.provenance)
                else Provenance.MEASURED.value
            ),
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
        }


def no_sync() -> None:
    """The synchronisation of a CPU workload: there is nothing in flight to wait for."""


#: Agreement among cooperating processes: given this process's value and "max" or "min", the
#: group's value. A meter given one makes every decision that sets how many times the workload is
#: called - when warm-up ends, the calls per window, when to stop - the same on every process, so
#: a workload that communicates inside (tensor parallel: collectives in `forward`) never waits for
#: a call another process does not make. `energyprune.measure.distributed` builds one on all_reduce.
Agree = Callable[[float, str], float]


def no_agreement(value: float, op: str) -> float:
    """One process agrees with itself."""
    return value


@dataclass(frozen=True)
class _Readings:
    """Energy per domain over a span, as `MeterSession.check_readings` reads it."""

    energy_j: Mapping[str, float]
    uncertainty_j: Mapping[str, float]
    raw_j: Mapping[str, float]


@dataclass
class _Run:
    """Mutable bookkeeping of one workload inside a session."""

    label: str
    workload: Workload
    batch_size: int
    n_per_window: int = 1
    warmup_inferences: int = 0
    windows: list[Window] = field(default_factory=list)


class MeterSession:
    """Opened backends, a running sampler and an edge reader: what every window needs.

    Use as a context manager; `Meter` and `EnergyMeter` are built on it."""

    def __init__(
        self,
        backends: Sequence[Backend],
        sync: Callable[[], None] = no_sync,
        sample_interval_s: float = 0.005,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not backends:
            raise UsageError("no backend to measure with")
        self.backends = list(backends)
        self.sync = sync
        self.clock = clock
        self._sample_interval_s = sample_interval_s
        self.domains: list[DomainInfo] = []
        self.sampler: PowerSampler | None = None
        self.edges: EdgeReader | None = None
        self._opened: list[Backend] = []

    def __enter__(self) -> MeterSession:
        try:
            for backend in self.backends:
                try:
                    backend.open()
                except EnergyPruneError:
                    raise
                except Exception as error:  # a vendor library's own exception type
                    raise BackendError(f"the {backend.name} backend failed to open: "
                                       f"{type(error).__name__}: {error}") from error
                self._opened.append(backend)
                self.domains.extend(backend.domains())
            names = [d.name for d in self.domains]
            if len(set(names)) != len(names):
                raise UsageError(f"two backends meter the same domain: {sorted(names)}")
            sensors = [b.power_w for b in self.backends if isinstance(b, PowerSensor)]
            self.sampler = PowerSampler(sensors, self._sampling_interval_s(), clock=self.clock)
            self.sampler.start()
            self.edges = EdgeReader(self.backends, self.domains, self.sampler, clock=self.clock)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _sampling_interval_s(self) -> float:
        """Fast sampling only where the energy depends on it (edges of a coarse counter, domains
        with no counter). Otherwise the samples only draw the power trace, and a thread waking
        every 5 ms would cost a CPU workload on a small machine more than it tells."""
        needs_samples = any(
            not d.has_counter or d.resolution_s >= COARSE_RESOLUTION_S for d in self.domains
        )
        return self._sample_interval_s if needs_samples else max(self._sample_interval_s, TRACE_INTERVAL_S)

    def __exit__(self, *exc_info: object) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        for backend in reversed(self._opened):
            with contextlib.suppress(Exception):
                backend.close()
        self._opened.clear()

    def check_sampler(self) -> None:
        if self.sampler is not None and self.sampler.error is not None:
            error = self.sampler.error
            if isinstance(error, EnergyPruneError):
                raise error
            raise BackendError(f"reading instantaneous power failed: {error}")

    def states(self) -> tuple[DeviceState, ...]:
        states: list[DeviceState] = []
        for backend in self.backends:
            if isinstance(backend, DeviceStateReporter):
                with contextlib.suppress(Exception):
                    states.extend(backend.device_states())
        return tuple(states)

    def notes(self) -> tuple[str, ...]:
        """What the backends say about the run so far (other processes on the CPUs...)."""
        out: list[str] = []
        for backend in self.backends:
            if isinstance(backend, RunNotesReporter):
                with contextlib.suppress(Exception):
                    out.extend(backend.run_notes())
        return tuple(out)

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "host": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        }
        with contextlib.suppress(Exception):
            import torch

            facts["torch"] = torch.__version__
        for backend in self.backends:
            if isinstance(backend, DeviceFactsReporter):
                with contextlib.suppress(Exception):
                    facts[backend.name] = dict(backend.device_facts())
        if self.edges is not None and self.edges.periods:
            facts["sensor_periods"] = {name: p.to_dict() for name, p in self.edges.periods.items()}
        return facts

    def measure_span(
        self, body: Callable[[], int], fallback_power_w: Mapping[str, float]
    ) -> tuple[float, EdgeEnergy, Any]:
        """Run `body` between two synchronised edges; returns (duration, the energy with its
        uncertainty and bounds, whatever body returned). Nothing is read between the edges."""
        assert self.edges is not None
        self.sync()
        start = self.edges.start_edge()
        result = body()
        self.sync()
        end = self.edges.end_edge()
        return end.t_s - start.t_s, self.close_span(start, end, fallback_power_w), result

    def close_span(self, start: CounterEdge, end: CounterEdge, fallback_power_w: Mapping[str, float]) -> EdgeEnergy:
        """The energy between two edges, after the checks that turn impossible readings into errors."""
        assert self.edges is not None
        self.check_sampler()
        energy = self.edges.window_energy(start, end, fallback_power_w)
        missed = set(start.missed_ticks) | set(end.missed_ticks)
        stuck = sorted(name for name in missed if fallback_power_w.get(name, 0.0) > 0)
        if stuck:  # it moved before (idle power > 0): waiting three tick periods saw no tick
            domain = next(d for d in self.domains if d.name == stuck[0])
            raise ImpossibleReading(
                f"{stuck[0]}'s counter did not change for {3 * domain.resolution_s:.3g} s (3 tick periods) at a "
                "window edge while the device worked: it is frozen; the run is stopped rather than reported")
        if missed:
            logger.warning("counter(s) %s did not tick at a window edge", ", ".join(sorted(missed)))
        self.check_readings(end.t_s - start.t_s, energy, moved_before=fallback_power_w)
        return energy

    def check_readings(self, duration_s: float | Mapping[str, float], energy: Any, what: str = "a window",
                       moved_before: Mapping[str, float] | None = None) -> None:
        """Fail on a reading no hardware gives (see `ImpossibleReading`), instead of reporting it.
        `duration_s` is the span the energy covers (per domain where the spans differ).
        `moved_before` (the idle power) names the counters that were seen moving: one of them that
        then stands still for many tick periods while the workload runs has frozen."""
        for domain in self.domains:
            name = domain.name
            if name not in energy.energy_j:
                continue
            energy_j = energy.energy_j[name]
            span_s = duration_s.get(name, 0.0) if isinstance(duration_s, Mapping) else duration_s
            slack_j = 3.0 * energy.uncertainty_j.get(name, 0.0) + 1e-9
            if energy_j < -slack_j:
                raise ImpossibleReading(
                    f"{name} gave {energy_j:.4g} J over {what} of {span_s:.3g} s: energy cannot be negative "
                    "(the counter went backwards or was reset); the run is stopped rather than reported")
            # Impossible only if even the lowest energy the edges allow is above the device's maximum.
            lowest_j = energy.bounds_j[name][0] if name in getattr(energy, "bounds_j", {}) else energy_j - slack_j
            if domain.max_power_w is not None and span_s > 0 and lowest_j / span_s > domain.max_power_w:
                raise ImpossibleReading(
                    f"{name} gave {energy_j:.4g} J over {what} of {span_s:.3g} s, {energy_j / span_s:.4g} W: more "
                    f"than the {domain.max_power_w:.4g} W this device can draw (a counter reset taken for a wrap, or a "
                    "jump); the run is stopped rather than reported")
            frozen_after_s = max(FROZEN_TICKS * domain.resolution_s, MIN_FROZEN_S)
            raw = getattr(energy, "raw_j", {}).get(name)
            was_moving = bool(moved_before) and moved_before.get(name, 0.0) > 0  # type: ignore[union-attr]
            if was_moving and domain.has_counter and raw == 0.0 and span_s >= frozen_after_s:
                raise ImpossibleReading(
                    f"{name}'s counter did not change for {span_s:.3g} s while the device worked "
                    f"({span_s / max(domain.resolution_s, 1e-9):.0f} tick periods): it is frozen, or it is "
                    "not this device's counter (check --device and --backend)")

    def idle_power_w(self, idle_s: float) -> dict[str, float]:
        """Power of each domain while nothing runs: counter difference over the time between the
        ticks it refers to (so no edge correction is needed), or mean sampled power."""
        if idle_s <= 0:
            return {}
        assert self.edges is not None and self.sampler is not None
        self.sync()
        start = self.edges.start_edge()
        self._learn_periods(idle_s)
        end = self.edges.end_edge(margin_s=0.0)
        self.check_sampler()
        idle_w: dict[str, float] = {}
        raw = {d.name: end.counters_j[d.name] - start.counters_j[d.name] for d in self.domains if d.has_counter}
        spans = {name: end.tick_t_s[name] - start.tick_t_s[name] for name in raw}
        self.check_readings(spans, _Readings(raw, {}, raw), "the idle window")
        for domain in self.domains:
            name = domain.name
            if domain.has_counter:
                span_s = end.tick_t_s[name] - start.tick_t_s[name]
                power_w = (end.counters_j[name] - start.counters_j[name]) / span_s if span_s > 0 else 0.0
            else:
                power_w = self.sampler.mean_power_w(name, start.t_s, end.t_s)
            idle_w[name] = max(0.0, power_w)
        return idle_w

    def _learn_periods(self, idle_s: float) -> None:
        """Wait `idle_s`, polling the coarse counters for their ticks meanwhile (the device is idle
        anyway), then set each domain's `SensorPeriods`: the counter's update period and the power
        field's, from the instants their values changed (`measure.periods`)."""
        assert self.edges is not None and self.sampler is not None
        coarse = [d for d in self.domains if d.has_counter and d.resolution_s >= COARSE_RESOLUTION_S]
        end_t = self.clock() + idle_s
        if not coarse:
            sleep_on(self.clock, idle_s)
            return
        changes: dict[str, list[float]] = {d.name: [] for d in coarse}
        last: dict[str, float] = {}
        while self.clock() < end_t:
            t_before = self.clock()
            for name, value in self.edges.read_counters([d.name for d in coarse]).items():
                if name in last and value != last[name]:
                    changes[name].append((t_before + self.clock()) / 2)
                last[name] = value
            sleep_on(self.clock, min(POLL_FOR_PERIODS_S, max(0.0, end_t - self.clock())))
        periods: dict[str, SensorPeriods] = {}
        for domain in coarse:
            learned = update_period_s(changes[domain.name])
            counter_s = learned if learned is not None else domain.resolution_s
            power_s = None
            if self.sampler.has(domain.name):
                t, p = self.sampler.samples(domain.name)
                power_s = update_period_s(change_times(t, p))
            # Too few changes to tell (a short idle): the field is not trusted at the edges.
            fast = power_s is not None and power_s < counter_s / 2
            periods[domain.name] = SensorPeriods(counter_s, "learned" if learned is not None else "declared",
                                                 power_s, fast, has_power_field=self.sampler.has(domain.name))
        self.edges.periods.update(periods)

    def sensor_notes(self) -> tuple[str, ...]:
        """What the learned sensor periods mean for the figures (one line each)."""
        assert self.edges is not None
        return tuple(note for name, periods in self.edges.periods.items() if (note := periods.note(name)))


class Meter:
    """Measures workloads with a fixed set of backends. See the module docstring for the method."""

    def __init__(
        self,
        backends: Sequence[Backend],
        config: MeterConfig | None = None,
        sync: Callable[[], None] = no_sync,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.perf_counter,
        agree: Agree = no_agreement,
    ) -> None:
        self.backends = list(backends)
        self.config = config or MeterConfig()
        self.sync = sync
        self.progress = progress or (lambda phase, fraction, message: None)
        self.clock = clock
        self.agree = agree

    def _calls_per_window(self, latency_s: float) -> int:
        """Calls that fill a window at this latency; with an `agree`, the most any process needs."""
        own = max(1, math.ceil(self.config.window_s / max(latency_s, 1e-9)))
        return max(1, int(self.agree(float(own), "max")))

    def _all_agree(self, flag: bool) -> bool:
        """True when this process and (with an `agree`) every other one says True."""
        return self.agree(1.0 if flag else 0.0, "min") >= 1.0

    # ---- public API -------------------------------------------------------------------------
    def measure(self, workload: Workload, batch_size: int = 1, label: str = "model") -> Measurement:
        _check_batch_size(batch_size)
        run = _Run(label, workload, batch_size)
        with MeterSession(self.backends, self.sync, self.config.sample_interval_s, self.clock) as session:
            idle_w = self._idle(session)
            self._warm_up(session, run)
            stop_reason = self._repeat(session, [run], idle_w)
            return self._result(session, run, idle_w, stop_reason)

    def compare(
        self,
        workload_a: Workload,
        workload_b: Workload,
        batch_size_a: int = 1,
        batch_size_b: int = 1,
        labels: tuple[str, str] = ("A", "B"),
    ) -> Comparison:
        _check_batch_size(batch_size_a)
        _check_batch_size(batch_size_b)
        run_a = _Run(labels[0], workload_a, batch_size_a)
        run_b = _Run(labels[1], workload_b, batch_size_b)
        with MeterSession(self.backends, self.sync, self.config.sample_interval_s, self.clock) as session:
            idle_w = self._idle(session)
            self._warm_up(session, run_a)
            self._warm_up(session, run_b)
            stop_reason = self._repeat(session, [run_a, run_b], idle_w)
            a = self._result(session, run_a, idle_w, stop_reason)
            b = self._result(session, run_b, idle_w, stop_reason)
        ratio_precision = self._achieved_precision([run_a, run_b])
        if stop_reason == "max-duration-reached" and math.isinf(ratio_precision):
            b = dataclasses.replace(b, warnings=(*b.warnings, (
                f"no 95% interval for the ratio from {len(run_a.windows)} window pair(s) (6 or more give one): "
                f"--max-duration ({self.config.max_duration_s:g} s) ran out first")))
        elif stop_reason == "max-duration-reached" and ratio_precision > self.config.precision:
            note = (f"the ratio's 95% interval is +-{ratio_precision * 100:.1f}%, wider than the "
                    f"+-{self.config.precision * 100:g}% asked: --max-duration ({self.config.max_duration_s:g} s) "
                    "ran out first")
            b = dataclasses.replace(b, warnings=(*b.warnings, note))
        return Comparison(a, b, tuple(_bracketed_ratios(run_a.windows, run_b.windows)), stop_reason)

    # ---- phases -----------------------------------------------------------------------------
    def _idle(self, session: MeterSession) -> dict[str, float]:
        self.progress("idle", 0.0, f"measuring idle power for {self.config.idle_s:g} s")
        idle_w = session.idle_power_w(self.config.idle_s)
        self.progress("idle", 1.0, "idle power measured")
        return idle_w

    def _warm_up(self, session: MeterSession, run: _Run) -> None:
        """Run until the latency of single calls is stable (compilation, autotuning and caches
        settle), then size windows from it."""
        latencies: list[float] = []
        started = self.clock()
        while True:
            self.sync()
            t0 = self.clock()
            _call(run)
            self.sync()
            latencies.append(self.clock() - t0)
            elapsed = self.clock() - started
            self.progress("warmup", min(1.0, elapsed / max(self.config.max_warmup_s, 1e-9)),
                          f"warming up {run.label}: {len(latencies)} calls")
            warm = _stable(latencies) and elapsed >= self.config.min_warmup_s
            if self._all_agree(warm or elapsed >= self.config.max_warmup_s):
                break
        run.warmup_inferences = len(latencies)
        latency_s = stats.median(latencies[-5:])
        run.n_per_window = self._calls_per_window(latency_s)
        if not _stable(latencies):
            logger.info("%s: latency still moving after %.1f s of warm-up", run.label, elapsed)

    def _repeat(self, session: MeterSession, runs: list[_Run], idle_w: Mapping[str, float]) -> str:
        """Windows until precise enough or out of time. With two runs, windows alternate
        A B A B ... and end with an extra A so every B window is bracketed."""
        config = self.config
        measured_s = 0.0
        index = 0
        while True:
            for run in runs:
                try:
                    self._window(session, run, index, idle_w)
                except MeasurementError as error:
                    error.partial = _partial(runs, idle_w, str(error))
                    raise
                measured_s += run.windows[-1].duration_s
                index += 1
            done = len(runs[-1].windows) >= config.repeats
            precision = self._achieved_precision(runs)
            plan = measure_plan(len(runs[-1].windows), config.repeats, precision, config.precision, measured_s,
                                config.max_duration_s)
            interval = f"+-{precision * 100:.1f}% (95%)" if math.isfinite(precision) else "no 95% interval yet"
            self.progress("measure", plan.fraction, f"window {plan.done} of ~{plan.expected}, {interval}"
                          + (f", +-{config.precision * 100:g}% asked" if config.precision else ""))
            next_s = sum(r.windows[-1].duration_s for r in runs)
            reason = None
            if done and config.precision == 0:  # no precision asked: the repeats are the plan
                reason = "repeats-done"
            elif done and precision <= config.precision:
                reason = "precision-reached"
            elif done and measured_s + next_s > config.max_duration_s:
                reason = "max-duration-reached"
            if self._all_agree(reason is not None):  # in lockstep: once every process is done
                break
        if len(runs) == 2:
            self._window(session, runs[0], index, idle_w)  # the closing A of the bracket
        assert reason is not None  # the loop ends only once this process has a reason too
        self.progress("measure", 1.0, f"{len(runs[-1].windows)} windows: {METER_STOP_REASONS[reason]}")
        return reason

    def _achieved_precision(self, runs: list[_Run]) -> float:
        """The relative half-width of the median's 95% interval; infinite until there are
        enough values for the interval to reach 95%."""
        if len(runs) == 2:
            values = _bracketed_ratios(runs[0].windows, runs[1].windows)
        else:
            values = [w.per_inference_j for w in runs[0].windows]
        return _precision_of(values)

    def _window(self, session: MeterSession, run: _Run, index: int, idle_w: Mapping[str, float]) -> None:
        n = run.n_per_window
        duration_s, energy, _ = session.measure_span(lambda: _loop(run, n), idle_w)
        run.windows.append(
            Window(index, run.label, n, duration_s, energy.energy_j, energy.uncertainty_j, session.states(),
                   energy.bounds_j)
        )
        # Re-size from what a window really took: unsynchronised calls pipeline on a GPU and run
        # faster than the synchronised warm-up calls suggested.
        latency_s = duration_s / n
        run.n_per_window = self._calls_per_window(latency_s)

    def _result(
        self, session: MeterSession, run: _Run, idle_w: Mapping[str, float], stop_reason: str
    ) -> Measurement:
        if not run.windows:
            raise MeasurementError("no window was measured")
        warnings = list(_throttle_warnings(run.windows)) + list(session.notes()) + list(session.sensor_notes())
        total_j = sum(w.total_energy_j for w in run.windows)
        if total_j <= 0:
            raise MeasurementError(
                "the counters saw no energy during the measurement: the device may not be the "
                "one the backends meter (check --device and --backend)"
            )
        idle_total_w = sum(idle_w.values())
        if any(w.total_energy_j < idle_total_w * w.duration_s * 0.98 for w in run.windows):
            warnings.append(
                "some windows drew less than the idle power: the idle baseline drifted (the "
                "above-idle figure is uncertain; measure longer or let the device settle)"
            )
        achieved = _precision_of([w.per_inference_j for w in run.windows])
        if len(run.windows) < stats.MIN_VALUES_FOR_LEVEL:
            level = stats.median_rank(len(run.windows))[1]
            warnings.append(
                f"only {len(run.windows)} window(s): the interval [min, max] holds the median with "
                f"{level * 100:.1f}% confidence, not 95% (--repeats {stats.MIN_VALUES_FOR_LEVEL} or more for 95%)")
        # In a comparison the precision asked is the ratio's (warned by `compare`); a run's own
        # interval may well be narrower than asked, and then there is nothing to warn about.
        if stop_reason == "max-duration-reached" and math.isinf(achieved):
            warnings.append(
                f"no 95% interval from {len(run.windows)} window(s) (6 or more give one): --max-duration "
                f"({self.config.max_duration_s:g} s) ran out before the +-{self.config.precision * 100:g}% asked")
        elif stop_reason == "max-duration-reached" and achieved > self.config.precision:
            warnings.append(
                f"the 95% interval is +-{achieved * 100:.1f}%, wider than the +-{self.config.precision * 100:g}% "
                f"asked: --max-duration ({self.config.max_duration_s:g} s) ran out first"
            )
        trace: PowerTrace | None = None
        if self.config.keep_trace and session.sampler is not None and session.sampler.active:
            trace = session.sampler.trace()
        return Measurement(
            label=run.label,
            batch_size=run.batch_size,
            domains=tuple(session.domains),
            windows=tuple(run.windows),
            idle_power_w=dict(idle_w),
            stop_reason=stop_reason,
            precision=self.config.precision,
            warmup_inferences=run.warmup_inferences,
            device=session.facts(),
            warnings=tuple(warnings),
            power_trace=trace,
        )


# ---- helpers ---------------------------------------------------------------------------------
def _partial(runs: Sequence[_Run], idle_w: Mapping[str, float], error: str) -> dict[str, Any]:
    """What was measured before a fault, as JSON (schema energyprune.partial/1): nothing is lost."""
    return {
        "schema": "energyprune.partial/1",
        "error": error,
        "idle_power_w": dict(idle_w),
        "windows": [
            {"run": run.label, "index": w.index, "n_inferences": w.n_inferences, "duration_s": w.duration_s,
             "per_inference_j": w.per_inference_j, "energy_j": dict(w.energy_j),
             "edge_uncertainty_j": dict(w.edge_uncertainty_j)}
            for run in runs for w in run.windows
        ],
    }


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UsageError(f"the batch size must be at least 1 (got {batch_size})")


def _call(run: _Run) -> None:
    try:
        run.workload()
    except EnergyPruneError:
        raise
    except Exception as error:  # the user's model failed: say so in one line
        raise MeasurementError(f"the workload {run.label!r} failed: {type(error).__name__}: {error}") from error


def _loop(run: _Run, n: int) -> int:
    workload = run.workload
    try:
        for _ in range(n):
            workload()
    except Exception as error:
        raise MeasurementError(f"the workload {run.label!r} failed: {type(error).__name__}: {error}") from error
    return n


def _stable(latencies: Sequence[float], window: int = 5, tolerance: float = 0.05) -> bool:
    """Two consecutive groups of `window` calls agree on their median within `tolerance`."""
    if len(latencies) < 2 * window:
        return False
    recent = stats.median(latencies[-window:])
    before = stats.median(latencies[-2 * window:-window])
    return abs(recent - before) <= tolerance * before


def _precision_of(values: Sequence[float]) -> float:
    if len(values) < stats.MIN_VALUES_FOR_LEVEL:
        return math.inf
    centre = stats.median(values)
    return stats.relative_half_width(stats.median_interval(values), centre)


def _bracketed_ratios(a_windows: Sequence[Window], b_windows: Sequence[Window]) -> list[float]:
    ratios = []
    for i, b in enumerate(b_windows):
        if i + 1 >= len(a_windows):
            break
        a_mean = (a_windows[i].per_inference_j + a_windows[i + 1].per_inference_j) / 2
        if a_mean > 0:
            ratios.append(b.per_inference_j / a_mean)
    return ratios


def _throttle_warnings(windows: Sequence[Window]) -> Iterator[str]:
    by_domain: dict[str, list[DeviceState]] = {}
    for window in windows:
        for state in window.states:
            by_domain.setdefault(state.domain, []).append(state)
    for domain, states in by_domain.items():
        limited = [s for s in states if s.limited_by]  # the backend says which of its reasons limit
        if not limited:
            continue
        reasons = sorted({r for s in limited for r in s.limited_by})
        clocks = [s.sm_clock_mhz for s in states if s.sm_clock_mhz is not None]
        clock_text = f"; SM clock {min(clocks):.0f}-{max(clocks):.0f} MHz" if clocks else ""
        yield (
            f"{domain} was limited ({', '.join(reasons)}) in {len(limited)} of {len(states)} windows"
            f"{clock_text}: its J/inference drifts with the clock, so compare models with "
            "`energyprune compare` (interleaved windows), not with two separate measurements"
        )
