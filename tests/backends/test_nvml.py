"""The NVML backend on a fake pynvml whose physics is scripted (tests/fakes/fake_pynvml.py).

Most tests run on a FakeClock shared by the fake and the backend, so ticks and integrals are
exact and nothing sleeps. The machine shapes: one H100, two GPUs reordered by
CUDA_VISIBLE_DEVICES, a MIG-enabled GPU, a pre-Volta GPU without an energy counter, a GPU
without the instantaneous power field, no driver, no nvidia-ml-py.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import time

import pynvml
import pytest

from energyprune.backends.base import (
    Backend,
    DeviceFactsReporter,
    DeviceStateReporter,
    PowerSensor,
)
from energyprune.backends.nvml import (
    LIMITING_THROTTLE_REASONS,
    MIG_FIX,
    MIG_REASON,
    NvmlBackend,
    decode_throttle_reasons,
    parse_cuda_visible_devices,
)
from energyprune.errors import BackendError, BackendUnavailable
from energyprune.backends.base import Provenance
from tests.fakes.fake_pynvml import FAKED_FUNCTIONS, FakeClock, FakeGpu, make_fake_pynvml

UUID_A = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
UUID_B = "GPU-1c2d3e4f-aaaa-bbbb-cccc-000000000001"


def make(gpus=1, env=None, cuda_devices=None, **fake_kwargs):
    clock = FakeClock(1000.0)
    fake = make_fake_pynvml(gpus, clock=clock, **fake_kwargs)
    backend = NvmlBackend(cuda_devices, nvml=fake, environ={} if env is None else env,
                          clock=clock)
    return backend, fake, clock


def selected(backend):
    """The domain names and device strings the backend opens."""
    backend.open()
    try:
        return [d.name for d in backend.domains()], [d.device for d in backend.domains()]
    finally:
        backend.close()


# ---- the fake is honest -----------------------------------------------------------------------


def _shape(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", FAKED_FUNCTIONS)
def test_fake_signatures_match_real_pynvml(name):
    fake = make_fake_pynvml(1)
    assert hasattr(pynvml, name), f"{name} is not a pynvml function"
    assert _shape(getattr(fake, name)) == _shape(getattr(pynvml, name))


def test_fake_raises_the_real_exception_classes_and_returns_real_structs():
    fake = make_fake_pynvml([FakeGpu(has_counter=False)])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetTotalEnergyConsumption(handle)
    values = fake.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])
    assert isinstance(values[0], pynvml.c_nvmlFieldValue_t)
    assert values[0].nvmlReturn == pynvml.NVML_SUCCESS
    assert values[0].valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    assert values[0].value.uiVal == 80_000
    fake.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_fake_power_usage_is_a_trailing_one_second_average():
    clock = FakeClock()
    fake = make_fake_pynvml(1, clock=clock)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.gpus[0].load_w = 300.0
    clock.advance(0.5)
    assert fake.nvmlDeviceGetPowerUsage(handle) == 190_000  # half 80 W, half 300 W
    clock.advance(1.0)
    assert fake.nvmlDeviceGetPowerUsage(handle) == 300_000


def test_fake_integrates_a_power_function():
    clock = FakeClock()
    gpu = FakeGpu(power_fn=lambda t: 100.0 + 200.0 * t)  # a ramp: exact under Simpson
    fake = make_fake_pynvml([gpu], clock=clock, tick_s=0.1)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    clock.advance(0.55)
    # integral 0..0.5 of 100 + 200 t = 50 + 25 J
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) - gpu.counter_start_mj == 75_000


# ---- probe --------------------------------------------------------------------------------------


def test_probe_when_pynvml_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    availability = NvmlBackend(environ={}).probe()
    assert not availability.ok
    assert availability.reason == "nvidia-ml-py is not installed"
    assert availability.fix == "pip install nvidia-ml-py"


def test_probe_with_a_loader_that_raises_import_error():
    def loader():
        raise ImportError("No module named 'pynvml'")

    backend = NvmlBackend(nvml=loader, environ={})
    assert backend.probe().reason == "nvidia-ml-py is not installed"
    with pytest.raises(BackendUnavailable, match="Fix: pip install nvidia-ml-py"):
        backend.open()


def test_probe_when_nvml_cannot_initialise():
    backend, fake, _ = make(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    availability = backend.probe()
    assert not availability.ok
    assert availability.reason == "NVML could not initialise: Driver Not Loaded (no NVIDIA driver?)"
    assert "nvidia-smi" in availability.fix


def test_probe_with_no_gpu():
    backend, _, _ = make(gpus=0)
    availability = backend.probe()
    assert not availability.ok and "no GPU" in availability.reason


def test_probe_is_cached_and_releases_nvml():
    backend, fake, _ = make()
    assert backend.probe().ok
    assert backend.probe().ok
    assert fake.init_calls == 1
    assert fake.refcount == 0  # the probe's nvmlInit is balanced by an nvmlShutdown


def test_importing_the_backend_does_not_import_pynvml():
    code = ("import sys, energyprune.backends.nvml; "
            "sys.exit(1 if 'pynvml' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_backend_satisfies_the_protocols():
    backend, _, _ = make()
    assert isinstance(backend, Backend)
    assert isinstance(backend, PowerSensor)
    assert isinstance(backend, DeviceStateReporter)
    assert isinstance(backend, DeviceFactsReporter)
    assert backend.name == "nvml" and backend.provenance is Provenance.MEASURED


# ---- CUDA_VISIBLE_DEVICES -----------------------------------------------------------------------


def test_unset_cuda_visible_devices_is_identity_over_all_gpus():
    backend, _, _ = make(gpus=2)
    names, devices = selected(backend)
    assert names == ["gpu:0", "gpu:1"]
    assert devices == ["NVIDIA H100 80GB HBM3 (NVML index 0, cuda:0)",
                       "NVIDIA H100 80GB HBM3 (NVML index 1, cuda:1)"]


def test_reordered_cuda_visible_devices_maps_framework_to_nvml_index():
    backend, _, _ = make(gpus=2, env={"CUDA_VISIBLE_DEVICES": "1,0"}, cuda_devices=[0])
    names, devices = selected(backend)
    assert names == ["gpu:1"]
    assert devices == ["NVIDIA H100 80GB HBM3 (NVML index 1, cuda:0)"]


def test_cuda_visible_devices_by_uuid_prefix():
    gpus = [FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B)]
    backend, _, _ = make(gpus=gpus, env={"CUDA_VISIBLE_DEVICES": "GPU-1c2d,GPU-8932f937"})
    names, devices = selected(backend)
    assert names == ["gpu:1", "gpu:0"]
    assert devices[0].endswith("(NVML index 1, cuda:0)")


def test_full_uuid_and_unknown_uuid_ends_the_list():
    gpus = [FakeGpu(uuid=UUID_A), FakeGpu(uuid=UUID_B)]
    backend, _, _ = make(gpus=gpus, env={"CUDA_VISIBLE_DEVICES": f"{UUID_A},GPU-ffff,{UUID_B}"})
    names, _ = selected(backend)
    assert names == ["gpu:0"]  # CUDA stops at the first entry that names no GPU


def test_invalid_entry_ends_the_list_like_cuda():
    assert parse_cuda_visible_devices("0,2,-1,1") == [0, 2]
    assert parse_cuda_visible_devices(" 1 , 0 ") == [1, 0]
    assert parse_cuda_visible_devices(None) is None
    backend, _, _ = make(gpus=3, env={"CUDA_VISIBLE_DEVICES": "0,2,-1,1"})
    assert selected(backend)[0] == ["gpu:0", "gpu:2"]


@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles", "1,1"])
def test_no_gpu_visible(value):
    backend, _, _ = make(gpus=2, env={"CUDA_VISIBLE_DEVICES": value})
    availability = backend.probe()
    assert not availability.ok
    assert "no GPU is visible" in availability.reason
    assert f"CUDA_VISIBLE_DEVICES={value!r}" in availability.reason


def test_framework_index_out_of_range_names_cuda_visible_devices():
    backend, _, _ = make(gpus=2, env={"CUDA_VISIBLE_DEVICES": "1"}, cuda_devices=[1])
    availability = backend.probe()
    assert not availability.ok
    assert "CUDA device 1 does not exist" in availability.reason
    assert "CUDA_VISIBLE_DEVICES='1'" in availability.reason
    with pytest.raises(BackendUnavailable, match="CUDA_VISIBLE_DEVICES"):
        backend.open()


def test_mig_slice_in_cuda_visible_devices_is_refused():
    env = {"CUDA_VISIBLE_DEVICES": "MIG-4b9c1f3e-aaaa-bbbb-cccc-1234567890ab"}
    backend, _, _ = make(env=env)
    availability = backend.probe()
    assert not availability.ok
    assert availability.reason.startswith(MIG_REASON)
    assert availability.fix == MIG_FIX
    with pytest.raises(BackendUnavailable) as info:
        backend.open()
    assert "MIG slices cannot be metered" in str(info.value)
    assert "Fix: meter the whole GPU with MIG disabled, or use the estimated backend" in str(
        info.value)


def test_gpu_with_mig_mode_enabled_is_refused():
    backend, _, _ = make(gpus=[FakeGpu(), FakeGpu(mig_enabled=True)])
    availability = backend.probe()
    assert not availability.ok
    assert availability.reason.startswith(MIG_REASON)
    assert "NVML GPU 1" in availability.reason


def test_mig_mode_only_matters_for_selected_gpus_and_pre_ampere_has_none():
    gpus = [FakeGpu(mig_supported=False), FakeGpu(mig_enabled=True)]
    backend, _, _ = make(gpus=gpus, cuda_devices=[0])
    assert backend.probe().ok


def test_duplicate_framework_indices_are_metered_once():
    backend, _, _ = make(gpus=2, cuda_devices=[1, 1, 0])
    assert selected(backend)[0] == ["gpu:1", "gpu:0"]


def test_mixed_gpu_models_without_pci_bus_order_are_flagged():
    gpus = [FakeGpu(name="NVIDIA A100-SXM4-40GB"), FakeGpu(name="NVIDIA T4")]
    backend, _, _ = make(gpus=gpus)
    backend.open()
    assert any("CUDA_DEVICE_ORDER" in a for a in backend.domains()[0].assumptions)
    backend.close()
    backend, _, _ = make(gpus=gpus, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    backend.open()
    assert not any("CUDA_DEVICE_ORDER" in a for a in backend.domains()[0].assumptions)
    backend.close()


# ---- the energy counter -------------------------------------------------------------------------


def test_counter_domain_description():
    backend, _, _ = make()
    backend.open()
    (domain,) = backend.domains()
    assert domain.name == "gpu:0" and domain.backend == "nvml"
    assert domain.method == "energy-counter"
    assert domain.has_counter and domain.resolution_s == pytest.approx(0.1)
    assert domain.provenance is Provenance.MEASURED
    backend.close()


def test_counter_reads_joules_since_open_quantised_to_ticks():
    backend, fake, clock = make(tick_s=0.1)
    gpu = fake.gpus[0]
    clock.advance(0.05)  # open mid-tick: the counter then holds the value of t=0 (no energy yet)
    backend.open()
    first = backend.read()
    assert first.energy_j == {"gpu:0": 0.0}
    assert first.t_s == 1000.05

    clock.advance(0.07)  # t=0.12: one tick (t=0.1) has passed at 80 W idle, 0..0.1 s
    assert backend.read().energy_j["gpu:0"] == pytest.approx(8.0, abs=1e-6)

    gpu.load_w = 300.0  # load step at t=0.12
    clock.advance(0.05)  # t=0.17: no tick since the step, the counter does not show it yet
    assert backend.read().energy_j["gpu:0"] == pytest.approx(8.0, abs=1e-6)

    clock.advance(0.05)  # t=0.22: the tick at 0.2 includes 0.1..0.12 at 80 W, 0.12..0.2 at 300 W
    assert backend.read().energy_j["gpu:0"] == pytest.approx(8.0 + 1.6 + 24.0, abs=1e-6)

    gpu.load_w = 80.0  # t=0.22
    clock.advance(0.3)  # t=0.52: ticks 0.3, 0.4, 0.5
    expected = 8.0 + 1.6 + 24.0 + 300.0 * 0.02 + 80.0 * 0.28
    assert backend.read().energy_j["gpu:0"] == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(gpu.energy_j(0.5), abs=1e-9)
    backend.close()


def test_window_shorter_than_a_tick_reads_zero():
    backend, fake, clock = make(tick_s=0.1)
    backend.open()
    clock.advance(0.01)
    start = backend.read().energy_j["gpu:0"]
    fake.gpus[0].load_w = 700.0
    clock.advance(0.05)  # 50 ms at 700 W is 35 J, but no tick falls inside the window
    assert backend.read().energy_j["gpu:0"] - start == 0.0
    backend.close()


def test_read_is_stamped_after_the_slow_counter_reads():
    backend, _, clock = make(gpus=[FakeGpu(counter_latency_s=0.003)] * 1)
    backend.open()  # one counter read at open: +3 ms
    assert clock() == pytest.approx(1000.003)
    reading = backend.read()
    assert reading.t_s == pytest.approx(1000.006)
    backend.close()


def test_counter_with_real_time_and_a_fast_tick():
    # The default clock (time.perf_counter), as the meter's own tests will use it.
    fake = make_fake_pynvml([FakeGpu(load_w=100.0)], tick_s=0.02)
    backend = NvmlBackend(nvml=fake, environ={})
    t0 = time.perf_counter()
    backend.open()
    time.sleep(0.1)
    reading = backend.read()
    elapsed_s = reading.t_s - t0  # however long the sleep really took on a loaded machine
    assert elapsed_s >= 0.1
    # 100 W for the time that passed, give or take one 20 ms tick at each edge
    assert 100.0 * (elapsed_s - 0.04) - 1e-6 <= reading.energy_j["gpu:0"] <= 100.0 * elapsed_s + 1e-6
    backend.close()


def test_counter_going_backwards_is_an_error():
    backend, fake, clock = make()
    backend.open()
    fake.gpus[0].counter_start_mj -= 1_000_000  # a driver reload resets the counter
    with pytest.raises(BackendError, match="went backwards"):
        backend.read()
    backend.close()


def test_read_failure_is_translated():
    backend, fake, _ = make()
    backend.open()
    fake.gpus[0].errors["nvmlDeviceGetTotalEnergyConsumption"] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(BackendError, match="GPU is lost"):
        backend.read()
    backend.close()


def test_read_before_open_is_an_error():
    backend, _, _ = make()
    with pytest.raises(BackendError, match="not open"):
        backend.read()


# ---- power --------------------------------------------------------------------------------------


def test_power_w_is_instantaneous():
    backend, fake, clock = make(gpus=2)
    backend.open()
    assert backend.power_w() == {"gpu:0": 80.0, "gpu:1": 80.0}
    fake.gpus[1].load_w = 412.5
    clock.advance(0.001)
    before = fake.calls["nvmlDeviceGetFieldValues"]
    assert backend.power_w() == {"gpu:0": 80.0, "gpu:1": 412.5}  # no lag, unlike the average
    assert fake.calls["nvmlDeviceGetFieldValues"] - before == 2  # one batched call per GPU
    assert "nvmlDeviceGetPowerUsage" not in fake.calls
    backend.close()


def test_power_w_falls_back_to_the_moving_average():
    backend, fake, clock = make(gpus=[FakeGpu(has_instant_power=False)])
    backend.open()
    (domain,) = backend.domains()
    assert domain.method == "energy-counter"
    assert any("~1 s moving average" in a for a in domain.assumptions)
    fake.gpus[0].load_w = 300.0
    clock.advance(0.5)
    assert backend.power_w() == {"gpu:0": pytest.approx(190.0)}  # still climbing after 0.5 s
    assert backend.device_facts()["gpu:0"]["power_source"] == "average"
    backend.close()


def test_power_w_failure_is_translated():
    backend, fake, _ = make()
    backend.open()
    fake.gpus[0].errors["nvmlDeviceGetFieldValues"] = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(BackendError, match="power"):
        backend.power_w()
    backend.close()


def test_without_counter_the_domain_integrates_instant_power():
    backend, fake, clock = make(gpus=[FakeGpu(has_counter=False), FakeGpu()])
    backend.open()
    no_counter, counter = backend.domains()
    assert not no_counter.has_counter
    assert no_counter.method == "integrated-instant-power"
    assert no_counter.resolution_s == 0.0
    assert any("no total-energy counter" in a for a in no_counter.assumptions)
    assert counter.has_counter
    clock.advance(0.2)
    reading = backend.read()
    assert set(reading.energy_j) == {"gpu:1"}  # the meter integrates gpu:0 from power_w()
    fake.gpus[0].load_w = 250.0
    assert backend.power_w()["gpu:0"] == 250.0
    assert backend.device_facts()["gpu:0"]["energy_counter"] is False
    backend.close()


def test_gpu_with_neither_counter_nor_power_cannot_be_opened():
    gpu = FakeGpu(has_counter=False, has_instant_power=False, has_power_usage=False)
    backend, fake, _ = make(gpus=[gpu])
    assert backend.probe().ok  # only open() looks at the sensors
    with pytest.raises(BackendUnavailable, match="neither the total-energy counter"):
        backend.open()
    assert fake.refcount == 0  # the failed open released NVML


# ---- device state and facts ---------------------------------------------------------------------


def test_throttle_reasons_are_decoded():
    assert decode_throttle_reasons(0x4, pynvml) == ("sw-power-cap",)
    assert decode_throttle_reasons(0x8 | 0x20 | 0x40 | 0x80, pynvml) == (
        "hw-slowdown", "sw-thermal", "hw-thermal", "hw-power-brake")
    assert decode_throttle_reasons(0x1 | 0x2 | 0x100, pynvml) == (
        "gpu-idle", "applications-clocks", "display-clocks")
    assert decode_throttle_reasons(0x1000) == ("unknown-0x1000",)
    assert decode_throttle_reasons(0) == ()
    assert "sw-power-cap" in LIMITING_THROTTLE_REASONS
    assert "hw-thermal" in LIMITING_THROTTLE_REASONS
    assert "gpu-idle" not in LIMITING_THROTTLE_REASONS


def test_device_states():
    gpu = FakeGpu(sm_clock_mhz=1515, temperature_c=63, power_limit_w=700.0,
                  throttle_reasons=pynvml.nvmlClocksEventReasonSwPowerCap)
    backend, _, _ = make(gpus=[gpu])
    backend.open()
    (state,) = backend.device_states()
    assert state.domain == "gpu:0"
    assert state.sm_clock_mhz == 1515.0
    assert state.temperature_c == 63.0
    assert state.power_limit_w == 700.0
    assert state.throttle_reasons == ("sw-power-cap",)
    backend.close()


def test_device_states_fall_back_and_never_raise():
    gpu = FakeGpu(clocks_event_reasons_supported=False, throttle_reasons=0x40,
                  errors={"nvmlDeviceGetTemperature": pynvml.NVML_ERROR_NOT_SUPPORTED,
                          "nvmlDeviceGetClockInfo": pynvml.NVML_ERROR_UNKNOWN})
    backend, fake, _ = make(gpus=[gpu])
    backend.open()
    (state,) = backend.device_states()
    assert state.temperature_c is None and state.sm_clock_mhz is None
    assert state.throttle_reasons == ("hw-thermal",)  # from the older ThrottleReasons call
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1
    gpu.errors["nvmlDeviceGetCurrentClocksThrottleReasons"] = pynvml.NVML_ERROR_UNKNOWN
    gpu.errors["nvmlDeviceGetEnforcedPowerLimit"] = pynvml.NVML_ERROR_NO_PERMISSION
    (state,) = backend.device_states()
    assert state.throttle_reasons == () and state.power_limit_w is None
    backend.close()


def test_device_facts():
    gpus = [FakeGpu(uuid=UUID_A, power_limit_w=350.0, memory_total_bytes=40 * 1024**3)]
    backend, _, _ = make(gpus=gpus, driver_version="550.54.15", nvml_version="12.550.54.15")
    backend.open()
    facts = backend.device_facts()["gpu:0"]
    assert facts["name"] == "NVIDIA H100 80GB HBM3"
    assert facts["uuid"] == UUID_A
    assert facts["driver_version"] == "550.54.15"
    assert facts["nvml_version"] == "12.550.54.15"
    assert facts["power_limit_w"] == 350.0
    assert facts["memory_total_bytes"] == 40 * 1024**3
    assert facts["energy_counter"] is True
    assert facts["power_source"] == "instant-field"
    assert (facts["nvml_index"], facts["cuda_index"]) == (0, 0)
    backend.close()


# ---- lifecycle ----------------------------------------------------------------------------------


def test_close_is_idempotent_and_shuts_nvml_down_once():
    backend, fake, _ = make()
    backend.open()
    backend.open()  # a second open is a no-op, not a second nvmlInit
    assert fake.refcount == 1
    shutdowns = fake.shutdown_calls
    backend.close()
    backend.close()
    assert fake.shutdown_calls == shutdowns + 1
    assert fake.refcount == 0
    with pytest.raises(BackendError):
        backend.power_w()


def test_close_without_open_does_nothing():
    backend, fake, _ = make()
    backend.close()
    assert fake.shutdown_calls == 0
