"""NVIDIA GPUs through NVML: the board's total-energy counter, its instantaneous power sensor.

What the lent H100 taught us (see the project's hardware notes) shapes everything here:

* `nvmlDeviceGetTotalEnergyConsumption` (mJ, Volta and newer) is the reference, but its value only
  changes every ~100 ms and one read costs ~3 ms, so it is read at window edges only and each
  domain carries `resolution_s=0.1` so the meter can report one tick of uncertainty per edge.
* Field `NVML_FI_DEV_POWER_INSTANT` (186) answers in ~4 us and follows a load step within ~40 ms:
  it is what the meter's background sampler reads, and what it integrates on GPUs without a
  counter. `nvmlDeviceGetPowerUsage` is a ~1 s moving average and is only a last resort.
* CUDA numbers GPUs after `CUDA_VISIBLE_DEVICES`, NVML numbers them all: `cuda:0` may be NVML 3.
* MIG slices share the physical GPU's counter and sensors, so they cannot be metered apart.

Nothing is imported or initialised until `probe()`: `pynvml` imports without a driver, but we
never want the act of importing energyprune to touch the GPU.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from energyprune import units
from energyprune.backends.base import Availability
from energyprune.errors import BackendError, BackendUnavailable
from energyprune.backends.base import DeviceState, DomainInfo, EnergyReading, Provenance

logger = logging.getLogger(__name__)

#: How often the total-energy counter's value changes (measured 98-102 ms on an H100).
COUNTER_TICK_S = 0.1

#: Field ids, used only when the pynvml module at hand lacks the constant (older bindings).
_FI_DEV_POWER_INSTANT = 186

MIG_REASON = (
    "MIG slices cannot be metered: NVML's energy counter and power sensors are per physical "
    "GPU, shared by every slice"
)
MIG_FIX = "meter the whole GPU with MIG disabled, or use the estimated backend"

#: Where the board reports no power limit: no single GPU draws this much (an H200 is capped at 700 W).
MAX_GPU_POWER_W = 3000.0

#: Throttle (clock event) reasons that mean the workload ran slower than it asked to, because of a
#: power cap, heat or a hardware slowdown: energy per inference measured under them depends on the
#: card's state, so the meter warns. "gpu-idle" and the clock-setting reasons are not among them.
LIMITING_THROTTLE_REASONS: frozenset[str] = frozenset(
    {
        "sw-power-cap",
        "hw-slowdown",
        "sw-thermal",
        "hw-thermal",
        "hw-power-brake",
        "board-limit",
        "reliability",
    }
)

# (name in nvidia-ml-py >= 12.535, older name, bit in nvml.h, our name). The bits are read from
# the module when it has the constant, so a future renumbering in the bindings is followed.
_THROTTLE_REASONS: tuple[tuple[str, str, int, str], ...] = (
    ("nvmlClocksEventReasonGpuIdle", "nvmlClocksThrottleReasonGpuIdle", 0x1, "gpu-idle"),
    ("nvmlClocksEventReasonApplicationsClocksSetting",
     "nvmlClocksThrottleReasonApplicationsClocksSetting", 0x2, "applications-clocks"),
    ("nvmlClocksEventReasonSwPowerCap", "nvmlClocksThrottleReasonSwPowerCap", 0x4, "sw-power-cap"),
    ("nvmlClocksEventReasonHwSlowdown", "nvmlClocksThrottleReasonHwSlowdown", 0x8, "hw-slowdown"),
    ("nvmlClocksEventReasonSyncBoost", "nvmlClocksThrottleReasonSyncBoost", 0x10, "sync-boost"),
    ("nvmlClocksEventReasonSwThermalSlowdown", "nvmlClocksThrottleReasonSwThermalSlowdown", 0x20,
     "sw-thermal"),
    ("nvmlClocksEventReasonHwThermalSlowdown", "nvmlClocksThrottleReasonHwThermalSlowdown", 0x40,
     "hw-thermal"),
    ("nvmlClocksEventReasonHwPowerBrakeSlowdown", "nvmlClocksThrottleReasonHwPowerBrakeSlowdown",
     0x80, "hw-power-brake"),
    ("nvmlClocksEventReasonDisplayClockSetting", "nvmlClocksThrottleReasonDisplayClockSetting",
     0x100, "display-clocks"),
    ("nvmlClocksThrottleReasonBoardLimit", "nvmlClocksThrottleReasonBoardLimit", 0x200,
     "board-limit"),
    ("nvmlClocksThrottleReasonReliability", "nvmlClocksThrottleReasonReliability", 0x400,
     "reliability"),
)

# nvmlValueType_t -> member of the c_nvmlValue_t union (numbers as in nvml.h).
_VALUE_TYPE_MEMBERS: tuple[tuple[str, int, str], ...] = (
    ("NVML_VALUE_TYPE_DOUBLE", 0, "dVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_INT", 1, "uiVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG", 2, "ulVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", 3, "ullVal"),
    ("NVML_VALUE_TYPE_SIGNED_LONG_LONG", 4, "sllVal"),
    ("NVML_VALUE_TYPE_SIGNED_INT", 5, "siVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_SHORT", 6, "usVal"),
)

NvmlLoader = Callable[[], ModuleType]


def decode_throttle_reasons(mask: int, nvml: ModuleType | None = None) -> tuple[str, ...]:
    """Names of the bits set in a clocks-event (throttle) reasons mask, lowest bit first.

    Bits this table does not know come out as "unknown-0x...", so a new reason is seen, not lost.
    """
    names: list[str] = []
    known = 0
    for new_attr, old_attr, default_bit, name in _THROTTLE_REASONS:
        bit = getattr(nvml, new_attr, None) if nvml is not None else None
        if bit is None and nvml is not None:
            bit = getattr(nvml, old_attr, None)
        if not isinstance(bit, int) or bit <= 0:
            bit = default_bit
        known |= bit
        if mask & bit:
            names.append(name)
    rest = mask & ~known
    bit = 1
    while rest:
        if rest & bit:
            names.append(f"unknown-{bit:#x}")
            rest &= ~bit
        bit <<= 1
    return tuple(names)


# ---- CUDA_VISIBLE_DEVICES ------------------------------------------------------------------


class _Unavailable(Exception):
    """Internal: a probe step found the backend unusable (caught in probe, never escapes)."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


