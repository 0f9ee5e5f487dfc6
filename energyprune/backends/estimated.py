"""The labelled fallback: CPU and memory energy from utilisation and a power model, not a counter.

Used where no counter is readable (RAPL is root-only on most distributions and absent in most
VMs). Every domain it reports is ``Provenance.ESTIMATED`` and carries its relative model
uncertainty and the assumptions behind it, so a report can print how the figure was obtained.

CPU model (domain ``estimated:cpu``): P = P_idle + (P_max - P_idle) * u, where u is the utilisation
between two reads, Δbusy / (Δwall * logical CPUs), and P_max is the power share of the CPUs this
machine sees: package TDP * visible logical CPUs / logical CPUs per package. On a VM with 2 vCPUs
of a 128-thread EPYC that is 2/128 of the TDP, not all of it. P_idle = 0.3 * P_max.

Where the TDP comes from, and the band that goes with it (`energyprune.backends.cpu_database`):
`--cpu-tdp-w` (±25%); else codecarbon's CPU power database when codecarbon is installed, matched
as codecarbon matches it, else energyprune's table of 26 CPUs (±35% either way); else 10 W per
logical CPU (±60%). The logical CPUs of one package: /proc/cpuinfo's `siblings` on a machine
without a hypervisor, else the table, else twice the "N-Core" in the model name (SMT assumed);
where none of them says (a VM of an Intel part the table lacks) no share can be taken and the
10 W default applies. codecarbon's own fallback (4 W per thread, power growing with the cube of
the load) is not used: the linear model above is ours, and so is its band.

Whose busy time: by default (`charge="process"`) only this process's own CPU time (psutil's
per-process user + system time, its threads and waited-for children included), so the work of
other processes is not charged to the model, and two runs side by side do not each claim the whole
machine; the idle power, what the visible CPUs draw anyway, is in every run's total as it would be
on a hardware counter. The machine's busy time is still read, and when other processes kept more
than `OTHER_LOAD_WARNING` of the CPUs busy during the run, the result says so: they slow the model
down and change what its joules mean. `charge="system"` charges all processes (the behaviour
before 0.2).

Memory model (domain ``estimated:ram``): 0.375 W per GiB installed, constant.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from energyprune.backends.base import Availability
from energyprune.backends.cpu_database import TDP_TABLE, CpuPowerDatabase, CpuTdp, TdpEntry, lookup_cpu_tdp, lookup_tdp
from energyprune.errors import BackendError, BackendUnavailable, UsageError
from energyprune.backends.base import DomainInfo, EnergyReading, Provenance

logger = logging.getLogger(__name__)

CPU_DOMAIN = "estimated:cpu"
RAM_DOMAIN = "estimated:ram"

#: Idle power as a fraction of the maximum; measured servers idle at roughly 0.2-0.5 of it.
IDLE_FRACTION = 0.3
#: Assumed full-load power per logical CPU when no TDP is known.
GENERIC_W_PER_LOGICAL_CPU = 10.0
#: DRAM power per GiB installed: 3 W per 8 GiB DDR4 DIMM.
RAM_W_PER_GIB = 0.375

#: Relative model uncertainty of the CPU estimate, by where the TDP came from.
UNCERTAINTY_USER_TDP = 0.25
UNCERTAINTY_TABLE_TDP = 0.35
UNCERTAINTY_GENERIC_TDP = 0.6
#: Relative model uncertainty of the memory estimate.
UNCERTAINTY_RAM = 0.5
#: Share of the visible CPUs' capacity that other processes may use during a run before the
#: result warns that the machine was shared.
OTHER_LOAD_WARNING = 0.10
#: The largest --cpu-tdp-w taken seriously: a few kilowatts is a large multi-socket server already.
MAX_CPU_TDP_W = 100_000.0
CHARGES = ("process", "system")
#: Which TDP the CPU estimate used, in words, by band case (`PowerModel.band_case`).
BAND_CASES = {
    "user": "the TDP given with --cpu-tdp-w",
    "database": "a TDP from codecarbon's CPU power database",
    "table": "a TDP from energyprune's table",
    "default": "the 10 W-per-logical-CPU default",
}

_GIB = 1024**3
__all__ = ["TDP_TABLE", "TdpEntry", "lookup_tdp", "CpuTdp", "CpuPowerDatabase", "EstimatedBackend", "PowerModel",
           "build_power_model", "read_cpu_model", "read_cpu_topology", "CpuTopology"]


def read_cpu_model(cpuinfo_path: str | os.PathLike[str]) -> str:
    """The first `model name` in a /proc/cpuinfo-style file; "unknown CPU" when there is none."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError as e:
        logger.debug("cannot read %s: %s", cpuinfo_path, e)
    return "unknown CPU"


