"""Counters that lie: a reset taken for a wrap, a frozen counter, a counter going backwards.

Each must end the run with one clear error (an `ImpossibleReading`), keep the windows measured
before the fault (`error.partial`), and never produce a figure. Everything runs on a simulated
clock: the fake hardware draws its power as simulated time passes.
"""

from __future__ import annotations

import pytest

from energyprune.backends.nvml import NvmlBackend
from energyprune.backends.rapl import RaplBackend
from energyprune.clock import SimulatedClock
from energyprune.errors import ImpossibleReading
from energyprune.measure.meter import Meter, MeterConfig
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.fakes.powercap import add_energy, one_socket, set_energy
from tests.fakes.scripted import ScriptedBackend

CONFIG = MeterConfig(window_s=0.1, repeats=6, precision=0.0, idle_s=0.1, max_warmup_s=0.02,
                     sample_interval_s=0.005)
PACKAGE_W = 50.0


def powered_package(tmp_path, clock):
    """One socket whose package draws 50 W as simulated time passes (written every 1 ms)."""
    zones = one_socket(tmp_path / "powercap")
    state = {"frozen": False}

    def tick() -> None:
        if not state["frozen"]:
            add_energy(zones["package-0"], int(PACKAGE_W * 1e-3 * 1e6))

    clock.start_periodic(0.001, tick)
    backend = RaplBackend(tmp_path / "powercap", cpuinfo_path=tmp_path / "none", clock=clock)
    return backend, zones, state


def workload_that(clock, after_calls, fault):
    calls = {"n": 0}

    def call() -> None:
        calls["n"] += 1
        if calls["n"] == after_calls:
            fault()
        clock.sleep(0.001)

    return call


def test_a_rapl_counter_reset_is_not_taken_for_a_wrap(tmp_path):
    clock = SimulatedClock()
    backend, zones, _ = powered_package(tmp_path, clock)
    set_energy(zones["package-0"], 200_000_000_000)  # 200 kJ, as on a machine up for a while
    # Mid-run the counter restarts from 0 (a reset): read as a wrap it would be 62 kJ in one window.
    reset = workload_that(clock, 400, lambda: set_energy(zones["package-0"], 0))
    with pytest.raises(ImpossibleReading, match="can draw") as caught:
        Meter([backend], CONFIG, clock=clock).measure(reset)
    partial = caught.value.partial
    assert partial is not None and partial["schema"] == "energyprune.partial/1"
    assert len(partial["windows"]) >= 2  # the windows before the reset are kept
    assert all(w["energy_j"]["rapl:package-0"] > 0 for w in partial["windows"])


def test_a_frozen_rapl_counter_fails_the_run(tmp_path):
    clock = SimulatedClock()
    backend, _, state = powered_package(tmp_path, clock)
    freeze = workload_that(clock, 300, lambda: state.update(frozen=True))
    with pytest.raises(ImpossibleReading, match="did not change .* frozen") as caught:
        Meter([backend], CONFIG, clock=clock).measure(freeze)
    assert caught.value.partial["windows"]


def test_a_frozen_nvml_counter_fails_the_run():
    clock = SimulatedClock()
    gpu = FakeGpu(load_w=120.0)
    fake = make_fake_pynvml([gpu], tick_s=0.1, clock=clock)
    backend = NvmlBackend(cuda_devices=[0], nvml=fake, environ={}, clock=clock)
    frozen_at = {}

    def freeze() -> None:
        # From now on the counter answers its last value, as a hung firmware counter does.
        frozen_at["mj"] = gpu.counter_mj(fake.now(), fake.tick_s)
        gpu.counter_mj = lambda t, tick_s, phase=0.0: frozen_at["mj"]  # type: ignore[method-assign]

    config = MeterConfig(window_s=1.2, repeats=6, precision=0.0, idle_s=0.3, max_warmup_s=0.02,
                         sample_interval_s=0.005)
    with pytest.raises(ImpossibleReading, match="frozen") as caught:
        Meter([backend], config, clock=clock).measure(workload_that(clock, 2500, freeze))
    assert caught.value.partial["windows"]


class BackwardsBackend(ScriptedBackend):
    """A counter that steps back by 5 J once `backwards` is set (a firmware bug, a reset)."""

    backwards = False

    def read(self):
        reading = super().read()
        if self.backwards:
            return type(reading)(reading.t_s, {self.domain: reading.energy_j[self.domain] - 5.0})
        return reading


def test_a_counter_going_backwards_is_an_error_not_a_low_figure():
    clock = SimulatedClock()
    fake = BackwardsBackend(idle_w=10.0, call_energy_j=0.01, tick_s=0.001, clock=clock)

    def step_back() -> None:
        fake.backwards = True

    def call() -> None:
        fake.call()
        clock.sleep(0.001)

    calls = {"n": 0}

    def workload() -> None:
        calls["n"] += 1
        if calls["n"] == 250:
            step_back()
        call()

    with pytest.raises(ImpossibleReading, match="cannot be negative"):
        Meter([fake], CONFIG, clock=clock).measure(workload)