def _strtoul(entry: str) -> int:
    """The leading integer of an entry as CUDA's strtoul-like parser reads it; -1 when none."""
    digits = 0
    for i, char in enumerate(entry):
        if char.isdigit() or (i == 0 and char in "+-"):
            digits = i + 1
        else:
            break
    try:
        return int(entry[:digits]) if digits else -1
    except ValueError:  # a lone sign
        return -1


def parse_cuda_visible_devices(value: str | None) -> list[int | str] | None:
    """Parse CUDA_VISIBLE_DEVICES the way the CUDA runtime does (and torch mirrors).

    None: the variable is unset, every GPU is visible in NVML's order. Otherwise a list of NVML
    ordinals (int) and "GPU-..." UUID prefixes (str), which `_resolve_visible` maps to NVML
    indices. As in CUDA, an entry that is not a device ("-1", "NoDevFiles", "") ends the list, so
    "" hides every GPU and "0,2,-1,1" shows 0 and 2. Raises _Unavailable for a "MIG-" entry.
    """
    if value is None:
        return None
    entries: list[int | str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.startswith("MIG-"):
            raise _Unavailable(
                f"{MIG_REASON} (CUDA_VISIBLE_DEVICES={value!r} selects a MIG slice)", MIG_FIX
            )
        if entry.startswith("GPU-"):
            entries.append(entry)
            continue
        ordinal = _strtoul(entry)
        if ordinal < 0:
            break
        entries.append(ordinal)
    return entries


def _resolve_visible(
    entries: list[int | str], count: int, uuids: Callable[[], list[str]]
) -> list[int]:
    """NVML indices of the GPUs CUDA sees, in CUDA's order, following CUDA's rules: an ordinal out
    of range or a UUID prefix matching no GPU (or several) ends the list; a repeat hides all."""
    visible: list[int] = []
    known_uuids: list[str] | None = None
    for entry in entries:
        if isinstance(entry, int):
            index = entry if entry < count else -1
        else:
            if known_uuids is None:
                known_uuids = uuids()
            matches = [i for i, u in enumerate(known_uuids) if u.startswith(entry)]
            index = matches[0] if len(matches) == 1 else -1
        if index < 0:
            logger.info("CUDA_VISIBLE_DEVICES entry %r matches no single GPU: CUDA ignores it "
                        "and every entry after it", entry)
            break
        if index in visible:
            logger.info("CUDA_VISIBLE_DEVICES repeats GPU %s: CUDA then shows no GPU", entry)
            return []
        visible.append(index)
    return visible


@dataclass(frozen=True)
class _Selected:
    nvml_index: int
    cuda_index: int


@dataclass
class _Gpu:
    """One opened GPU: its handle and how each quantity is read from it."""

    selected: _Selected
    handle: Any
    domain: str
    name: str
    counter_base_mj: int | None  # counter value at open; None when the counter is unsupported
    last_raw_mj: int | None
    power_source: str | None  # "instant-field", "average", or None when neither answers
    info: DomainInfo | None = None


# ---- the backend ---------------------------------------------------------------------------


class NvmlBackend:
    """Joules of NVIDIA GPUs from NVML, one domain ("gpu:<NVML index>") per GPU the model uses.

    `cuda_devices` are the framework (torch) CUDA indices of the GPUs to meter, None for every GPU
    CUDA can see; they are mapped to NVML indices through `CUDA_VISIBLE_DEVICES` read from
    `environ` (so set that variable before probing, as before CUDA initialises). `nvml` injects the
    bindings (a module, or a callable returning one, which may raise ImportError); by default
    `pynvml` is imported inside `probe()`. `clock` is the time base of readings (the meter's).
    """

    name = "nvml"
    provenance = Provenance.MEASURED

    def __init__(
        self,
        cuda_devices: Sequence[int] | None = None,
        nvml: ModuleType | NvmlLoader | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        # Deduplicated: metering one GPU twice would count its energy twice.
        self._cuda_devices = (
            None if cuda_devices is None else list(dict.fromkeys(int(i) for i in cuda_devices))
        )
        self._nvml_source = nvml
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._clock = clock
        self._nvml: Any = None
        self._availability: Availability | None = None
        self._selection: list[_Selected] = []
        self._initialised = False
        self._gpus: list[_Gpu] = []
        self._counter_gpus: list[_Gpu] = []
        self._power_readers: list[tuple[str, Callable[[], float]]] = []
        self._facts: dict[str, Any] = {}
        self._throttle_fn: str | None = None
        self._mixed_order = False

    # ---- probe --------------------------------------------------------------------------------
    def probe(self) -> Availability:
        if self._availability is None:
            self._availability = self._probe()
            if self._availability.ok:
                logger.debug("nvml: %s", self._availability.reason)
            else:
                logger.info("nvml backend unavailable: %s", self._availability.reason)
        return self._availability

    def _load_module(self) -> Any:
        source = self._nvml_source
        if source is None:
            return importlib.import_module("pynvml")
        if isinstance(source, ModuleType) or hasattr(source, "nvmlInit"):
            return source
        return source()

    def _probe(self) -> Availability:
        try:
            nvml = self._load_module()
        except ImportError as err:
            logger.debug("import pynvml failed: %s", err)
            return Availability(False, "nvidia-ml-py is not installed", "pip install nvidia-ml-py")
        self._nvml = nvml
        nvml_error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except nvml_error as err:
            return Availability(
                False,
                f"NVML could not initialise: {err} (no NVIDIA driver?)",
                "install the NVIDIA driver and check that `nvidia-smi` works, "
                "or use the estimated backend",
            )
        try:
            self._selection = self._select(nvml)
            names = ", ".join(f"cuda:{s.cuda_index} = NVML {s.nvml_index}"
                              for s in self._selection)
            return Availability(True, f"NVML sees the GPUs to meter ({names})")
        except _Unavailable as problem:
            return Availability(False, problem.reason, problem.fix)
        except nvml_error as err:
            return Availability(False, f"NVML failed while probing the GPUs: {err}",
                                "check `nvidia-smi`, or use the estimated backend")
        except Exception as err:  # never raise from a probe; keep the cause in the log
            logger.warning("nvml probe failed unexpectedly", exc_info=True)
            return Availability(False, f"NVML probe failed: {type(err).__name__}: {err}",
                                "report this as a bug, or use the estimated backend")
        finally:
            # Init is refcounted: release the probe's reference; open() takes its own.
            try:
                nvml.nvmlShutdown()
            except nvml_error as err:
                logger.debug("nvmlShutdown after probe failed: %s", err)

    def _select(self, nvml: Any) -> list[_Selected]:
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            raise _Unavailable("NVML sees no GPU",
                               "check `nvidia-smi`, or use the estimated backend")
        raw = self._environ.get("CUDA_VISIBLE_DEVICES")
        entries = parse_cuda_visible_devices(raw)
        if entries is None:
            visible = list(range(count))
        else:
            def uuids() -> list[str]:
                return [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)))
                        for i in range(count)]
            visible = _resolve_visible(entries, count, uuids)
        where = ("CUDA_VISIBLE_DEVICES is unset" if raw is None
                 else f"CUDA_VISIBLE_DEVICES={raw!r}")
        if not visible:
            raise _Unavailable(
                f"no GPU is visible to CUDA: {where} hides all {count} GPU(s) NVML sees",
                "unset CUDA_VISIBLE_DEVICES or list the GPUs to meter in it",
            )
        wanted = list(range(len(visible))) if self._cuda_devices is None else self._cuda_devices
        selection: list[_Selected] = []
        for cuda_index in wanted:
            if not 0 <= cuda_index < len(visible):
                raise _Unavailable(
                    f"CUDA device {cuda_index} does not exist: {where}, which leaves "
                    f"{len(visible)} GPU(s) visible (cuda:0..cuda:{len(visible) - 1} = NVML "
                    f"{', '.join(str(i) for i in visible)})",
                    f"use a CUDA index below {len(visible)}, or change CUDA_VISIBLE_DEVICES",
                )
            selection.append(_Selected(nvml_index=visible[cuda_index], cuda_index=cuda_index))
        for sel in selection:
            if _mig_enabled(nvml, nvml.nvmlDeviceGetHandleByIndex(sel.nvml_index)):
                raise _Unavailable(
                    f"{MIG_REASON} (NVML GPU {sel.nvml_index}, cuda:{sel.cuda_index}, has MIG "
                    "mode enabled)",
                    MIG_FIX,
                )
        return selection

    # ---- open / close -------------------------------------------------------------------------
    def open(self) -> None:
        if self._initialised:
            return
        availability = self.probe()
        if not availability.ok:
            raise BackendUnavailable(_unavailable_message(availability.reason, availability.fix))
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise BackendUnavailable(_unavailable_message(
                f"NVML could not initialise: {err} (no NVIDIA driver?)",
                "install the NVIDIA driver and check that `nvidia-smi` works",
            )) from err
        self._initialised = True
        try:
            self._mixed_order = self._order_may_differ()
            if self._mixed_order:
                logger.warning("CUDA_DEVICE_ORDER is not PCI_BUS_ID on a machine with mixed "
                               "GPUs: the CUDA -> NVML index mapping may be wrong")
            self._gpus = [self._open_gpu(sel) for sel in self._selection]
            self._facts = self._collect_facts()
        except nvml.NVMLError as err:
            self.close()
            raise BackendUnavailable(_unavailable_message(
                f"NVML failed while opening the GPUs: {err}",
                "check `nvidia-smi`, or use the estimated backend",
            )) from err
        except BackendUnavailable:
            self.close()
            raise
        self._counter_gpus = [g for g in self._gpus if g.counter_base_mj is not None]
        self._power_readers = [(g.domain, self._power_reader(g)) for g in self._gpus
                               if g.power_source is not None]

    def _open_gpu(self, sel: _Selected) -> _Gpu:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(sel.nvml_index)
        name = _text(nvml.nvmlDeviceGetName(handle))
        domain = f"gpu:{sel.nvml_index}"
        assumptions: list[str] = [
            "NVML meters the whole board: work of other processes on this GPU is counted too",
        ]

        # The counter is the reference; the first read is also the zero of this session.
        counter_base: int | None
        try:
            counter_base = int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            counter_error = ""
        except nvml.NVMLError as err:
            counter_base = None
            counter_error = str(err)

        power_source = self._detect_power_source(handle)

        if counter_base is None and power_source is None:
            raise BackendUnavailable(_unavailable_message(
                f"{name} (NVML index {sel.nvml_index}) answers neither the total-energy counter "
                f"({counter_error}) nor a power reading",
                "use a Volta or newer GPU, or the estimated backend",
            ))

        if counter_base is not None:
            method = "energy-counter"
            resolution_s = COUNTER_TICK_S
            assumptions.append(
                "the total-energy counter advances only every ~100 ms: a window shorter than a "
                "tick can read 0 J, so windows must span many ticks"
            )
        else:
            # Without a counter the meter integrates power_w() samples from its sampler thread.
            method = ("integrated-instant-power" if power_source == "instant-field"
                      else "integrated-average-power")
            resolution_s = 0.0
            assumptions.append(
                f"this GPU has no total-energy counter (nvmlDeviceGetTotalEnergyConsumption: "
                f"{counter_error}; it needs Volta or newer): energy is the integral of the power "
                "samples taken by the meter's sampler"
            )
        if power_source == "average":
            assumptions.append(
                "power is nvmlDeviceGetPowerUsage, a ~1 s moving average that lags load steps "
                "(field NVML_FI_DEV_POWER_INSTANT is not supported here): integrating it "
                "under-counts short bursts"
            )
        if self._mixed_order:
            assumptions.append(
                "CUDA_DEVICE_ORDER is not PCI_BUS_ID and this machine mixes GPU models: CUDA may "
                "number GPUs fastest first while NVML numbers them by PCI bus, so cuda:i may not "
                "be this GPU; set CUDA_DEVICE_ORDER=PCI_BUS_ID to be sure"
            )

        # The highest limit the board can be set to; twice it is a power no window can average.
        limits = _optional(nvml, lambda h=handle: nvml.nvmlDeviceGetPowerManagementLimitConstraints(h))
        top_mw = limits[1] if isinstance(limits, (tuple, list)) and len(limits) == 2 else None
        if top_mw is None:
            top_mw = _optional(nvml, lambda h=handle: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
        max_power_w = 2.0 * units.milliwatts_to_watts(top_mw) if top_mw else MAX_GPU_POWER_W

        gpu = _Gpu(selected=sel, handle=handle, domain=domain, name=name,
                   counter_base_mj=counter_base, last_raw_mj=counter_base,
                   power_source=power_source)
        gpu.info = DomainInfo(
            name=domain,
            backend=self.name,
            provenance=self.provenance,
            method=method,
            device=f"{name} (NVML index {sel.nvml_index}, cuda:{sel.cuda_index})",
            has_counter=counter_base is not None,
            resolution_s=resolution_s,
            assumptions=tuple(assumptions),
            max_power_w=max_power_w,
            device_id=_optional(nvml, lambda h=handle: _text(nvml.nvmlDeviceGetUUID(h))),
        )
        return gpu

    def _detect_power_source(self, handle: Any) -> str | None:
        """Which power reading this GPU answers, decided once so the sampler never retries."""
        nvml = self._nvml
        field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", _FI_DEV_POWER_INSTANT)
        try:
            value = nvml.nvmlDeviceGetFieldValues(handle, [field_id])[0]
            if value.nvmlReturn == nvml.NVML_SUCCESS:
                return "instant-field"
            logger.debug("field %d answered %d", field_id, value.nvmlReturn)
        except (nvml.NVMLError, AttributeError) as err:  # AttributeError: very old bindings
            logger.debug("nvmlDeviceGetFieldValues unsupported: %s", err)
        try:
            nvml.nvmlDeviceGetPowerUsage(handle)
            return "average"
        except nvml.NVMLError as err:
            logger.debug("nvmlDeviceGetPowerUsage unsupported: %s", err)
            return None

    def _power_reader(self, gpu: _Gpu) -> Callable[[], float]:
        """A closure reading one GPU's power in watts with as little Python as possible: it runs
        every ~5 ms in the meter's sampler thread."""
        nvml = self._nvml
        handle = gpu.handle
        if gpu.power_source == "average":
            get_power = nvml.nvmlDeviceGetPowerUsage

            def read_average() -> float:
                return units.milliwatts_to_watts(get_power(handle))

            return read_average

        get_fields = nvml.nvmlDeviceGetFieldValues
        field_ids = [getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", _FI_DEV_POWER_INSTANT)]
        success = nvml.NVML_SUCCESS
        members = {getattr(nvml, const, number): member
                   for const, number, member in _VALUE_TYPE_MEMBERS}
        error = nvml.NVMLError

        def read_instant() -> float:
            value = get_fields(handle, field_ids)[0]
            if value.nvmlReturn != success:
                raise error(value.nvmlReturn)
            # Field 186 comes back as an unsigned int of milliwatts; decode by valueType anyway,
            # so a driver that widens the type is still read correctly.
            return units.milliwatts_to_watts(
                getattr(value.value, members.get(value.valueType, "uiVal"))
            )

        return read_instant

    def _order_may_differ(self) -> bool:
        if self._environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") == "PCI_BUS_ID":
            return False
        # With identical GPUs, CUDA breaks the "fastest" tie by PCI bus order, like NVML.
        nvml = self._nvml
        count = int(nvml.nvmlDeviceGetCount())
        if count < 2:
            return False
        names = {_text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)))
                 for i in range(count)}
        return len(names) > 1

    def _collect_facts(self) -> dict[str, Any]:
        nvml = self._nvml
        driver = _optional(nvml, lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        nvml_version = _optional(nvml, lambda: _text(nvml.nvmlSystemGetNVMLVersion()))
        facts: dict[str, Any] = {}
        for gpu in self._gpus:
            handle = gpu.handle
            limit_mw = _optional(nvml, lambda h=handle: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
            memory = _optional(nvml, lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
            facts[gpu.domain] = {
                "name": gpu.name,
                "uuid": _optional(nvml, lambda h=handle: _text(nvml.nvmlDeviceGetUUID(h))),
                "nvml_index": gpu.selected.nvml_index,
                "cuda_index": gpu.selected.cuda_index,
                "driver_version": driver,
                "nvml_version": nvml_version,
                "power_limit_w": (None if limit_mw is None
                                  else units.milliwatts_to_watts(limit_mw)),
                "memory_total_bytes": None if memory is None else int(memory.total),
                "energy_counter": gpu.counter_base_mj is not None,
                "power_source": gpu.power_source,
                "cuda_visible_devices": self._environ.get("CUDA_VISIBLE_DEVICES"),
            }
        return facts

    def close(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        self._counter_gpus = []
        self._power_readers = []
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as err:
            logger.debug("nvmlShutdown failed: %s", err)

    # ---- readings -----------------------------------------------------------------------------
    def domains(self) -> Sequence[DomainInfo]:
        return tuple(g.info for g in self._gpus if g.info is not None)

    def read(self) -> EnergyReading:
        self._require_open()
        nvml = self._nvml
        raws: list[tuple[_Gpu, int]] = []
        try:
            for gpu in self._counter_gpus:
                raws.append((gpu, int(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))))
        except nvml.NVMLError as err:
            raise BackendError(f"reading the NVML energy counter failed: {err}") from err
        # Stamped after the reads (~3 ms each on an H100): the values are at least that old.
        t_s = self._clock()
        energy_j: dict[str, float] = {}
        for gpu, raw in raws:
            assert gpu.counter_base_mj is not None and gpu.last_raw_mj is not None
            if raw < gpu.last_raw_mj:
                # A 64-bit mJ counter does not wrap; going back means the driver was reloaded or
                # the GPU reset, and the energy in between is lost.
                raise BackendError(
                    f"the NVML energy counter of {gpu.domain} went backwards "
                    f"({gpu.last_raw_mj} -> {raw} mJ): was the driver reloaded or the GPU reset? "
                    "Measure again"
                )
            gpu.last_raw_mj = raw
            energy_j[gpu.domain] = units.millijoules_to_joules(raw - gpu.counter_base_mj)
        return EnergyReading(t_s=t_s, energy_j=energy_j)

    def power_w(self) -> dict[str, float]:
        """Instantaneous power per domain in watts: one NVML call per GPU (~4 us each)."""
        readers = self._power_readers
        if not readers:
            self._require_open()
        try:
            return {domain: reader() for domain, reader in readers}
        except self._nvml.NVMLError as err:
            raise BackendError(f"reading GPU power through NVML failed: {err}") from err

    def device_states(self) -> list[DeviceState]:
        self._require_open()
        nvml = self._nvml
        states = []
        for gpu in self._gpus:
            h = gpu.handle
            clock = _optional(nvml, lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
            temp = _optional(
                nvml, lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
            )
            limit = _optional(nvml, lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
            mask = self._throttle_mask(h)
            reasons = () if mask is None else decode_throttle_reasons(mask, nvml)
            states.append(DeviceState(
                domain=gpu.domain,
                sm_clock_mhz=None if clock is None else float(clock),
                temperature_c=None if temp is None else float(temp),
                power_limit_w=None if limit is None else units.milliwatts_to_watts(limit),
                throttle_reasons=reasons,
                limited_by=tuple(r for r in reasons if r in LIMITING_THROTTLE_REASONS),
            ))
        return states

    def _throttle_mask(self, handle: Any) -> int | None:
        """The clocks-event mask; the older "throttle" name is tried when the newer one is
        missing from the bindings or the driver. Remembers which one worked."""
        nvml = self._nvml
        names = ([self._throttle_fn] if self._throttle_fn else
                 ["nvmlDeviceGetCurrentClocksEventReasons",
                  "nvmlDeviceGetCurrentClocksThrottleReasons"])
        for fn_name in names:
            fn = getattr(nvml, fn_name, None)
            if fn is None:
                continue
            try:
                mask = int(fn(handle))
            except nvml.NVMLError as err:
                logger.debug("%s failed: %s", fn_name, err)
                continue
            self._throttle_fn = fn_name
            return mask
        return None

    def device_facts(self) -> dict[str, Any]:
        """Per domain: name, UUID, indices, driver and NVML versions, power limit (W), memory,
        and whether the energy counter is used."""
        return {domain: dict(facts) for domain, facts in self._facts.items()}

    def _require_open(self) -> None:
        if not self._initialised:
            raise BackendError("the nvml backend is not open: call open() first")


# ---- helpers -------------------------------------------------------------------------------


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError as err:  # NotSupported before Ampere: no MIG there
        logger.debug("nvmlDeviceGetMigMode: %s", err)
        return False
    return bool(current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))


def _optional(nvml: Any, read: Callable[[], Any]) -> Any:
    """A reading that may be unsupported on a GPU: None instead of an exception."""
    try:
        value = read()
    except nvml.NVMLError as err:
        logger.debug("optional NVML reading unavailable: %s", err)
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _text(value: Any) -> str:
    """pynvml returns str since 11.x, bytes before; accept both."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _unavailable_message(reason: str, fix: str) -> str:
    reason = reason.rstrip()
    if not reason.endswith("."):
        reason += "."
    return f"{reason} Fix: {fix}" if fix else reason
