"""energyprune: measure joules per inference honestly, and prune models to an energy budget.

Nothing runs at import: backends probe hardware only when asked to, and the names that need torch
(`measure`, `prune_to_energy`, ...) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

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
from energyprune.backends.base import DomainInfo, EnergyReading, Provenance
from energyprune.measure.results import Measurement

from energyprune.version import __version__

# The public API that imports torch, loaded on first access (PEP 562).
_LAZY = {
    "measure": "energyprune.measure.api",
    "compare": "energyprune.measure.api",
    "EnergyMeter": "energyprune.measure.api",
    "MeterConfig": "energyprune.measure.meter",
    "prune": "energyprune.pruning",
    "prune_to_energy": "energyprune.budget",
    "parse_target": "energyprune.budget",
    "EnergyTarget": "energyprune.budget",
    "PruneResult": "energyprune.budget",
    "PruneStep": "energyprune.budget",
    "PruneInterrupted": "energyprune.budget",
    "measure_distributed": "energyprune.measure.distributed",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'energyprune' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    *_LAZY,
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
