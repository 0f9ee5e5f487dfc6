from __future__ import annotations

import pytest

from energyprune.clock import SimulatedClock
from energyprune.errors import MeasurementError, UsageError
from energyprune.backends.base import Provenance
from energyprune.measure.meter import Meter, MeterConfig
from tests.fakes.scripted import ScriptedBackend, SensingScriptedBackend

FAST = MeterConfig(window_s=0.15, repeats=4, precision=0.0, max_duration_s=1.0, idle_s=0.1,
                   max_warmup_s=0.05, sample_interval_s=0.002)




@pytest.mark.parametrize("backend_cls", [ScriptedBackend, SensingScriptedBackend])
def test_meter_recovers_the_energy_of_each_call_despite_a_coarse_counter(backend_cls):
    clock = SimulatedClock()
    fake = backend_cls(idle_w=100.0, call_energy_j=0.5, tick_s=0.02, clock=clock)

    def workload():
        fake.call()
        clock.sleep(0.002)

    m = Meter([fake], FAST, clock=clock).measure(workload, batch_size=4)
    # Above idle, each call costs exactly its impulse; the edge corrections must not leak a tick.
    assert m.per_inference_dynamic_j == pytest.approx(0.5, rel=0.03)
    latency = m.latency_s["median"]
    assert m.per_inference_j == pytest.approx(0.5 + 100.0 * latency, rel=0.03)
    assert m.per_sample_j == pytest.approx(m.per_inference_j / 4)
    assert m.total_idle_power_w == pytest.approx(100.0, rel=0.03)
    low, high = m.ci95_j
    assert low <= m.per_inference_j <= high
    assert m.provenance is Provenance.MEASURED
    assert len(m.windows) == 4 and m.stop_reason == "repeats-done"
    assert all(w.duration_s >= 0.15 * 0.8 for w in m.windows)


def test_each_window_matches_the_true_energy_of_its_interval():
    clock = SimulatedClock()
    fake = SensingScriptedBackend(idle_w=50.0, call_energy_j=1.0, tick_s=0.05, clock=clock)
    windows = []

    def workload():
        fake.call()
        clock.sleep(0.003)

    m = Meter([fake], FAST, clock=clock).measure(workload)
    for w in m.windows:
        windows.append(w)
        # one tick of the counter is 50 W x 0.05 s = 2.5 J; the correction must beat that by far
        assert w.energy_j["fake:0"] == pytest.approx(w.n_inferences * 1.0 + 50.0 * w.duration_s, abs=0.5)
    assert len(windows) == 4


def test_precision_rule_stops_early_and_says_so():
    clock = SimulatedClock()
    fake = SensingScriptedBackend(idle_w=10.0, call_energy_j=0.2, tick_s=0.01, clock=clock)

    def workload():
        fake.call()
        clock.sleep(0.001)

    config = MeterConfig(window_s=0.05, repeats=3, precision=0.5, max_duration_s=5.0, idle_s=0.05,
                         max_warmup_s=0.02, sample_interval_s=0.002)
    m = Meter([fake], config, clock=clock).measure(workload)
    assert m.stop_reason == "precision-reached"
    # 3 repeats asked, but the median's interval reaches 95% only from 6 windows on
    assert len(m.windows) == 6 and m.ci95_j.level >= 0.95


