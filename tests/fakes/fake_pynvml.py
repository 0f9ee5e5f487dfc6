"""A fake `pynvml` module with scripted power, for testing the NVML backend and the meter.

It mirrors the part of the pynvml API the backend uses, with the REAL constants, exception
classes and ctypes structures copied from the installed `pynvml` (which imports without a driver),
so an error raised here is the genuine `pynvml.NVMLError_NotSupported` and a field value is a
genuine `c_nvmlFieldValue_t`. `tests/backends/test_nvml.py` checks every function's signature
against the real one.

Physics of each fake GPU, in seconds since the fake was made (`clock() - t0`):

* power P(t): either a piecewise-constant load set with `gpu.load_w = 300` (each change is recorded
  with its time, so integrals are exact) or a callable `gpu.power_fn = lambda t: ...`;
* `nvmlDeviceGetTotalEnergyConsumption`: `counter_start_mj` + the integral of P from 0 to the
  last tick boundary (`tick_s`, 100 ms like an H100), rounded to whole mJ: a window shorter than a
  tick reads 0 J, as on the real card;
* field 186 (`NVML_FI_DEV_POWER_INSTANT`): P(t) in mW; field 185 and `nvmlDeviceGetPowerUsage`:
  the mean of P over the trailing `average_window_s` (1 s), which lags load steps;
* clocks, temperature, power limit, throttle reasons: plain attributes a test sets.

Use a `FakeClock` for deterministic tests (its `sleep` advances it, and the counter's simulated read
latency uses it), or the default `time.perf_counter` for tests of code that really waits.
"""

from __future__ import annotations

import bisect
import collections
import math
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import pynvml as _real

from energyprune.clock import SimulatedClock

_IDLE_W = 80.0


#: The simulated clock of the library: `clock()` reads it, `advance`/`sleep` move it and run
#: the power sampler at its instants.
FakeClock = SimulatedClock


