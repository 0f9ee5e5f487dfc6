"""RAPL energy counters (Intel, and AMD Zen) read straight from the Linux powercap sysfs tree.

The kernel exposes one zone per CPU package (``<root>/intel-rapl:N``, name ``package-N``) with
subzones for ``core``, ``uncore`` and ``dram``; the subzones also appear at the top level as aliases
(``<root>/intel-rapl:N:M``). Some machines add an ``intel-rapl-mmio:N`` copy of the package and a
``psys`` zone that covers the whole platform. Counting all of them would count the same joules two
or three times, so this backend counts exactly:

* every package zone (``rapl:package-<socket>``), which already contains core and uncore;
* every ``dram`` zone (``rapl:dram-<socket>``), which is outside the package.

``core``, ``uncore``, ``psys`` and ``*-mmio`` zones are ignored, and a zone reached by two paths
(a subzone directory and its top-level alias) is counted once, by its resolved real path.

Counters are read at window edges by the meter. Each raw counter wraps at
``max_energy_range_uj`` (about 262 kJ on most parts, ~17 minutes at 250 W); a value lower than the
previous one is taken to be exactly one wrap, so reads must come at least once per wrap period.

No file is read at import or construction: ``probe()`` does the discovery and tries every counter.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energyprune.backends.base import Availability, WrappingCounter
from energyprune.errors import BackendError, BackendUnavailable
from energyprune.backends.base import DomainInfo, EnergyReading, Provenance
from energyprune.units import microjoules_to_joules

logger = logging.getLogger(__name__)

ROOT_ENV = "ENERGYPRUNE_POWERCAP_ROOT"
DEFAULT_ROOT = "/sys/class/powercap"
DEFAULT_CPUINFO = "/proc/cpuinfo"
#: Used when ``max_energy_range_uj`` cannot be read. The raw MSR counter is 32 bits wide, so this is
#: right only where the energy unit is 1 uJ; with the common 61 uJ unit the real range is ~262 kJ
#: and each wrap would be under-counted. Said in DomainInfo.assumptions so a report carries it.
FALLBACK_MAX_RANGE_UJ = 2**32
#: RAPL counters are refreshed by the hardware about once a millisecond.
RESOLUTION_S = 0.001
#: Powers no CPU package or DRAM domain draws, averaged over a window (the largest server CPUs are
#: rated ~500 W); a window above means the counter jumped (a reset taken for a wrap).
MAX_PACKAGE_POWER_W = 1000.0
MAX_DRAM_POWER_W = 500.0

# Any "<vendor>-rapl:N" prefix: intel-rapl on Intel and on AMD Zen with recent kernels, amd-rapl on
# some others. "intel-rapl-mmio" does not end in "-rapl", and is excluded by name as well below.
_TOP_ZONE = re.compile(r"^(?P<prefix>[\w.-]+-rapl):(?P<index>\d+)$")
_SUB_ZONE = re.compile(r"^(?P<prefix>[\w.-]+-rapl):(?P<index>\d+):(?P<sub>\d+)$")

_NO_TREE_FIX = (
    "load the intel_rapl_common/intel_rapl_msr module, or on a container mount the host's "
    f"/sys/class/powercap and set {ROOT_ENV}"
)
_PERMISSION_FIX = (
    "run `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*/*/energy_uj` (lost at reboot), or add a udev rule such as "
    '`ACTION=="add", SUBSYSTEM=="powercap", RUN+="/bin/chmod o+r /sys%p/energy_uj"` to '
    "/etc/udev/rules.d/70-energyprune-rapl.rules, or run as root"
)
_BROKEN_TREE_FIX = (
    f"check that the powercap tree at the root (or {ROOT_ENV}) is the host's "
    "/sys/class/powercap and that the intel_rapl_msr module is loaded"
)

ReadText = Callable[[Path], str]


def read_sysfs_text(path: Path) -> str:
    """The default reader: the whole file as text (sysfs attributes are tiny and ASCII)."""
    return path.read_text(encoding="utf-8", errors="replace")


class _Unusable(Exception):
    """Raised inside discovery; the probe turns it into an Availability, never into a crash."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


