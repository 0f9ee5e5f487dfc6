"""Where an inference's joules go: idle power x latency, above idle, and the GPU's busy share."""

from __future__ import annotations

import pytest

from energyprune.clock import SimulatedClock
from energyprune.measure.anatomy import DeviceBusy, anatomy_of, bound_of, union_length
from energyprune.measure.meter import Meter, MeterConfig
from tests.fakes.scripted import SensingScriptedBackend

FAST = MeterConfig(window_s=0.15, repeats=4, precision=0.0, max_duration_s=1.0, idle_s=0.1,
                   max_warmup_s=0.05, sample_interval_s=0.002)


def test_a_measurement_splits_its_energy_into_idle_and_above_idle():
    clock = SimulatedClock()
    fake = SensingScriptedBackend(idle_w=100.0, call_energy_j=0.05, tick_s=0.02, clock=clock)

    def workload():
        fake.call()
        clock.sleep(0.004)  # 0.4 J of idle power per call against 0.05 J of work: launch-bound-like

    m = Meter([fake], FAST, clock=clock).measure(workload)
    anatomy = m.anatomy
    assert anatomy.idle_j == pytest.approx(100.0 * 0.004, rel=0.03)
    assert anatomy.above_idle_j == pytest.approx(0.05, rel=0.05)
    assert anatomy.idle_share == pytest.approx(0.4 / 0.45, rel=0.02)
    assert anatomy.bound == "not measured" and anatomy.busy is None
    data = m.to_dict()["anatomy"]
    assert data["idle_share"] == pytest.approx(anatomy.idle_share) and data["busy_share"] is None
    assert "89% of the energy is idle power" in data["statement"]


def test_busy_time_counts_overlapping_kernels_once():
    assert union_length([(0, 2), (1, 3), (5, 6)]) == 4
    assert union_length([(0, 10), (2, 3)]) == 10
    assert union_length([]) == 0


@pytest.mark.parametrize("share, bound", [(0.13, "launch-bound"), (0.6, "partly launch-bound"),
                                          (0.95, "compute-bound"), (None, "not measured")])
def test_the_busy_share_decides_the_bound(share, bound):
    assert bound_of(share) == bound


def test_a_launch_bound_gpu_is_told_what_cuts_its_idle_part():
    busy = DeviceBusy(busy_s=0.013, wall_s=0.1, n_calls=20, method="test")
    anatomy = anatomy_of(per_inference_j=0.147, above_idle_j=0.019, idle_power_w=124.0, latency_s=0.00103,
                         busy=busy)
    assert anatomy.bound == "launch-bound" and busy.share == pytest.approx(0.13)
    assert "CUDA graphs" in anatomy.statement and "87%" in anatomy.statement
    assert anatomy.to_dict()["busy"]["n_calls"] == 20
