"""The truth for spans of a recorded trace, and the experiment that checks the meter against it.

A recorded trace (`benchmarks/results/nvidia-h200/traces/`: an H200's energy counter read every
~3 ms for 31 s, with the workload's burst times) replays through the `replay` backend on a
simulated clock, so an `EnergyMeter` can be put around any stretch of it, as around user code on
the card. What it should report is defined here, from the trace's own counter over long runs:

- **idle**: the counter's power over the idle stretches (0.15 s kept away from activity);
- **steady segments** (matmuls, the power-capped MLP): the counter's mean power over the segment's
  interior; a span of length L inside it holds that power × L;
- **runs of bursts** (20 ms every 100 ms, 5 ms every 51 ms, 50 ms every 202 ms): the counter over
  the whole run, less the idle power over it, is the bursts' excess energy, shared among them by
  duration and placed inside each burst; a span holds idle power × L plus the excess of the parts
  of bursts it covers.

What the trace cannot tell is taken as an assumption: every burst of a run draws alike, and all of
a period's energy above idle belongs to its burst (the counter books it ~10 ms late, so a span
edge inside a burst, or less than 20 ms after one, has no defined truth: such spans are left out).
Over 10 counter ticks the model agrees with the counter to 0.2% (steady) and 1.3-1.8% (bursts);
over one tick, to 4-6%.

This module is numpy only; the meter is driven through its public API (`EnergyMeter`).
"""

from __future__ import annotations

import csv
import math
import random
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from energyprune.backends.replay import ReplayBackend
from energyprune.clock import SimulatedClock

#: What a counter read costs on the H200 (median of the trace's `read_s`).
READ_COST_S = 0.003
SPAN_LENGTHS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
#: A span edge must be this far after the end of a burst (the counter books energy late) and
#: before the next one, for its truth to be defined.
AFTER_BURST_S = 0.020
BEFORE_BURST_S = 0.005


@dataclass(frozen=True)
class Ticks:
    """The counter's ticks: the value after each, and the instant it happened (mid) within [lo, hi]."""

    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    mid: np.ndarray

    def mean_power_w(self, t_a: float, t_b: float) -> float:
        """The counter's power over the ticks surely inside [t_a, t_b]."""
        ja = int(np.searchsorted(self.lo, t_a, "left"))
        jb = int(np.searchsorted(self.hi, t_b, "right")) - 1
        return float((self.value[jb] - self.value[ja]) / (self.mid[jb] - self.mid[ja]))


@dataclass(frozen=True)
class Segment:
    """The truth model of one workload segment (module docstring)."""

    name: str
    kind: str  # "steady" or "burst"
    t_lo: float
    t_hi: float
    power_w: float = math.nan  # steady: mean power
    idle_w: float = math.nan  # bursts: idle power between them
    starts: tuple[float, ...] = ()
    ends: tuple[float, ...] = ()
    excess_j: tuple[float, ...] = ()  # bursts: energy above idle of each burst

    def truth_j(self, t0: float, t1: float) -> float:
        if self.kind == "steady":
            return self.power_w * (t1 - t0)
        total = self.idle_w * (t1 - t0)
        for start, end, excess in zip(self.starts, self.ends, self.excess_j):
            overlap = min(t1, end) - max(t0, start)
            if overlap > 0:
                total += excess * overlap / (end - start)
        return total

    def edge_defined(self, t: float) -> bool:
        """Whether an edge at t has a defined truth: anywhere in a steady segment; in a burst
        run, in idle at least AFTER_BURST_S past a burst and BEFORE_BURST_S before the next."""
        if self.kind == "steady":
            return self.t_lo <= t <= self.t_hi
        for start, end in zip(self.starts, self.ends):
            if start - BEFORE_BURST_S <= t < end + AFTER_BURST_S:
                return False
        return self.t_lo - 0.4 <= t <= self.t_hi + 0.4