@dataclass(frozen=True)
class CpuTopology:
    """What /proc/cpuinfo says about packages: logical CPUs per package (`siblings`) and whether a
    hypervisor is there (the `hypervisor` flag), in which case `siblings` describes the virtual
    socket, not the physical package whose TDP the database gives."""

    siblings: int | None = None
    virtual: bool = False


def read_cpu_topology(cpuinfo_path: str | os.PathLike[str]) -> CpuTopology:
    siblings: int | None = None
    virtual = False
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                key = key.strip()
                if sep and key == "siblings" and siblings is None and value.strip().isdigit():
                    siblings = int(value.strip()) or None
                elif sep and key == "flags" and "hypervisor" in value.split():
                    virtual = True
    except OSError as e:
        logger.debug("cannot read %s: %s", cpuinfo_path, e)
    return CpuTopology(siblings, virtual)


def threads_per_package(cpu_model: str, tdp: CpuTdp, topology: CpuTopology) -> tuple[int, str] | None:
    """Logical CPUs of one package and where that figure comes from, or None when unknown."""
    if topology.siblings and not topology.virtual:
        return topology.siblings, "/proc/cpuinfo's siblings, on a machine without a hypervisor"
    if tdp.threads_per_package:
        return tdp.threads_per_package, "energyprune's table of vendor specification sheets"
    cores = re.search(r"(\d+)-Core\b", cpu_model)
    if cores and int(cores.group(1)) > 0:
        return 2 * int(cores.group(1)), f"twice the {cores.group(1)} cores its name gives (two threads per core assumed)"
    return None




def _psutil_cpu_times() -> tuple[float, float]:
    """(busy_s, total_s) summed over all CPUs since boot, from psutil."""
    import psutil

    t = psutil.cpu_times()
    total = float(sum(t))
    # On Linux guest time is already counted in user (and guest_nice in nice): do not count twice,
    # as psutil's own cpu_percent() does not.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    busy = total - t.idle - getattr(t, "iowait", 0.0)
    return busy, total


def _psutil_process_cpu_s() -> float:
    """This process's CPU time (user + system, children waited for included), in seconds."""
    import psutil

    t = psutil.Process().cpu_times()
    return float(t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0))


def _psutil_logical_cpus() -> int:
    import psutil

    count = psutil.cpu_count(logical=True)
    if not count:
        raise BackendError("psutil could not count the logical CPUs: pass logical_cpus explicitly")
    return int(count)


def _psutil_memory_total_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


@dataclass(frozen=True)
class PowerModel:
    """The resolved model: what the estimate assumes about this machine."""

    cpu_model: str
    logical_cpus: int
    memory_total_bytes: int
    max_w: float  # full-load power of the visible CPUs
    idle_w: float
    tdp_w: float  # the TDP used: a package's TDP (database or table), or the user's / generic figure
    tdp_source: str
    cpu_uncertainty: float
    cpu_assumptions: tuple[str, ...]
    ram_w: float
    ram_assumptions: tuple[str, ...]
    band_case: str = "default"  # which TDP the band is for: a key of BAND_CASES
    tdp_matched_name: str | None = None  # the database or table name the model name matched

    def cpu_power_w(self, utilisation: float) -> float:
        return self.idle_w + (self.max_w - self.idle_w) * utilisation

    @property
    def band_text(self) -> str:
        """The band and the case it is for, e.g. "±35%: a TDP from codecarbon's CPU power database
        (AMD EPYC 7763, 280 W)"."""
        match = f" ({self.tdp_matched_name}, {_w(self.tdp_w)} W)" if self.tdp_matched_name else ""
        return f"±{self.cpu_uncertainty:.0%}: {BAND_CASES[self.band_case]}{match}"