def test_max_duration_stops_and_warns_when_precision_is_not_reached():
    clock = SimulatedClock()
    fake = SensingScriptedBackend(idle_w=10.0, call_energy_j=0.2, tick_s=0.01, clock=clock)
    calls = {"n": 0}

    def workload():
        calls["n"] += 1
        # alternate cheap and expensive windows so the interval cannot close
        fake.call()
        clock.sleep(0.001 if (calls["n"] // 40) % 2 else 0.004)

    config = MeterConfig(window_s=0.05, repeats=3, precision=1e-6, max_duration_s=0.4, idle_s=0.05,
                         max_warmup_s=0.02, sample_interval_s=0.002)
    m = Meter([fake], config, clock=clock).measure(workload)
    assert m.stop_reason == "max-duration-reached"
    # Fewer than six windows give no 95% interval at all: said so, never as "+-inf%".
    expected = "no 95% interval" if len(m.windows) < 6 else "wider than the"
    assert any(expected in w and "ran out" in w for w in m.warnings), m.warnings
    assert not any("inf%" in w for w in m.warnings)


def test_compare_interleaves_and_reports_the_ratio():
    clock = SimulatedClock()
    fake = SensingScriptedBackend(idle_w=0.0, call_energy_j=1.0, tick_s=0.01, clock=clock)

    def cheap():
        fake.call()
        clock.sleep(0.002)

    def dear():
        fake.call()
        fake.call()
        clock.sleep(0.002)

    comparison = Meter([fake], FAST, clock=clock).compare(cheap, dear)
    assert comparison.ratio == pytest.approx(2.0, rel=0.05)
    low, high = comparison.ratio_ci95
    assert low <= 2.0 * 1.05 and high >= 2.0 * 0.95
    labels = [w.label for w in sorted(comparison.a.windows + comparison.b.windows, key=lambda w: w.index)]
    assert labels[:4] == ["A", "B", "A", "B"] and labels[-1] == "A"
    assert len(comparison.a.windows) == len(comparison.b.windows) + 1


def test_failing_workload_is_a_clear_measurement_error():
    clock = SimulatedClock()
    fake = SensingScriptedBackend(clock=clock)

    def broken():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(MeasurementError, match="shapes cannot be multiplied"):
        Meter([fake], FAST, clock=clock).measure(broken)


@pytest.mark.parametrize("kwargs", [{"window_s": 0}, {"repeats": 0}, {"max_duration_s": 0}, {"precision": -1}])
def test_bad_config_is_a_usage_error(kwargs):
    with pytest.raises(UsageError):
        MeterConfig(**kwargs)


class OtherProcess:
    """An `agree` that plays a second process: it needs `calls` calls per window, is warm only
    after `warm_after` warm-up calls, and is done only after `windows` windows."""

    def __init__(self, calls: int, warm_after: int, windows: int) -> None:
        self.calls, self.warm_after, self.windows = calls, warm_after, windows
        self.warm_asks = 0
        self.stop_asks = 0
        self.phase = "warmup"

    def __call__(self, value: float, op: str) -> float:
        if op == "max":  # calls per window: the warm-up has ended by now
            self.phase = "measure"
            return max(value, float(self.calls))
        if self.phase == "warmup":
            self.warm_asks += 1
            return min(value, 1.0 if self.warm_asks >= self.warm_after else 0.0)
        self.stop_asks += 1
        return min(value, 1.0 if self.stop_asks >= self.windows else 0.0)


def test_an_agreement_makes_the_meter_call_as_often_as_the_slowest_process():
    """In lockstep every decision that sets how often the workload runs is the group's: the
    warm-up lasts until the other process is warm, each window takes the calls it needs, and the
    measurement goes on until it is done too."""
    clock = SimulatedClock()
    fake = ScriptedBackend(idle_w=10.0, call_energy_j=0.1, tick_s=0.01, clock=clock)
    calls = []

    def workload():
        calls.append(1)
        fake.call()
        clock.sleep(0.002)  # alone: ~25 warm-up calls in max_warmup_s (0.05 s), ~75 calls per 0.15 s window

    other = OtherProcess(calls=150, warm_after=40, windows=6)
    m = Meter([fake], FAST, agree=other, clock=clock).measure(workload)
    assert m.warmup_inferences >= 40  # the warm-up lasts until the other process is warm too
    assert [w.n_inferences for w in m.windows] == [150] * 6  # the other process's count, each window
    assert len(m.windows) == 6 and m.stop_reason == "repeats-done"  # 4 repeats asked, 6 agreed
    assert len(calls) == m.warmup_inferences + 6 * 150

    alone = Meter([fake], FAST, clock=clock).measure(workload)
    assert len(alone.windows) == 4 and alone.warmup_inferences < 40
    assert all(w.n_inferences < 150 for w in alone.windows)