def load_trace_columns(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_s, counter J, read duration s) of the counter-read rows of a trace (rows with `read_s`)."""
    t, energy, read = [], [], []
    with open(path, encoding="utf-8") as handle:
        rows = csv.reader(line for line in handle if not line.startswith("#"))
        header = next(rows)
        t_col, r_col = header.index("t_s"), header.index("read_s")
        e_col = next(i for i, name in enumerate(header) if name.endswith("_energy_j"))
        for row in rows:
            if row[r_col].strip():
                t.append(float(row[t_col]))
                energy.append(float(row[e_col]))
                read.append(float(row[r_col]))
    return np.array(t), np.array(energy), np.array(read)


def counter_ticks(path: Path) -> Ticks:
    t, energy, read = load_trace_columns(path)
    j = np.nonzero(np.diff(energy) != 0)[0] + 1
    return Ticks(value=energy[j], lo=t[j - 1] - read[j - 1] / 2, hi=t[j] + read[j] / 2, mid=0.5 * (t[j - 1] + t[j]))


def load_events(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Phase -> [(start, end)] of a workload's events file."""
    out: dict[str, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            out.setdefault(row["phase"], []).append((float(row["t_start_s"]), float(row["t_end_s"])))
    return out


def segments(trace: Path, events: Path) -> list[Segment]:
    """The truth model of every workload segment of the recorded trace."""
    ticks = counter_ticks(trace)
    phases = load_events(events)
    out: list[Segment] = []
    for name, spans in phases.items():
        if name == "idle":
            continue
        start, end = spans[0][0], spans[-1][1]
        if len(spans) == 1:  # steady: the interior, away from the start's overshoot
            lo, hi = start + 0.3, end - 0.1
            out.append(Segment(name, "steady", lo, hi, power_w=ticks.mean_power_w(lo, hi)))
            continue
        idle = statistics.fmean([ticks.mean_power_w(start - 0.85, start - 0.15),
                                 ticks.mean_power_w(end + 0.15, end + 0.85)])
        ja = int(np.searchsorted(ticks.hi, start, "right")) - 1
        jb = int(np.searchsorted(ticks.lo, end + 0.05, "left"))
        excess = float(ticks.value[jb] - ticks.value[ja]) - idle * float(ticks.mid[jb] - ticks.mid[ja])
        durations = [e - s for s, e in spans]
        out.append(Segment(name, "burst", start, end, idle_w=idle, starts=tuple(s for s, _ in spans),
                           ends=tuple(e for _, e in spans),
                           excess_j=tuple(excess * d / sum(durations) for d in durations)))
    return out


@dataclass(frozen=True)
class SpanResult:
    segment: str
    length_s: float
    t0: float
    t1: float
    truth_j: float
    energy_j: float
    low_j: float
    high_j: float
    below_resolution: bool

    @property
    def covered(self) -> bool:
        return self.low_j <= self.truth_j <= self.high_j

    @property
    def error(self) -> float:
        return (self.energy_j - self.truth_j) / self.truth_j

    @property
    def miss(self) -> float:
        """How far outside the interval the truth lies, relative to the truth (0 when inside)."""
        return max(self.low_j - self.truth_j, self.truth_j - self.high_j, 0.0) / self.truth_j


def measure_span(trace: Path, open_at_s: float, length_s: float | None = None,
                 until_s: float | None = None) -> tuple[float, float, object]:
    """An `EnergyMeter` around `length_s` of the replayed trace (or until trace time `until_s`),
    opened at trace time `open_at_s` on a simulated clock (a counter read costs READ_COST_S, as on
    the H200). Returns (t0, t1, span) in trace time: the span starts where the meter lets user
    code start (after its start edge)."""
    from energyprune.measure.api import EnergyMeter

    clock = SimulatedClock(100.0)
    backend = ReplayBackend(trace, clock=clock, start_s=open_at_s, read_cost_s=READ_COST_S)
    meter = EnergyMeter([backend], clock=clock, keep_trace=False)
    with meter:
        t0 = open_at_s + clock() - 100.0
        clock.sleep(length_s if length_s is not None else max(0.0, float(until_s) - t0))
        t1 = open_at_s + clock() - 100.0
    return t0, t1, meter.result


def placements(model: Sequence[Segment], length_s: float, n: int, rng: random.Random) -> Iterator[tuple[Segment, float]]:
    """Up to `n` (segment, meter-open time) per segment for spans of `length_s`: uniformly random
    in steady segments; in burst runs, random too (edges are checked after the meter has placed the
    span). The meter opens 0.25 s before the span: its start edge waits for two counter ticks."""
    for segment in model:
        lo, hi = segment.t_lo, segment.t_hi - length_s
        if segment.kind == "burst":
            lo, hi = lo - 0.3, segment.t_hi + 0.3 - length_s
        if hi <= lo:
            continue
        for _ in range(n):
            yield segment, rng.uniform(lo, hi) - 0.25


def run(trace: Path, events: Path, lengths: Sequence[float] = SPAN_LENGTHS_S, per_segment: int = 20,
        seed: int = 0) -> list[SpanResult]:
    """The experiment: spans of every length at random places of every segment, each measured by
    an EnergyMeter on the replayed trace and compared with the truth model. Spans whose edges have
    no defined truth (module docstring) are dropped."""
    model = segments(trace, events)
    rng = random.Random(seed)
    out = []
    for length in lengths:
        for segment, open_at in placements(model, length, per_segment, rng):
            t0, t1, span = measure_span(trace, open_at, length)
            if not (segment.edge_defined(t0) and segment.edge_defined(t1)):
                continue
            if segment.kind == "steady" and not (segment.t_lo <= t0 and t1 <= segment.t_hi):
                continue
            low, high = span.total_bounds_j
            out.append(SpanResult(segment.name, length, t0, t1, segment.truth_j(t0, t1), span.total_energy_j,
                                  low, high, span.below_resolution))
    return out


def run_at_bursts(trace: Path, events: Path, every: int = 3) -> list[SpanResult]:
    """Spans around single bursts: the meter opens 0.25 s before a burst (its start edge lands in
    the idle before it) and the span ends 25 ms after the burst (the counter books energy late).
    Every `every`-th burst of each run; the span's length is whatever the placement gives."""
    out = []
    for segment in segments(trace, events):
        if segment.kind != "burst":
            continue
        for start, end in list(zip(segment.starts, segment.ends))[::every]:
            t0, t1, span = measure_span(trace, start - 0.25, until_s=end + 0.025)
            if not (segment.edge_defined(t0) and segment.edge_defined(t1)) or t0 >= start:
                continue
            low, high = span.total_bounds_j
            out.append(SpanResult(segment.name, t1 - t0, t0, t1, segment.truth_j(t0, t1), span.total_energy_j,
                                  low, high, span.below_resolution))
    return out


def summary(results: Sequence[SpanResult]) -> list[dict[str, float]]:
    """Per span length: spans, coverage of the bounds, median |error| of the point figure, median
    relative half-width of the bounds."""
    rows = []
    for length in sorted({r.length_s for r in results}):
        group = [r for r in results if r.length_s == length]
        rows.append({
            "length_s": length, "spans": len(group),
            "coverage": sum(r.covered for r in group) / len(group),
            "median_abs_error": statistics.median(abs(r.error) for r in group),
            "median_half_width": statistics.median((r.high_j - r.low_j) / 2 / r.truth_j for r in group),
            "below_resolution": sum(r.below_resolution for r in group) / len(group),
            "largest_miss": max(r.miss for r in group),
        })
    return rows
