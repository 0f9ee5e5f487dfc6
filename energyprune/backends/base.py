"""The backend protocol: read my counters now, in joules. Everything else lives in the meter.

A backend is constructed cheaply (nothing is touched at construction or import), probed (cached;
never raises for absent hardware, always says why), opened, read at window edges, and closed.
Optional capabilities are separate protocols so a minimal backend stays four methods long.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable



# ---- what a backend reports -----------------------------------------------------------------
class Provenance(str, enum.Enum):
    """Whether a figure came from a hardware counter or sensor, or from a model of the hardware."""

    MEASURED = "measured"
    ESTIMATED = "estimated"

    @classmethod
    def combine(cls, *items: Any) -> Provenance:
        """ESTIMATED as soon as one item is: a sum is only as good as its worst term. An item is a
        Provenance or its value, anything with a `provenance` (a domain, a measurement), a
        comparison (its `a` and `b`), or None (left out)."""
        for item in items:
            if item is None:
                continue
            if isinstance(item, (cls, str)):
                if cls(item) is cls.ESTIMATED:
                    return cls.ESTIMATED
            elif hasattr(item, "a") and hasattr(item, "b"):
                if cls.combine(item.a, item.b) is cls.ESTIMATED:
                    return cls.ESTIMATED
            elif cls.combine(getattr(item, "provenance")) is cls.ESTIMATED:
                return cls.ESTIMATED
        return cls.MEASURED


def is_estimated(*items: Any) -> bool:
    """Whether a figure made of these items is an estimate (see `Provenance.combine`)."""
    return Provenance.combine(*items) is Provenance.ESTIMATED


@dataclass(frozen=True)
class DomainInfo:
    """One thing a backend can meter: a GPU, a CPU package, a DRAM domain, an estimated CPU."""

    name: str  # unique across backends, e.g. "gpu:0", "rapl:package-0", "estimated:cpu"
    backend: str
    provenance: Provenance
    method: str  # how the energy is obtained, e.g. "energy-counter", "integrated-instant-power"
    device: str  # human-readable description of the hardware behind it
    has_counter: bool = True  # False: the meter integrates the backend's power samples
    resolution_s: float = 0.0  # how often the counter's value changes; 0 when continuous
    # Systematic relative uncertainty of a model-based figure (estimated backend); 0 when measured.
    model_relative_uncertainty: float = 0.0
    assumptions: tuple[str, ...] = ()
    #: A power this domain cannot physically draw, averaged over a window (a generous bound: twice
    #: a GPU's top power limit, 1 kW for a CPU package). A window above it means the counter
    #: jumped (a reset taken for a wrap...), and the meter fails the run instead of reporting it.
    #: None: no bound known.
    max_power_w: float | None = None
    #: What identifies the physical device everywhere (a GPU's UUID); None where the name on its
    #: host does (a CPU package). Distributed runs count a device seen by two ranks once.
    device_id: str | None = None


@dataclass(frozen=True)
class EnergyReading:
    """Cumulative counters at one instant: joules since the backend was opened, wrap-corrected."""

    t_s: float  # time.perf_counter() when the read completed
    energy_j: Mapping[str, float]


@dataclass(frozen=True)
class PowerSample:
    t_s: float
    power_w: Mapping[str, float]


@dataclass(frozen=True)
class DeviceState:
    """A device's operating point, sampled at the end of each window (clocks drift under a cap)."""

    domain: str
    sm_clock_mhz: float | None = None
    temperature_c: float | None = None
    power_limit_w: float | None = None
    throttle_reasons: tuple[str, ...] = ()
    #: The reasons among them that mean the workload ran slower than it asked (a power cap, heat),
    #: as the backend judges them: what the meter warns about, whatever the vendor.
    limited_by: tuple[str, ...] = ()


# ---- the protocol ------------------------------------------------------------------------------
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