class FakeHandle:
    """Stands for a c_nvmlDevice_t."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"FakeHandle({self.index})"


class FakeGpu:
    """One simulated GPU. Every attribute may be changed while a test runs."""

    def __init__(
        self,
        name: str = "NVIDIA H100 80GB HBM3",
        uuid: str | None = None,
        load_w: float = _IDLE_W,
        power_fn: Callable[[float], float] | None = None,
        has_counter: bool = True,
        has_instant_power: bool = True,
        has_power_usage: bool = True,
        mig_enabled: bool = False,
        mig_supported: bool = True,
        sm_clock_mhz: int = 1980,
        temperature_c: int = 45,
        power_limit_w: float = 700.0,
        throttle_reasons: int = 0,
        clocks_event_reasons_supported: bool = True,
        memory_total_bytes: int = 80 * 1024**3,
        counter_start_mj: int = 123_456_789,
        counter_latency_s: float = 0.0,
        errors: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.uuid = uuid
        self.power_fn = power_fn
        self.has_counter = has_counter
        self.has_instant_power = has_instant_power
        self.has_power_usage = has_power_usage
        self.mig_enabled = mig_enabled
        self.mig_supported = mig_supported
        self.sm_clock_mhz = sm_clock_mhz
        self.temperature_c = temperature_c
        self.power_limit_w = power_limit_w
        self.throttle_reasons = throttle_reasons
        self.clocks_event_reasons_supported = clocks_event_reasons_supported
        self.memory_total_bytes = memory_total_bytes
        self.counter_start_mj = counter_start_mj
        self.counter_latency_s = counter_latency_s
        #: function name -> NVML error code it raises, e.g. {"nvmlDeviceGetTemperature": 3}
        self.errors: dict[str, int] = dict(errors or {})
        # Piecewise-constant load: change times (s since fake start) and the watts from then on.
        self._times: list[float] = [-math.inf]
        self._watts: list[float] = [float(load_w)]
        self._lock = threading.Lock()
        self._now: Callable[[], float] | None = None
        # Cache of the integral of power_fn from 0 to a time, so counters integrate forward only.
        self._fn_cache: tuple[Callable[[float], float], float, float] | None = None

    # ---- driving the load ---------------------------------------------------------------------
    @property
    def load_w(self) -> float:
        """The load now (setting it records a step at the current time)."""
        return self.power_at(self.now())

    @load_w.setter
    def load_w(self, watts: float) -> None:
        self.set_load(watts)

    def set_load(self, watts: float, at_s: float | None = None) -> None:
        """Step the load to `watts` at `at_s` (seconds since fake start; default now). Steps must
        come in time order, since a counter may already have been read past an earlier time."""
        at = self.now() if at_s is None else float(at_s)
        with self._lock:
            if at < self._times[-1]:
                raise ValueError(f"load steps must come in time order ({at} < {self._times[-1]})")
            if at == self._times[-1]:
                self._watts[-1] = float(watts)
            else:
                self._times.append(at)
                self._watts.append(float(watts))

    def now(self) -> float:
        if self._now is None:
            raise RuntimeError("this FakeGpu is not part of a fake pynvml yet")
        return self._now()

    # ---- physics ------------------------------------------------------------------------------
    def power_at(self, t: float) -> float:
        """P(t) in watts."""
        if self.power_fn is not None:
            return float(self.power_fn(t))
        with self._lock:
            return self._watts[bisect.bisect_right(self._times, t) - 1]

    def energy_j(self, t_end: float, t_start: float = 0.0) -> float:
        """The exact integral of P from t_start to t_end (piecewise-constant load), or a fine
        Simpson integral of `power_fn`."""
        if t_end <= t_start:
            return 0.0
        if self.power_fn is not None:
            return self._fn_energy_j(t_start, t_end)
        with self._lock:
            times, watts = list(self._times), list(self._watts)
        total = 0.0
        for i, w in enumerate(watts):
            lo = max(times[i], t_start)
            hi = min(times[i + 1] if i + 1 < len(times) else math.inf, t_end)
            if hi > lo:
                total += w * (hi - lo)
        return total

    def _fn_energy_j(self, t_start: float, t_end: float) -> float:
        fn = self.power_fn
        assert fn is not None
        if t_start == 0.0:
            # Counters only move forward: integrate from the last cached point.
            cache = self._fn_cache
            if cache is not None and cache[0] is fn and cache[1] <= t_end:
                value = cache[2] + _simpson(fn, cache[1], t_end)
            else:
                value = _simpson(fn, 0.0, t_end)
            self._fn_cache = (fn, t_end, value)
            return value
        return _simpson(fn, t_start, t_end)

    def counter_mj(self, t: float, tick_s: float, tick_phase_s: float = 0.0) -> int:
        """What the total-energy counter reads at t: the integral up to the last tick boundary."""
        ticks = math.floor((t - tick_phase_s) / tick_s + 1e-9)  # 1e-9: float noise at boundaries
        boundary = tick_phase_s + ticks * tick_s
        return self.counter_start_mj + round(1000.0 * self.energy_j(boundary))

    def average_power_w(self, t: float, window_s: float) -> float:
        return self.energy_j(t, t - window_s) / window_s


def _simpson(fn: Callable[[float], float], a: float, b: float, step_s: float = 5e-4) -> float:
    if b <= a:
        return 0.0
    n = max(2, 2 * math.ceil((b - a) / (2 * step_s)))
    h = (b - a) / n
    total = fn(a) + fn(b)
    for i in range(1, n):
        total += (4 if i % 2 else 2) * fn(a + i * h)
    return total * h / 3.0


def _raise(code: int) -> None:
    # pynvml maps the code to its subclass (NVMLError_NotSupported...), as the real calls do.
    raise _real.NVMLError(code)


_VALUE_TYPES = {"uiVal": _real.NVML_VALUE_TYPE_UNSIGNED_INT,
                "ullVal": _real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG}


class FakePynvml(types.ModuleType):
    """A module object standing for `pynvml`; see the module docstring for its physics.

    Counters for tests: `init_calls`, `shutdown_calls`, `calls` (a Counter of function names).
    """

    def __init__(
        self,
        gpus: Sequence[FakeGpu],
        clock: Callable[[], float] = time.perf_counter,
        tick_s: float = 0.1,
        tick_phase_s: float = 0.0,
        average_window_s: float = 1.0,
        init_error: int | None = None,
        driver_version: str = "580.159.04",
        nvml_version: str = "13.580.159.04",
    ) -> None:
        super().__init__("pynvml", "fake pynvml (tests/fakes/fake_pynvml.py)")
        for attr in dir(_real):
            if attr.startswith(("NVML_", "NVMLError", "nvmlClocks", "c_nvml")):
                setattr(self, attr, getattr(_real, attr))
        self.gpus = list(gpus)
        self.clock = clock
        self._sleep: Callable[[float], None] = getattr(clock, "sleep", time.sleep)
        self.t0 = clock()
        self.tick_s = tick_s
        self.tick_phase_s = tick_phase_s
        self.average_window_s = average_window_s
        self.init_error = init_error
        self.driver_version = driver_version
        self.nvml_version = nvml_version
        self.refcount = 0
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        for i, gpu in enumerate(self.gpus):
            if gpu.uuid is None:
                gpu.uuid = f"GPU-{i:08x}-fa6e-4e0a-8d1b-{i:012x}"
            gpu._now = self.now

    def now(self) -> float:
        """Seconds since the fake was made, on its clock."""
        return self.clock() - self.t0

    # ---- plumbing -----------------------------------------------------------------------------
    def _enter(self, fn: str, handle: FakeHandle | None = None) -> FakeGpu | None:
        with self._calls_lock:
            self.calls[fn] += 1
        if self.refcount <= 0:
            _raise(_real.NVML_ERROR_UNINITIALIZED)
        if handle is None:
            return None
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.gpus):
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if fn in gpu.errors:
            _raise(gpu.errors[fn])
        return gpu

    def _gpu(self, fn: str, handle: FakeHandle) -> FakeGpu:
        gpu = self._enter(fn, handle)
        assert gpu is not None
        return gpu

    # ---- init ---------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            _raise(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        if self.refcount <= 0:
            _raise(_real.NVML_ERROR_UNINITIALIZED)
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return self.nvml_version

    # ---- devices ------------------------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByUUID")
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, gpu in enumerate(self.gpus):
            if gpu.uuid == text:  # NVML wants the whole UUID; prefixes are CUDA's convenience
                return FakeHandle(i)
        _raise(_real.NVML_ERROR_NOT_FOUND)
        raise AssertionError("unreachable")

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        gpu = self._gpu("nvmlDeviceGetUUID", handle)
        assert gpu.uuid is not None
        return gpu.uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._gpu("nvmlDeviceGetIndex", handle)
        return handle.index

    def nvmlDeviceGetMigMode(self, device: FakeHandle) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetMigMode", device)
        if not gpu.mig_supported:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        mode = _real.NVML_DEVICE_MIG_ENABLE if gpu.mig_enabled else _real.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: Any = None) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        return _real.c_nvmlMemory_t(total=gpu.memory_total_bytes, free=gpu.memory_total_bytes,
                                    used=0)

    # ---- energy and power ---------------------------------------------------------------------
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
        if not gpu.has_counter:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        # The value is taken when the call starts; the call then costs its latency (~3 ms on H100).
        value = gpu.counter_mj(self.now(), self.tick_s, self.tick_phase_s)
        if gpu.counter_latency_s > 0:
            self._sleep(gpu.counter_latency_s)
        return value

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        gpu = self._gpu("nvmlDeviceGetPowerUsage", handle)
        if not gpu.has_power_usage:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        return round(1000.0 * gpu.average_power_w(self.now(), self.average_window_s))

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: Sequence[Any]) -> Any:
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle)
        values = (_real.c_nvmlFieldValue_t * len(fieldIds))()
        t = self.now()
        stamp_us = int(time.time() * 1e6)
        for i, field in enumerate(fieldIds):
            try:
                values[i].fieldId, values[i].scopeId = field
            except TypeError:
                values[i].fieldId = field
            values[i].timestamp = stamp_us
            values[i].latencyUsec = 0
            reading = self._field(gpu, values[i].fieldId, t)
            if reading is None:
                values[i].nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
                continue
            member, number = reading
            values[i].nvmlReturn = _real.NVML_SUCCESS
            values[i].valueType = _VALUE_TYPES[member]
            setattr(values[i].value, member, number)
        return values

    def _field(self, gpu: FakeGpu, field_id: int, t: float) -> tuple[str, int] | None:
        if field_id == _real.NVML_FI_DEV_POWER_INSTANT and gpu.has_instant_power:
            return "uiVal", round(1000.0 * gpu.power_at(t))
        if field_id == _real.NVML_FI_DEV_POWER_AVERAGE and gpu.has_power_usage:
            return "uiVal", round(1000.0 * gpu.average_power_w(t, self.average_window_s))
        if field_id == _real.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION and gpu.has_counter:
            return "ullVal", gpu.counter_mj(t, self.tick_s, self.tick_phase_s)
        return None

    # ---- state --------------------------------------------------------------------------------
    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, type: int) -> int:
        gpu = self._gpu("nvmlDeviceGetClockInfo", handle)
        if type != _real.NVML_CLOCK_SM:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.sm_clock_mhz

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != _real.NVML_TEMPERATURE_GPU:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_c

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        gpu = self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle)
        return round(gpu.power_limit_w * 1000.0)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: FakeHandle) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        return [round(gpu.power_limit_w * 1000.0 * 0.3), round(gpu.power_limit_w * 1000.0)]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        gpu = self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if not gpu.clocks_event_reasons_supported:
            # An older driver: the symbol is missing from libnvidia-ml.
            _raise(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
        return gpu.throttle_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle).throttle_reasons


def make_fake_pynvml(
    gpus: int | Sequence[FakeGpu] = 1,
    *,
    clock: Callable[[], float] = time.perf_counter,
    tick_s: float = 0.1,
    tick_phase_s: float = 0.0,
    average_window_s: float = 1.0,
    init_error: int | None = None,
    driver_version: str = "580.159.04",
    nvml_version: str = "13.580.159.04",
) -> FakePynvml:
    """A fake pynvml with `gpus` GPUs (a count of default H100s, or FakeGpu objects)."""
    gpu_list = [FakeGpu() for _ in range(gpus)] if isinstance(gpus, int) else list(gpus)
    return FakePynvml(gpu_list, clock=clock, tick_s=tick_s, tick_phase_s=tick_phase_s,
                      average_window_s=average_window_s, init_error=init_error,
                      driver_version=driver_version, nvml_version=nvml_version)


#: The functions of pynvml this fake provides (each checked against the real signature in tests).
FAKED_FUNCTIONS: tuple[str, ...] = tuple(
    name for name in vars(FakePynvml)
    if name.startswith("nvml") and callable(vars(FakePynvml)[name])
)

__all__ = ["FAKED_FUNCTIONS", "FakeClock", "FakeGpu", "FakeHandle", "FakePynvml",
           "make_fake_pynvml"]