def _w(value: float) -> str:
    return f"{value:.3g}"


def build_power_model(
    cpu_model: str, logical_cpus: int, memory_total_bytes: int, cpu_tdp_w: float | None,
    charge: str = "process", cpu_database: CpuPowerDatabase | str | None = "auto",
    topology: CpuTopology | None = None,
) -> PowerModel:
    """The power model for a machine; `cpu_tdp_w` is the power of the CPUs this process sees.
    `cpu_database`: "auto" (codecarbon's when installed), a `CpuPowerDatabase`, or None (the
    table only). `topology`: what /proc/cpuinfo says about packages (none known by default)."""
    n = logical_cpus
    cpus = f"{n} logical CPU{'s' if n != 1 else ''}"
    topology = topology or CpuTopology()
    found = lookup_cpu_tdp(cpu_model, cpu_database) if cpu_tdp_w is None else None
    share = threads_per_package(cpu_model, found, topology) if found is not None else None
    matched: str | None = None
    if cpu_tdp_w is not None:
        max_w, tdp_w, uncertainty, case = float(cpu_tdp_w), float(cpu_tdp_w), UNCERTAINTY_USER_TDP, "user"
        source = "given by the user (--cpu-tdp-w)"
        tdp_sentences = (
            f"The {cpus} this process sees were taken to draw {_w(max_w)} W at full load, as "
            f"given by the user (--cpu-tdp-w); that figure is used as it is, with no share taken.",
        )
    elif found is not None and share is not None:
        threads, threads_source = share
        tdp_w, uncertainty = found.tdp_w, UNCERTAINTY_TABLE_TDP
        case = "database" if found.from_database else "table"
        max_w = found.tdp_w * n / threads
        source, matched = found.source, found.matched_name
        how = (f"matched to \"{found.matched_name}\" in {found.source}" if found.from_database
               else f"from {found.source}")
        tdp_sentences = (
            f"The TDP of one {cpu_model} package was taken as {_w(found.tdp_w)} W ({how}); sustained "
            f"power under boost can exceed the TDP.",
            f"One package has {threads} logical CPUs ({threads_source}); this machine sees {cpus}, so it is "
            f"charged {n}/{threads} of that TDP: {_w(max_w)} W at full load.",
        )
    else:
        max_w = GENERIC_W_PER_LOGICAL_CPU * n
        tdp_w, uncertainty, case = max_w, UNCERTAINTY_GENERIC_TDP, "default"
        source = f"generic default of {_w(GENERIC_W_PER_LOGICAL_CPU)} W per logical CPU"
        if found is not None:
            why = (f"{found.source} gives {_w(found.tdp_w)} W for one package (\"{found.matched_name}\"), but how "
                   f"many logical CPUs one package has is not known on this virtual machine, so its share "
                   f"cannot be taken; ")
        else:
            searched = ("codecarbon's CPU power database nor energyprune's table" if cpu_database is not None
                        else "energyprune's table")
            why = f"No TDP is known for {cpu_model} (neither {searched} has it); "
        tdp_sentences = (
            f"{why}{_w(GENERIC_W_PER_LOGICAL_CPU)} W per logical CPU was assumed, so {_w(max_w)} W at full "
            f"load for the {cpus} visible (pass --cpu-tdp-w to give the real figure).",
        )
    idle_w = IDLE_FRACTION * max_w
    cpu_assumptions = (
        *tdp_sentences,
        f"Idle power was taken as {IDLE_FRACTION:g} of the full-load power ({_w(idle_w)} W); "
        f"servers measured in the literature idle at roughly 0.2 to 0.5 of their maximum.",
        ("Power was taken to rise linearly from idle to full load with the CPU utilisation of "
         "this process alone (its own busy time from psutil over wall time times logical CPUs): "
         "other processes' work is not charged to it. Clock boost and memory stalls are not "
         "modelled." if charge == "process" else
         "Power was taken to rise linearly from idle to full load with the system-wide CPU "
         "utilisation (busy time from psutil over wall time times logical CPUs), so the work of "
         "other processes is charged too, and clock boost and memory stalls are not modelled."),
        f"The CPU estimate is taken to be uncertain by ±{uncertainty:.0%} (relative, "
        f"systematic; the band for {BAND_CASES[case]}: ±{UNCERTAINTY_USER_TDP:.0%} with --cpu-tdp-w, "
        f"±{UNCERTAINTY_TABLE_TDP:.0%} with a database or table TDP, ±{UNCERTAINTY_GENERIC_TDP:.0%} with the "
        f"default); it is a model, not a measurement.",
    )
    gib = memory_total_bytes / _GIB
    ram_w = RAM_W_PER_GIB * gib
    ram_assumptions = (
        f"Memory was taken to draw {RAM_W_PER_GIB:g} W per GiB installed (3 W per 8 GiB DDR4 "
        f"DIMM, the usual figure): {_w(ram_w)} W for {gib:.1f} GiB.",
        "Memory power was taken as constant: DRAM background and refresh power barely depends on "
        "use under this model, so the energy above idle it attributes to memory is about zero.",
        f"The memory estimate is taken to be uncertain by ±{UNCERTAINTY_RAM:.0%} (relative, "
        f"systematic); it is a model, not a measurement.",
    )
    return PowerModel(
        cpu_model=cpu_model,
        logical_cpus=n,
        memory_total_bytes=memory_total_bytes,
        max_w=max_w,
        idle_w=idle_w,
        tdp_w=tdp_w,
        tdp_source=source,
        cpu_uncertainty=uncertainty,
        cpu_assumptions=cpu_assumptions,
        ram_w=ram_w,
        ram_assumptions=ram_assumptions,
        band_case=case,
        tdp_matched_name=matched,
    )


