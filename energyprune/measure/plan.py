"""How far along a measurement is, told truthfully: the windows still needed for the precision
asked, not just the minimum.

The half-width of the median's interval shrinks like 1/sqrt(n), so n windows at a relative
half-width p_now reach the asked p after about n * (p_now / p)^2 windows. Until there are enough
windows for a 95% interval at all (six), the plan is at least that many. It never plans past what
`--max-duration` leaves room for (at the mean window length so far), and never below `--repeats`,
which are always done. The fraction is the windows done over the windows planned: it can go
down when a noisy window widens the interval, which is what is really happening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from energyprune import stats


@dataclass(frozen=True)
class MeasurePlan:
    done: int  # windows (rounds, in a comparison) measured so far
    expected: int  # windows expected in all, at the current estimate

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.expected) if self.expected > 0 else 1.0


def measure_plan(done: int, repeats: int, precision_now: float, precision_asked: float, measured_s: float,
                 max_duration_s: float) -> MeasurePlan:
    """The windows expected in all after `done` of them took `measured_s` seconds and reached a
    relative 95% half-width of `precision_now` (inf while too few for an interval)."""
    if done <= 0:
        return MeasurePlan(0, max(1, repeats))
    if precision_asked <= 0:  # no precision target: the repeats are the plan
        return MeasurePlan(done, max(repeats, done))
    if not math.isfinite(precision_now):
        needed = max(stats.MIN_VALUES_FOR_LEVEL, done + 1)
    elif precision_now <= precision_asked:
        needed = done
    else:
        needed = max(done + 1, math.ceil(done * (precision_now / precision_asked) ** 2))
    per_window_s = measured_s / done
    room = done + (math.floor(max(0.0, max_duration_s - measured_s) / per_window_s) if per_window_s > 0 else 0)
    needed = min(needed, room)
    return MeasurePlan(done, max(repeats, done, needed))
