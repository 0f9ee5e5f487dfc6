"""Small statistics over repeated windows: median, Student-t interval, coefficient of variation.

Kept dependency-free (no scipy) on purpose: the two-sided 95% Student-t quantiles are tabulated.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30; beyond 30 the normal 1.96 is within 2%.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile_975(degrees_of_freedom: int) -> float:
    """The 0.975 quantile of Student's t with the given degrees of freedom (>= 1)."""
    if degrees_of_freedom < 1:
        raise ValueError("a t interval needs at least two observations")
    if degrees_of_freedom <= len(_T975):
        return _T975[degrees_of_freedom - 1]
    # Cornish-Fisher style correction of the normal quantile; exact to 3 decimals past df=30.
    z = 1.959964
    return z + (z**3 + z) / (4 * degrees_of_freedom)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mean_ci95(values: Sequence[float], extra_half_width: float = 0.0) -> tuple[float, float]:
    """95% confidence interval of the mean (Student t), widened in quadrature by a systematic
    half-width (the counter's edge quantisation). One value gives only the systematic width."""
    centre = statistics.fmean(values)
    if len(values) < 2:
        half = extra_half_width
    else:
        sem = statistics.stdev(values) / math.sqrt(len(values))
        half = math.hypot(t_quantile_975(len(values) - 1) * sem, extra_half_width)
    return (centre - half, centre + half)


def cov(values: Sequence[float]) -> float:
    """Coefficient of variation (sample standard deviation over mean); 0 for fewer than 2 values."""
    if len(values) < 2:
        return 0.0
    centre = statistics.fmean(values)
    if centre == 0:
        return math.inf
    return statistics.stdev(values) / abs(centre)


def relative_half_width(interval: tuple[float, float]) -> float:
    low, high = interval
    centre = (low + high) / 2
    if centre == 0:
        return math.inf
    return (high - low) / 2 / abs(centre)
