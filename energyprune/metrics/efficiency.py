"""Efficiency of a pruned model: Î = semantic_fidelity × compression_ratio / energy_j (DESIGN §5).

- semantic_fidelity ∈ [0, 1]: how much of the original's meaning the pruned model keeps, on the
  same inputs (:mod:`energyprune.metrics.fidelity`; 1 for the original itself);
- compression_ratio = original parameters / remaining parameters (1 for the original, 2 when half
  the parameters are gone);
- energy_j: the measured energy per inference of the pruned model (joules, one call = one batch).

Î is in 1/J ("meaning kept × compression per joule"). The original model's Î₀ = 1 · 1 / E₀, so the
relative figure Î / Î₀ = fidelity × compression × E₀ / E is dimensionless: > 1 means the pruned
model buys more kept meaning per parameter and per joule than the original did.

The energies must be of the same kind (both total or both above idle, same inputs and batch) and
their provenance travels with the figure: an Î computed from an ESTIMATED energy is ESTIMATED.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from energyprune.errors import UsageError
from energyprune.backends.base import Provenance
from energyprune.measure.results import Measurement

__all__ = ["Efficiency", "efficiency", "efficiency_from_measurements", "relative_efficiency"]


def relative_efficiency(fidelity: float, compression_ratio: float, energy_ratio: float) -> float:
    """Î / Î₀ = fidelity × compression_ratio / (E / E₀): the relative figure from an energy ratio
    alone, e.g. one measured by interleaved windows, which is tighter than two separate energies."""
    if not (math.isfinite(energy_ratio) and energy_ratio > 0):
        raise UsageError(f"the energy ratio must be positive and finite, got {energy_ratio!r}")
    return fidelity * compression_ratio / energy_ratio


@dataclass(frozen=True)
class Efficiency:
    """Î of a pruned model and of its original, from the numbers that define them."""

    fidelity: float
    original_params: int
    remaining_params: int
    energy_j: float  # per inference of the pruned model
    original_energy_j: float  # per inference of the original
    energy_provenance: Provenance
    original_energy_provenance: Provenance
    energy_source: str = ""  # how the energies were obtained (backends, kind of figure)

    @property
    def compression_ratio(self) -> float:
        return self.original_params / self.remaining_params

    @property
    def efficiency_per_j(self) -> float:
        """Î = fidelity × compression_ratio / energy_j, in 1/J."""
        return self.fidelity * self.compression_ratio / self.energy_j

    @property
    def original_efficiency_per_j(self) -> float:
        """Î₀ = 1 × 1 / E₀: the original keeps all its meaning and all its parameters."""
        return 1.0 / self.original_energy_j

    @property
    def relative(self) -> float:
        """Î / Î₀ = fidelity × compression_ratio × E₀ / E (dimensionless)."""
        return relative_efficiency(self.fidelity, self.compression_ratio, self.energy_ratio)

    @property
    def energy_ratio(self) -> float:
        return self.energy_j / self.original_energy_j

    @property
    def provenance(self) -> Provenance:
        if Provenance.ESTIMATED in (self.energy_provenance, self.original_energy_provenance):
            return Provenance.ESTIMATED
        return Provenance.MEASURED

    def to_dict(self) -> dict[str, Any]:
        return {
            "formula": "I = semantic_fidelity * compression_ratio / energy_j; relative = I / I_original "
                       "with I_original = 1 * 1 / original_energy_j",
            "fidelity": self.fidelity,
            "original_params": self.original_params,
            "remaining_params": self.remaining_params,
            "compression_ratio": self.compression_ratio,
            "energy_j": self.energy_j,
            "original_energy_j": self.original_energy_j,
            "energy_ratio": self.energy_ratio,
            "efficiency_per_j": self.efficiency_per_j,
            "original_efficiency_per_j": self.original_efficiency_per_j,
            "relative": self.relative,
            "provenance": self.provenance.value,
            "energy_provenance": self.energy_provenance.value,
            "original_energy_provenance": self.original_energy_provenance.value,
            "energy_source": self.energy_source,
        }


def _provenance(value: Provenance | str) -> Provenance:
    try:
        return Provenance(value)
    except ValueError:
        raise UsageError(f"provenance must be 'measured' or 'estimated', not {value!r}") from None


def efficiency(
    fidelity: float,
    original_params: int,
    remaining_params: int,
    energy_j: float,
    original_energy_j: float,
    *,
    energy_provenance: Provenance | str,
    original_energy_provenance: Provenance | str | None = None,
    energy_source: str = "",
) -> Efficiency:
    """Î of a pruned model from its fidelity, parameter counts and energies per inference.

    The provenance of the energies is required: a caller must say whether they were measured or
    estimated (``original_energy_provenance`` defaults to ``energy_provenance``)."""
    if not (isinstance(fidelity, numbers.Real) and 0.0 <= fidelity <= 1.0):
        raise UsageError(f"semantic fidelity must lie in [0, 1], got {fidelity!r}")
    for label, count in (("original_params", original_params), ("remaining_params", remaining_params)):
        if not (isinstance(count, numbers.Integral) and not isinstance(count, bool) and count > 0):
            raise UsageError(f"{label} must be a positive parameter count, got {count!r}")
    for label, value in (("energy_j", energy_j), ("original_energy_j", original_energy_j)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise UsageError(f"{label} must be a positive, finite number of joules, got {value!r}")
    provenance = _provenance(energy_provenance)
    original_provenance = _provenance(original_energy_provenance) if original_energy_provenance is not None else provenance
    return Efficiency(float(fidelity), int(original_params), int(remaining_params), float(energy_j), float(original_energy_j),
                      provenance, original_provenance, energy_source)


def efficiency_from_measurements(
    fidelity: float,
    original_params: int,
    remaining_params: int,
    measurement: Measurement,
    original_measurement: Measurement,
    *,
    dynamic: bool = False,
) -> Efficiency:
    """Î from two meter results (total energy per inference, or above idle with ``dynamic=True``)."""
    if measurement.batch_size != original_measurement.batch_size:
        raise UsageError(
            f"the two measurements ran different batches ({measurement.batch_size} vs "
            f"{original_measurement.batch_size}): energies per inference are not comparable"
        )
    pick = (lambda m: m.per_inference_dynamic_j) if dynamic else (lambda m: m.per_inference_j)
    kind = "above idle" if dynamic else "total (idle included)"
    source = (f"energyprune meter, median J per inference {kind}; backends "
              f"{', '.join(measurement.backends)} / {', '.join(original_measurement.backends)}")
    return efficiency(fidelity, original_params, remaining_params, pick(measurement), pick(original_measurement),
                      energy_provenance=measurement.provenance,
                      original_energy_provenance=original_measurement.provenance, energy_source=source)
