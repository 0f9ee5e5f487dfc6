"""The small error hierarchy every user-facing failure is translated into.

Each message is meant to be printed as one line: what was wrong and how to fix it. Vendor
exceptions (pynvml, OSError from sysfs, transformers) are caught at the edge and re-raised as one
of these, so the CLI can print the line and exit non-zero without a traceback.
"""

from __future__ import annotations


class EnergyPruneError(Exception):
    """Base class: a failure a user can act on. ``str(error)`` is the whole message."""

    exit_code: int = 2


class UsageError(EnergyPruneError):
    """An argument or option is invalid (a duration of 0, an unknown backend name...)."""


class BackendUnavailable(EnergyPruneError):
    """A backend asked for by name cannot be used here (absent hardware, no permission...)."""


class BackendError(EnergyPruneError):
    """A backend that probed fine failed while reading (a replay trace ran out, a read failed)."""


class MeasurementError(EnergyPruneError):
    """The meter could not produce an honest figure (the workload failed, no energy was seen, a
    counter gave an impossible reading...). `partial`, when set, holds what was measured before
    the fault (JSON-able: the windows so far), so that nothing measured is lost."""

    partial: dict | None = None


class ImpossibleReading(MeasurementError):
    """A counter said something no hardware does: negative energy, a power above what the device
    can draw, or no change at all while the device worked (frozen, reset, or not this device's)."""


class ModelLoadError(EnergyPruneError):
    """The model could not be found, imported or loaded."""


class InputShapeError(EnergyPruneError):
    """The model rejected the inputs it was given."""


class TargetUnreachable(EnergyPruneError):
    """An energy target cannot be met."""