@dataclass(frozen=True)
class _Zone:
    """One counted powercap zone: a package or a DRAM domain."""

    domain: str  # "rapl:package-0", "rapl:dram-0"
    kind: str  # "package" or "dram"
    socket: str  # "0", or "0-die-1" on multi-die packages
    path: Path  # the zone directory as found under the root (for messages)

    @property
    def energy_file(self) -> Path:
        return self.path / "energy_uj"

    @property
    def max_range_file(self) -> Path:
        return self.path / "max_energy_range_uj"

    def describe(self) -> str:
        part = "package" if self.kind == "package" else "DRAM"
        return f"CPU socket {self.socket} {part} (RAPL)"


class RaplBackend:
    """Joules from the RAPL package and DRAM counters, via /sys/class/powercap.

    ``root`` defaults to ``$ENERGYPRUNE_POWERCAP_ROOT`` (read when the backend is constructed), else
    ``/sys/class/powercap``. ``read_text`` reads one file; tests inject one to simulate a file that
    only root may read, since chmod does not stop a test that runs as root.
    """

    name = "rapl"
    provenance = Provenance.MEASURED

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        cpuinfo_path: str | os.PathLike[str] = DEFAULT_CPUINFO,
        read_text: ReadText | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if root is None:
            root = os.environ.get(ROOT_ENV) or DEFAULT_ROOT
        self.root = Path(root)
        self.cpuinfo_path = Path(cpuinfo_path)
        self._read_text: ReadText = read_text if read_text is not None else read_sysfs_text
        self._clock = clock
        self._availability: Availability | None = None
        self._zones: tuple[_Zone, ...] = ()
        self._domains: tuple[DomainInfo, ...] = ()
        self._counters: dict[str, WrappingCounter] = {}
        self._zero_uj: dict[str, float] = {}

    # ---- Backend protocol -------------------------------------------------------------------
    def probe(self) -> Availability:
        """Discover the zones and try to read every counter once. Cached; never raises."""
        if self._availability is None:
            self._availability = self._probe_uncached()
            logger.info("rapl probe at %s: ok=%s %s", self.root, self._availability.ok,
                        self._availability.reason)
        return self._availability

    def open(self) -> None:
        availability = self.probe()
        if not availability.ok:
            raise BackendUnavailable(availability.reason + " Fix: " + availability.fix)
        domains = []
        counters: dict[str, WrappingCounter] = {}
        zero_uj: dict[str, float] = {}
        for zone in self._zones:
            max_range_uj, assumptions = self._max_range_uj(zone)
            counters[zone.domain] = WrappingCounter(max_range_uj)
            # The first value is the zero: readings are joules since open.
            zero_uj[zone.domain] = counters[zone.domain].update(self._open_read_uj(zone))
            domains.append(self._domain_info(zone, assumptions))
        self._domains = tuple(domains)
        self._counters = counters
        self._zero_uj = zero_uj

    def domains(self) -> Sequence[DomainInfo]:
        return self._domains

    def read(self) -> EnergyReading:
        """Joules per domain since open. Must be called at least once per wrap period."""
        if not self._counters:
            raise BackendError("rapl: read() was called before open() (or after close())")
        energy_j = {zone.domain: self._joules_since_open(zone) for zone in self._zones}
        return EnergyReading(t_s=self._clock(), energy_j=energy_j)

    def close(self) -> None:
        # No file stays open between reads, so closing only forgets the zero points.
        self._counters = {}
        self._zero_uj = {}

    # ---- DeviceFactsReporter ----------------------------------------------------------------
    def device_facts(self) -> dict[str, Any]:
        availability = self.probe()
        sockets = {zone.socket.split("-die-")[0] for zone in self._zones if zone.kind == "package"}
        return {
            "backend": self.name,
            "root": str(self.root),
            "available": availability.ok,
            "reason": availability.reason,
            "cpu_model": self._cpu_model(),
            "sockets": len(sockets),
            "zones": [
                {"domain": zone.domain, "path": str(zone.path), "kind": zone.kind}
                for zone in self._zones
            ],
        }

    # ---- probing ----------------------------------------------------------------------------
    def _probe_uncached(self) -> Availability:
        try:
            zones = _discover(self.root, self._read_text)
            for zone in zones:
                _read_uj_or_unusable(zone.energy_file, self._read_text)
        except _Unusable as unusable:
            return Availability(ok=False, reason=unusable.reason, fix=unusable.fix)
        self._zones = tuple(zones)
        names = ", ".join(zone.domain for zone in zones)
        return Availability(ok=True, reason=f"RAPL counters readable at {self.root}: {names}.")

    # ---- opening and reading ----------------------------------------------------------------
    def _max_range_uj(self, zone: _Zone) -> tuple[float, tuple[str, ...]]:
        try:
            value = _parse_uj(self._read_text(zone.max_range_file))
            if value > 0:
                return value, ()
        except (OSError, ValueError) as error:
            logger.debug("rapl: %s unreadable (%s)", zone.max_range_file, error)
        note = (f"{zone.max_range_file} missing or unreadable: the counter is assumed to wrap at "
                f"2**32 uJ ({FALLBACK_MAX_RANGE_UJ} uJ)")
        logger.warning("rapl: %s", note)
        return float(FALLBACK_MAX_RANGE_UJ), (note,)

    def _open_read_uj(self, zone: _Zone) -> float:
        # The probe read this file a moment ago; failing now (permissions changed, module
        # unloaded) still means the backend cannot be used, so say it the way open() promises.
        try:
            return _read_uj_or_unusable(zone.energy_file, self._read_text)
        except _Unusable as unusable:
            raise BackendUnavailable(unusable.reason + " Fix: " + unusable.fix) from None

    def _joules_since_open(self, zone: _Zone) -> float:
        path = zone.energy_file
        try:
            raw_uj = _parse_uj(self._read_text(path))
        except OSError as error:
            raise BackendError(f"rapl: cannot read {path}: {error.strerror or error}") from error
        except ValueError as error:
            raise BackendError(f"rapl: {path} does not hold an integer: {error}") from error
        cumulative_uj = self._counters[zone.domain].update(raw_uj)
        return microjoules_to_joules(cumulative_uj - self._zero_uj[zone.domain])

    def _domain_info(self, zone: _Zone, assumptions: tuple[str, ...]) -> DomainInfo:
        return DomainInfo(
            name=zone.domain,
            backend=self.name,
            provenance=Provenance.MEASURED,
            method="rapl-counter",
            device=zone.describe(),
            has_counter=True,
            resolution_s=RESOLUTION_S,
            assumptions=assumptions,
            max_power_w=MAX_PACKAGE_POWER_W if zone.kind == "package" else MAX_DRAM_POWER_W,
        )

    def _cpu_model(self) -> str | None:
        try:
            text = self._read_text(self.cpuinfo_path)
        except OSError as error:
            logger.debug("rapl: cannot read %s (%s)", self.cpuinfo_path, error)
            return None
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name":
                return value.strip()
        return None


