"""The Pareto front of (energy, fidelity) points: less energy is better, more fidelity is better.

Pure Python, no matplotlib, so the bench and tests can use it where plots are not installed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

Point = tuple[float, float]


def clean_points(points: Iterable[Any]) -> list[Point]:
    """The (energy, fidelity) pairs with two finite numbers; the rest (a step with no fidelity,
    an energy that could not be measured) cannot be placed on the plane and are dropped."""
    out: list[Point] = []
    for point in points:
        try:
            energy_j, fidelity = point
        except (TypeError, ValueError):
            continue
        if _finite(energy_j) and _finite(fidelity):
            out.append((float(energy_j), float(fidelity)))
    return out


def pareto_front(points: Iterable[Any]) -> list[Point]:
    """The non-dominated points, by increasing energy (and so increasing fidelity).

    A point is dominated when another has no more energy and no less fidelity, and is better in
    one of them. Exact duplicates are kept once."""
    ordered = sorted(set(clean_points(points)), key=lambda p: (p[0], -p[1]))
    front: list[Point] = []
    best_fidelity = -math.inf
    for energy_j, fidelity in ordered:
        # Sorted by energy, ties by fidelity descending: a point is on the front exactly when it
        # beats the fidelity of every point with less (or equal) energy seen so far.
        if fidelity > best_fidelity:
            front.append((energy_j, fidelity))
            best_fidelity = fidelity
    return front


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