class EstimatedBackend:
    """CPU and memory energy from psutil utilisation and a power model; always ESTIMATED.

    Every input is injectable so that tests are deterministic: `cpu_times` returns
    (busy_s, total_s) summed over all CPUs, `clock` is the wall clock the utilisation is taken
    over. `cpu_tdp_w` is the full-load power of the CPUs this process sees (already the share).
    `cpu_database` is where a TDP is looked up: "auto" (codecarbon's CPU power database when
    codecarbon is installed, then energyprune's table), a `CpuPowerDatabase`, or None (the table).
    """

    name = "estimated"
    provenance = Provenance.ESTIMATED

    def __init__(
        self,
        cpu_tdp_w: float | None = None,
        cpu_times: Callable[[], tuple[float, float]] | None = None,
        cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo",
        logical_cpus: int | None = None,
        memory_total_bytes: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        charge: str = "process",
        process_cpu_s: Callable[[], float] | None = None,
        cpu_database: CpuPowerDatabase | str | None = "auto",
    ) -> None:
        if charge not in CHARGES:
            raise UsageError(f"charge must be one of {', '.join(CHARGES)}, not {charge!r}")
        if cpu_tdp_w is not None:
            if isinstance(cpu_tdp_w, bool) or not isinstance(cpu_tdp_w, (int, float)) or not (
                math.isfinite(cpu_tdp_w) and 0 < cpu_tdp_w <= MAX_CPU_TDP_W
            ):
                raise UsageError(
                    f"--cpu-tdp-w must be a number of watts above 0 and at most {MAX_CPU_TDP_W:g} (the "
                    f"full-load power of the CPUs this process sees), not {cpu_tdp_w!r}"
                )
        if logical_cpus is not None and logical_cpus < 1:
            raise UsageError(f"logical_cpus must be at least 1, not {logical_cpus!r}")
        if memory_total_bytes is not None and memory_total_bytes < 0:
            raise UsageError(f"memory_total_bytes cannot be negative ({memory_total_bytes!r})")
        self._cpu_tdp_w = cpu_tdp_w
        self._cpu_times = cpu_times if cpu_times is not None else _psutil_cpu_times
        self._charge = charge
        self._process_cpu_s = process_cpu_s if process_cpu_s is not None else _psutil_process_cpu_s
        self._cpuinfo_path = cpuinfo_path
        self._logical_cpus = logical_cpus
        self._memory_total_bytes = memory_total_bytes
        self._clock = clock
        self._cpu_database = cpu_database
        self._availability: Availability | None = None
        self._model: PowerModel | None = None
        self._open = False
        # read() and power_w() keep separate state so that a sampler thread calling power_w()
        # never shortens the intervals read() integrates over.
        self._read_t = 0.0
        self._read_busy = 0.0
        self._cpu_j = 0.0
        self._ram_j = 0.0
        self._power_t = 0.0
        self._power_busy = 0.0
        self._last_cpu_w = 0.0
        # Since open: this process's and the machine's busy seconds, and the wall time.
        self._open_t = 0.0
        self._open_own = 0.0
        self._open_system = 0.0
        self._last_t = 0.0
        self._last_own = 0.0
        self._last_system = 0.0

    # ---- probing ----------------------------------------------------------------------------
    def probe(self) -> Availability:
        if self._availability is None:
            self._availability = self._probe()
            logger.debug("estimated backend: %s", self._availability.reason)
        return self._availability

    def _probe(self) -> Availability:
        try:
            self._cpu_times()
            if self._charge == "process":
                self._process_cpu_s()
            self.power_model()
        except ImportError:
            return Availability(
                False, "psutil is not installed, so CPU utilisation cannot be read",
                fix="pip install psutil",
            )
        except Exception as e:  # psutil.Error, OSError: report, never raise for absent hardware
            return Availability(
                False, f"psutil could not read CPU times or memory size: {e}",
                fix="check that /proc is mounted and readable, or pass cpu_times, logical_cpus "
                    "and memory_total_bytes explicitly",
            )
        return Availability(True, "estimated from CPU utilisation and a power model; not a "
                                  "measurement")

    def power_model(self) -> PowerModel:
        """The resolved power model (the cpuinfo file and psutil are read once, then cached)."""
        if self._model is None:
            n = self._logical_cpus if self._logical_cpus is not None else _psutil_logical_cpus()
            mem = (self._memory_total_bytes if self._memory_total_bytes is not None
                   else _psutil_memory_total_bytes())
            self._model = build_power_model(
                read_cpu_model(self._cpuinfo_path), n, mem, self._cpu_tdp_w, self._charge,
                cpu_database=self._cpu_database, topology=read_cpu_topology(self._cpuinfo_path),
            )
        return self._model

    # ---- the backend protocol ---------------------------------------------------------------
    def open(self) -> None:
        availability = self.probe()
        if not availability.ok:
            fix = f": {availability.fix}" if availability.fix else ""
            raise BackendUnavailable(f"estimated backend: {availability.reason}{fix}")
        busy = self._own_busy_s()
        now = self._clock()
        self._read_t = self._power_t = now
        self._read_busy = self._power_busy = busy
        self._open_t = self._last_t = now
        self._open_system = self._last_system = self._cpu_times()[0]
        self._open_own = self._last_own = self._own_busy_s()
        self._cpu_j = self._ram_j = 0.0
        self._last_cpu_w = self.power_model().idle_w
        self._open = True

    def domains(self) -> Sequence[DomainInfo]:
        m = self.power_model()
        cpus = f"{m.logical_cpus} logical CPU{'s' if m.logical_cpus != 1 else ''} visible"
        return (
            DomainInfo(
                name=CPU_DOMAIN,
                backend=self.name,
                provenance=Provenance.ESTIMATED,
                method="utilisation-model",
                device=f"{m.cpu_model} ({cpus}), estimated",
                has_counter=True,
                resolution_s=0.0,
                model_relative_uncertainty=m.cpu_uncertainty,
                assumptions=m.cpu_assumptions,
                max_power_w=2.0 * m.max_w,  # the model never exceeds max_w: twice it is a fault
            ),
            DomainInfo(
                name=RAM_DOMAIN,
                backend=self.name,
                provenance=Provenance.ESTIMATED,
                method="utilisation-model",
                device=f"{m.memory_total_bytes / _GIB:.1f} GiB RAM, estimated",
                has_counter=True,
                resolution_s=0.0,
                model_relative_uncertainty=UNCERTAINTY_RAM,
                assumptions=m.ram_assumptions,
                max_power_w=2.0 * m.ram_w,
            ),
        )

    def read(self) -> EnergyReading:
        """Joules since open: the power model integrated over the intervals between reads."""
        self._require_open()
        m = self.power_model()
        busy = self._own_busy_s()
        now = self._clock()
        self._last_t, self._last_system, self._last_own = now, self._cpu_times()[0], self._own_busy_s()
        dt = now - self._read_t
        if dt > 0:
            u = self._utilisation(busy - self._read_busy, dt)
            self._cpu_j += m.cpu_power_w(u) * dt
            self._ram_j += m.ram_w * dt
            self._read_t, self._read_busy = now, busy
        return EnergyReading(t_s=now, energy_j={CPU_DOMAIN: self._cpu_j, RAM_DOMAIN: self._ram_j})

    def power_w(self) -> Mapping[str, float]:
        """Model power for the utilisation since the previous power_w() call (or open)."""
        self._require_open()
        m = self.power_model()
        busy = self._own_busy_s()
        now = self._clock()
        dt = now - self._power_t
        if dt > 0:
            u = self._utilisation(busy - self._power_busy, dt)
            self._last_cpu_w = m.cpu_power_w(u)
            self._power_t, self._power_busy = now, busy
        return {CPU_DOMAIN: self._last_cpu_w, RAM_DOMAIN: m.ram_w}

    def close(self) -> None:
        self._open = False

    def device_facts(self) -> Mapping[str, Any]:
        m = self.power_model()
        return {
            "cpu_model": m.cpu_model,
            "logical_cpus": m.logical_cpus,
            "memory_total_bytes": m.memory_total_bytes,
            "cpu_tdp_w": m.tdp_w,
            "cpu_tdp_source": m.tdp_source,
            "cpu_tdp_matched_name": m.tdp_matched_name,
            "cpu_band": m.band_text,
            "cpu_max_power_w": m.max_w,
            "cpu_idle_power_w": m.idle_w,
            "ram_power_w": m.ram_w,
            "cpu_charged": ("this process's own CPU time" if self._charge == "process"
                            else "every process's CPU time (system-wide)"),
        }

    def run_notes(self) -> Sequence[str]:
        """What a result should say about the run so far: whether other processes shared the CPUs."""
        if not self._open or self._last_t <= self._open_t:
            return ()
        wall_s = self._last_t - self._open_t
        capacity_s = wall_s * self.power_model().logical_cpus
        others_s = (self._last_system - self._open_system) - (self._last_own - self._open_own)
        share = max(0.0, others_s) / capacity_s if capacity_s > 0 else 0.0
        if share <= OTHER_LOAD_WARNING:
            return ()
        charged = ("the estimate charges this process's CPU time only" if self._charge == "process"
                   else "the estimate charged their work to this run too (charge='system')")
        return (f"other processes kept {share * 100:.0f}% of the CPUs busy during the measurement (more than "
                f"{OTHER_LOAD_WARNING * 100:.0f}%): they slow the model down and its figures vary; {charged}",)

    # ---- helpers ----------------------------------------------------------------------------
    def _own_busy_s(self) -> float:
        """Busy seconds of what is charged: this process, or every process."""
        return self._process_cpu_s() if self._charge == "process" else self._cpu_times()[0]

    def _utilisation(self, d_busy_s: float, d_wall_s: float) -> float:
        # Busy time is counted in scheduler ticks (10 ms), so a short interval can come out a
        # little above 1 or below 0: clamp.
        u = d_busy_s / (d_wall_s * self.power_model().logical_cpus)
        return min(1.0, max(0.0, u))

    def _require_open(self) -> None:
        if not self._open:
            raise BackendError("the estimated backend was read before open() (or after close())")
