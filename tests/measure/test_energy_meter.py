"""EnergyMeter as the users of Zeus and pyJoules expect it: a context manager, named nestable
windows (`begin` / `end`), a decorator, and a choice of synchronisation; `measure` of any callable.
Everything runs on a replay trace against a simulated clock: no figure depends on the machine."""

from __future__ import annotations

import pytest
import torch

from energyprune.backends.replay import ReplayBackend
from energyprune.clock import SimulatedClock
from energyprune.errors import UsageError
from energyprune.measure.api import EnergyMeter, measure
from energyprune.measure.meter import MeterConfig

# 100 W until t = 2 s, then 300 W, until 60 s: a window's energy says exactly where its edges were.
STEP_S = 0.001


def write_trace(path, seconds: float = 60.0):
    rows, energy = ["t_s,cpu_energy_j"], 0.0
    for i in range(int(seconds / STEP_S) + 1):
        t = i * STEP_S
        rows.append(f"{t:.6f},{energy:.9f}")
        energy += (100.0 if t < 2.0 - 1e-9 else 300.0) * STEP_S
    path.write_text("\n".join(rows) + "\n")
    return path


class CountingReplay(ReplayBackend):
    """A replay backend that counts how often it is opened."""

    opens = 0

    def open(self) -> None:
        type(self).opens += 1
        super().open()


@pytest.fixture()
def setup(tmp_path):
    clock = SimulatedClock()
    CountingReplay.opens = 0
    backend = CountingReplay(write_trace(tmp_path / "trace.csv"), clock=clock)
    return clock, backend


def test_named_windows_nest_and_take_the_energy_between_their_edges(setup):
    clock, backend = setup
    meter = EnergyMeter([backend], clock=clock, sync="none")
    meter.begin("outer")
    clock.sleep(1.5)
    meter.begin("prefill")  # nested: 1.5 s .. 2.5 s crosses the step from 100 W to 300 W
    clock.sleep(1.0)
    prefill = meter.end("prefill")
    clock.sleep(0.5)
    outer = meter.end("outer")
    assert prefill.total_energy_j == pytest.approx(0.5 * 100 + 0.5 * 300, rel=1e-3)
    assert prefill.duration_s == pytest.approx(1.0)
    assert outer.total_energy_j == pytest.approx(2.0 * 100 + 1.0 * 300, rel=1e-3)
    assert meter.spans["prefill"] is prefill and meter.spans["outer"] is outer and meter.result is outer
    assert [name for name, _ in meter.history] == ["prefill", "outer"]
    assert not meter.is_open and CountingReplay.opens == 1  # opened by the first begin, closed by the last end


def test_overlapping_windows_are_allowed_and_each_keeps_its_own_edges(setup):
    clock, backend = setup
    meter = EnergyMeter([backend], clock=clock, sync="none")
    meter.begin("a")
    clock.sleep(1.0)
    meter.begin("b")
    clock.sleep(1.0)
    a = meter.end("a")  # ends while b is still open
    clock.sleep(1.0)
    b = meter.end("b")
    assert a.total_energy_j == pytest.approx(200.0, rel=1e-3)
    assert b.total_energy_j == pytest.approx(100.0 + 300.0, rel=1e-3)


@pytest.mark.parametrize("mistake,words", [
    (lambda m: m.end("never"), "was never begun"),
    (lambda m: (m.begin("x"), m.begin("x")), "already open"),
    (lambda m: m.begin(""), "needs a name"),
])
def test_window_mistakes_are_one_line_usage_errors(setup, mistake, words):
    clock, backend = setup
    meter = EnergyMeter([backend], clock=clock, sync="none")
    with pytest.raises(UsageError, match=words):
        mistake(meter)
    meter.close()
    assert not meter.is_open