# ---- discovery (module functions: they only need a root and a reader) ---------------------------
def _discover(root: Path, read_text: ReadText) -> list[_Zone]:
    """The zones to count under `root`, packages first, deduplicated by real path."""
    if not root.is_dir():
        raise _Unusable(
            f"no powercap tree at {root}: this kernel or VM exposes no RAPL counters.",
            _NO_TREE_FIX,
        )
    entries = _list_dir(root)
    top_level = _top_level_zones(root, entries, read_text)
    seen: set[str] = set()
    packages = _find_packages(top_level, seen)
    if not packages:
        raise _Unusable(
            f"no RAPL package zone under {root} (found: {', '.join(entries) or 'nothing'}).",
            _NO_TREE_FIX,
        )
    drams = _find_subzone_drams(root, entries, packages, read_text, seen)
    drams += _find_top_level_drams(top_level, seen, {zone.domain for zone in drams})
    return [*packages, *drams]


@dataclass(frozen=True)
class _TopLevelZone:
    path: Path
    index: int
    name: str  # the zone's `name` file: "package-0", "psys", "dram"...


def _top_level_zones(root: Path, entries: list[str], read_text: ReadText) -> list[_TopLevelZone]:
    """Top-level `*-rapl:N` zones (not mmio copies), in zone-index order, with their names."""
    zones = []
    for entry in entries:
        match = _TOP_ZONE.match(entry)
        if match and "mmio" not in match["prefix"] and (root / entry).is_dir():
            zones.append(_TopLevelZone(root / entry, int(match["index"]),
                                       _zone_name(root / entry, read_text)))
    return sorted(zones, key=lambda zone: (zone.index, zone.path.name))


