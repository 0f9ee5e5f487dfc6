"""energyprune: measure joules per inference honestly, and prune models to an energy budget.

Nothing runs at import: backends probe hardware only when asked to.
"""

from __future__ import annotations

from energyprune.errors import (
    BackendError,
    BackendUnavailable,
    EnergyPruneError,
    InputShapeError,
    MeasurementError,
    ModelLoadError,
    TargetUnreachable,
    UsageError,
)
from energyprune.measurement import DomainInfo, EnergyReading, Measurement, Provenance

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "DomainInfo",
    "EnergyPruneError",
    "EnergyReading",
    "InputShapeError",
    "Measurement",
    "MeasurementError",
    "ModelLoadError",
    "Provenance",
    "TargetUnreachable",
    "UsageError",
]