def test_a_with_block_is_one_window_and_named_windows_share_its_backends(setup):
    clock, backend = setup
    with EnergyMeter([backend], clock=clock, sync="none", idle_s=0.5) as meter:
        clock.sleep(0.5)
        meter.begin("step")
        clock.sleep(0.5)
        meter.end("step")
        clock.sleep(2.0)
    assert CountingReplay.opens == 1 and not meter.is_open
    assert meter.result is meter.history[-1][1] and meter.history[-1][0] == ""
    assert meter.result.total_energy_j == pytest.approx(0.5 * 100 + 0.5 * 100 + 0.5 * 100 + 1.5 * 300, rel=1e-3)
    assert meter.spans["step"].total_energy_j == pytest.approx(50.0, rel=1e-3)
    assert meter.result.idle_power_w["replay:cpu"] == pytest.approx(100.0, rel=1e-3)
    assert meter.result.dynamic_energy_j == pytest.approx(meter.result.total_energy_j - 100.0 * 3.0, rel=1e-3)


def test_open_keeps_the_backends_across_windows_with_one_idle_baseline(setup):
    clock, backend = setup
    meter = EnergyMeter([backend], clock=clock, sync="none", idle_s=0.25).open()
    for _ in range(3):
        meter.begin("step")
        clock.sleep(0.1)
        meter.end("step")
    assert meter.is_open and CountingReplay.opens == 1 and len(meter.history) == 3
    meter.close()
    assert not meter.is_open


def test_the_decorator_measures_each_call(setup):
    clock, backend = setup
    meter = EnergyMeter([backend], clock=clock, sync="none")

    @meter
    def generate(seconds: float) -> str:
        clock.sleep(seconds)
        return "done"

    assert generate(0.25) == "done" and generate(0.5) == "done"
    assert generate.__name__ == "generate" and generate.meter is meter
    name = generate.__qualname__
    assert [n for n, _ in meter.history] == [name, name]
    assert meter.history[0][1].total_energy_j == pytest.approx(25.0, rel=1e-3)
    assert meter.spans[name].total_energy_j == pytest.approx(50.0, rel=1e-3)
    assert meter.result is meter.spans[name] and not meter.is_open


def test_the_decorator_form_with_a_fresh_meter_and_a_failing_call(setup):
    clock, backend = setup

    @EnergyMeter([backend], clock=clock, sync="none")
    def step(fail: bool) -> None:
        clock.sleep(0.1)
        if fail:
            raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        step(True)  # the function's own error comes through; its window is still recorded
    assert step.meter.result.total_energy_j == pytest.approx(10.0, rel=1e-3)
    assert not step.meter.is_open


def test_sync_choices(setup):
    clock, backend = setup
    calls = []
    meter = EnergyMeter([backend], clock=clock, sync=lambda: calls.append(clock()))
    meter.begin("w")
    clock.sleep(0.1)
    meter.end("w")
    assert len(calls) == 2  # once before the start edge, once before the end edge
    with pytest.raises(UsageError, match="sync must be one of 'torch', 'none' or a callable"):
        EnergyMeter([backend], clock=clock, sync="cuda")
    EnergyMeter([backend], clock=clock, sync="torch")  # a no-op without CUDA; accepted everywhere


FAST = MeterConfig(window_s=0.2, repeats=3, precision=0.0, idle_s=0.1, min_warmup_s=0.05, max_warmup_s=0.1,
                   sample_interval_s=0.01)


def test_measure_any_callable_with_its_sync(setup):
    clock, backend = setup
    syncs, modes = [], []

    def step(x):
        modes.append(torch.is_inference_mode_enabled())
        clock.sleep(0.01)

    m = measure(step, (torch.zeros(3),), backend=[backend], config=FAST, clock=clock, sync=lambda: syncs.append(1))
    assert m.label.endswith("step") and m.batch_size == 3 and len(m.windows) == 3
    assert m.per_inference_j == pytest.approx(100.0 * 0.01, rel=0.02)  # the first 2 s draw 100 W
    assert syncs and not any(modes)  # a plain callable runs outside inference mode (it may train)

    class Model(torch.nn.Module):
        def forward(self, x):
            step(x)
            return x

    modes.clear()
    model = Model()
    measure(model, torch.zeros(1, 3), backend=[ReplayBackend(backend.path, clock=clock)], config=FAST, clock=clock)
    assert modes and all(modes)  # a model runs in inference mode
    with pytest.raises(UsageError, match="needs its inputs"):
        measure(model, backend=[backend], config=FAST, clock=clock)
    with pytest.raises(UsageError, match="a torch.nn.Module or a callable"):
        measure(42, backend=[backend], config=FAST, clock=clock)
