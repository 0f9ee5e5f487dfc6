"""Random scores: the control every benchmark includes. A criterion that does not beat it on a
model tells us nothing about that model.

Each unit gets an independent uniform [0, 1) score from a generator seeded with `seed`, drawn in
the units' sorted order, so the scores depend on the seed and on the set of units - not on the
order they were passed in, nor on the model or the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Unit
from energyprune.pruning.criteria.units import check_units

UNIT_KINDS = ("block", "attention", "neuron", "head", "hidden", "channel", "activation")


class RandomCriterion:
    """Seeded uniform random scores for units of one kind."""

    name = "random"

    def __init__(self, unit_kind: str = "block", *, seed: int = 0) -> None:
        if unit_kind not in UNIT_KINDS:
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(UNIT_KINDS)}, got {unit_kind!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UsageError(f"{self.name}: seed must be an integer, got {seed!r}")
        self.unit_kind = unit_kind
        self.seed = seed

    def __repr__(self) -> str:
        return f"RandomCriterion(unit_kind={self.unit_kind!r}, seed={self.seed})"

    def score(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration | None = None) -> dict[Unit, float]:
        """Scores for `units`; `model` and `calibration` are accepted and ignored."""
        ordered = sorted(set(check_units(units, self.unit_kind, self.name)))
        draws = np.random.default_rng(self.seed).random(len(ordered))
        return {unit: float(value) for unit, value in zip(ordered, draws)}
