"""How often a sensor's value really changes, learned from the instants it changed.

A vendor may say "instantaneous" and hold the value for 100 ms (NVML field 186 on an H200 did:
288 changes in 31 s, median 102 ms). The meter therefore learns, while it measures idle power,
how often each counter ticks and each power field changes, and uses a power field to correct
window edges only where it changes faster than the counter (`hardware-notes.md`).

The estimator is robust to missed changes (a power value that repeats at idle hides an update):
with P0 the median interval between changes, every interval counts as k = round(Δ / P0) periods,
and the period is ΣΔ / Σk. At least `MIN_CHANGES` changes are needed (about 0.6 s of a 10 Hz
sensor); with fewer, there is no estimate.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_CHANGES = 5


def update_period_s(change_times_s: Sequence[float]) -> float | None:
    """The period of a sensor from the instants its value changed; None with too few changes."""
    times = sorted(change_times_s)
    intervals = [b - a for a, b in zip(times, times[1:]) if b > a]
    if len(intervals) + 1 < MIN_CHANGES:
        return None
    p0 = statistics.median(intervals)
    if p0 <= 0:
        return None
    periods = sum(max(1, round(d / p0)) for d in intervals)
    return sum(intervals) / periods


def change_times(times_s: Sequence[float], values: Sequence[float]) -> list[float]:
    """The instants (of the later sample) at which a sampled value differs from the one before."""
    return [t for t, a, b in zip(times_s[1:], values, values[1:]) if a != b]


@dataclass(frozen=True)
class SensorPeriods:
    """What the meter knows about one domain's sensors. `counter_s` is the counter's update period
    (learned, else as its backend declares it); `power_s` the power field's, None where there is
    none or too few changes were seen. `power_for_edges` says whether window edges are corrected
    with the power field (only where it was seen to change at least twice as often as the counter)."""

    counter_s: float
    counter_source: str  # "learned" or "declared"
    power_s: float | None
    power_for_edges: bool
    has_power_field: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"counter_s": self.counter_s, "counter_source": self.counter_source, "power_s": self.power_s,
                "power_for_edges": self.power_for_edges}

    def note(self, domain: str) -> str | None:
        """A line for the result where the power field could not help at the edges."""
        if self.power_for_edges or not self.has_power_field:
            return None
        if self.power_s is None:
            return (f"{domain}: its power field's update period was not learned (an idle phase of 1 s or more learns "
                    f"it): window edges are corrected from the energy counter ({self.counter_s * 1e3:.0f} ms) alone")
        return (f"{domain}: its power field changes every {self.power_s * 1e3:.0f} ms, no faster than its energy "
                f"counter ({self.counter_s * 1e3:.0f} ms): window edges are corrected from the counter and the idle "
                "power, not from the power field")