def _find_packages(top_level: list[_TopLevelZone], seen: set[str]) -> list[_Zone]:
    packages: list[_Zone] = []
    taken: set[str] = set()
    for zone in top_level:
        if not zone.name.startswith("package"):
            continue  # psys covers the whole platform; dram is collected below
        socket = _package_socket(zone.name, zone.index)
        domain = f"rapl:package-{socket}"
        real = os.path.realpath(zone.path)
        if real in seen:
            continue
        if domain in taken:
            # Two drivers (intel-rapl and amd-rapl) naming the same package: count it once.
            logger.warning("rapl: %s duplicates %s; ignored", zone.path, domain)
            continue
        seen.add(real)
        taken.add(domain)
        packages.append(_Zone(domain=domain, kind="package", socket=socket, path=zone.path))
    return packages


def _find_subzone_drams(root: Path, entries: list[str], packages: list[_Zone],
                        read_text: ReadText, seen: set[str]) -> list[_Zone]:
    """DRAM subzones of counted packages, both inside the package and as top-level aliases."""
    drams: list[_Zone] = []
    for package in packages:
        candidates = [package.path / child for child in _list_dir(package.path)
                      if _SUB_ZONE.match(child)]
        # A top-level alias "intel-rapl:0:2" belongs to the package "intel-rapl:0"; on a real
        # kernel it resolves to the same directory as the subzone and is dropped as a duplicate.
        candidates += [root / entry for entry in entries
                       if (match := _SUB_ZONE.match(entry))
                       and f"{match['prefix']}:{match['index']}" == package.path.name]
        for path in candidates:
            real = os.path.realpath(path)
            if real in seen or not path.is_dir() or _zone_name(path, read_text) != "dram":
                continue
            seen.add(real)
            drams.append(_Zone(domain=f"rapl:dram-{package.socket}", kind="dram",
                               socket=package.socket, path=path))
    return drams


def _find_top_level_drams(top_level: list[_TopLevelZone], seen: set[str],
                          taken: set[str]) -> list[_Zone]:
    """DRAM as a zone of its own (some platforms): labelled by its own zone index."""
    drams: list[_Zone] = []
    for zone in top_level:
        real = os.path.realpath(zone.path)
        if real in seen or zone.name != "dram":
            continue
        socket = str(zone.index)
        if f"rapl:dram-{socket}" in taken:
            socket = zone.path.name  # a distinct counter whose index clashes: keep it, by zone id
        seen.add(real)
        taken.add(f"rapl:dram-{socket}")
        drams.append(_Zone(domain=f"rapl:dram-{socket}", kind="dram", socket=socket,
                           path=zone.path))
    return drams


def _package_socket(name: str, index: int) -> str:
    """The socket label from a package zone's name: `package-1` gives 1, `package-0-die-1`
    gives 0-die-1, and a bare `package` gives the zone index.

    The kernel's name carries its package id, which is what a user calls the socket; the zone
    index is only the registration order and is used when the name carries no id.
    """
    suffix = name.removeprefix("package").lstrip("-")
    return suffix or str(index)


def _zone_name(path: Path, read_text: ReadText) -> str:
    try:
        return read_text(path / "name").strip()
    except OSError as error:
        raise _Unusable(
            f"cannot read {path / 'name'}: {error.strerror or error}.", _BROKEN_TREE_FIX
        ) from error


def _list_dir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError as error:
        raise _Unusable(f"cannot list {path}: {error.strerror or error}.",
                        _BROKEN_TREE_FIX) from error


def _read_uj_or_unusable(path: Path, read_text: ReadText) -> float:
    """One counter value in uJ; any failure becomes a reason and a fix naming the file."""
    try:
        return _parse_uj(read_text(path))
    except PermissionError as error:
        raise _Unusable(
            f"cannot read {path}: energy_uj is readable by root only "
            "(since Linux 5.10 and its stable backports, CVE-2020-8694).",
            _PERMISSION_FIX,
        ) from error
    except OSError as error:
        raise _Unusable(f"cannot read {path}: {error.strerror or error}.",
                        _BROKEN_TREE_FIX) from error
    except ValueError as error:
        raise _Unusable(f"{path} does not hold an integer ({error}).", _BROKEN_TREE_FIX) from error


def _parse_uj(text: str) -> float:
    # float(int(...)): the counters are integers; a float keeps every value up to 2**53 exact.
    return float(int(text.strip()))
