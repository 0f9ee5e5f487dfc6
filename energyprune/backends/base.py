"""The backend protocol: read my counters now, in joules. Everything else lives in the meter.

A backend is constructed cheaply (nothing is touched at construction or import), probed (cached;
never raises for absent hardware, always says why), opened, read at window edges, and closed.
Optional capabilities are separate protocols so a minimal backend stays four methods long.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from energyprune.measure.results import DeviceState, DomainInfo, EnergyReading, Provenance


@dataclass(frozen=True)
class Availability:
    """The outcome of a probe: usable or not, why, and what a user can do about it."""

    ok: bool
    reason: str
    fix: str = ""


@runtime_checkable
class Backend(Protocol):
    name: str
    provenance: Provenance

    def probe(self) -> Availability:
        """Whether this backend can be used here. Cached; never raises for absent hardware."""
        ...

    def open(self) -> None:
        """Acquire handles; raises BackendUnavailable with the reason and fix if it cannot."""
        ...

    def domains(self) -> Sequence[DomainInfo]:
        """What this backend meters (valid after open)."""
        ...

    def read(self) -> EnergyReading:
        """Cumulative joules per counter domain since open, wrap-corrected. Domains whose
        `has_counter` is False are absent from the reading (the meter integrates their power)."""
        ...

    def close(self) -> None:
        ...


@runtime_checkable
class PowerSensor(Protocol):
    """A backend that can answer an instantaneous power per domain (cheap: read in a thread)."""

    def power_w(self) -> Mapping[str, float]:
        ...


@runtime_checkable
class DeviceStateReporter(Protocol):
    """A backend that can report clocks, temperature and throttle reasons (at window edges)."""

    def device_states(self) -> Sequence[DeviceState]:
        ...


@runtime_checkable
class DeviceFactsReporter(Protocol):
    """A backend that can describe its hardware (name, driver, power limit...) for reports."""

    def device_facts(self) -> Mapping[str, Any]:
        ...


@runtime_checkable
class RunNotesReporter(Protocol):
    """A backend with something to say about the run just measured (a shared machine...), one
    line each; asked once, when a result is made."""

    def run_notes(self) -> Sequence[str]:
        ...


class WrappingCounter:
    """Turns a raw counter that wraps at `max_range` into a monotonic one.

    Correct as long as it is updated at least once per wrap period (for RAPL at 250 W with a
    262 kJ range, every ~17 minutes), which the meter's window-edge reads guarantee.
    """

    def __init__(self, max_range: float) -> None:
        if max_range <= 0:
            raise ValueError("a wrapping counter needs a positive range")
        self.max_range = max_range
        self._last_raw: float | None = None
        self._offset = 0.0

    def update(self, raw: float) -> float:
        if self._last_raw is not None and raw < self._last_raw:
            self._offset += self.max_range
        self._last_raw = raw
        return raw + self._offset
