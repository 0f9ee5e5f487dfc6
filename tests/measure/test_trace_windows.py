"""Short windows on a 10 Hz sensor, checked against a real H200 trace (issue 15).

The trace (`benchmarks/results/nvidia-h200/traces/`) replays through the `replay` backend on a
simulated clock; `energyprune.bench.trace_truth` defines what each span truly held and places
`EnergyMeter` spans at random offsets and around single bursts. No wall time is involved: every
read costs the H200's 3 ms of simulated time. The full experiment (more spans per length) is
`benchmarks/windows_benchmark.py`; its figures are in `benchmarks/results/nvidia-h200/windows.md`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from energyprune.backends.replay import ReplayBackend
from energyprune.bench import trace_truth
from energyprune.clock import SimulatedClock
from energyprune.measure.api import EnergyMeter
from energyprune.measure.meter import MeterSession
from energyprune.measure.periods import update_period_s

TRACES = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "nvidia-h200" / "traces"
TRACE = TRACES / "h200-workload-trace.csv"
EVENTS = TRACES / "h200-workload-events.csv"


@pytest.fixture(scope="module")
def random_spans():
    return trace_truth.run(TRACE, EVENTS, lengths=(0.005, 0.02, 0.1, 0.5, 1.0, 5.0), per_segment=5, seed=7)


def test_intervals_hold_the_truth_at_every_length(random_spans):
    rows = trace_truth.summary(random_spans)
    assert [r["length_s"] for r in rows] == [0.005, 0.02, 0.1, 0.5, 1.0, 5.0]
    for row in rows:
        assert row["spans"] >= 5, row
        assert row["coverage"] >= 0.95, row


def test_point_figure_is_within_five_percent_from_half_a_second(random_spans):
    for row in trace_truth.summary(random_spans):
        if row["length_s"] >= 0.5:
            assert row["median_abs_error"] <= 0.05, row
    # And the bounds tighten as the span grows: a 5 s span is known to a few percent.
    five = [r for r in trace_truth.summary(random_spans) if r["length_s"] == 5.0][0]
    assert five["median_half_width"] < 0.05


def test_spans_shorter_than_three_ticks_say_they_are_below_resolution(random_spans):
    for span in random_spans:
        assert span.below_resolution == (span.t1 - span.t0 < 0.3), span


def test_spans_around_single_bursts_hold_the_truth():
    spans = trace_truth.run_at_bursts(TRACE, EVENTS, every=6)
    assert len(spans) >= 8
    assert {s.segment for s in spans} >= {"burst20-matmul", "burst5-matmul", "burst50-mlp"}
    assert all(s.covered for s in spans), [s for s in spans if not s.covered]
    assert all(s.below_resolution for s in spans)


def test_meter_learns_both_sensor_periods_on_the_h200_trace():
    """The trace's idle stretch: the counter ticks every 100 ms and field 186 is held ~102 ms, so
    the power field must not correct window edges, and the result says why."""
    clock = SimulatedClock(100.0)
    backend = ReplayBackend(TRACE, clock=clock, read_cost_s=trace_truth.READ_COST_S)
    with MeterSession([backend], lambda: None, 0.005, clock) as session:
        session.idle_power_w(2.0)
        periods = session.edges.periods["replay:gpu0"]
        facts = session.facts()
        notes = session.sensor_notes()
    assert periods.counter_source == "learned"
    assert periods.counter_s == pytest.approx(0.100, abs=0.003)
    assert periods.power_s == pytest.approx(0.102, abs=0.006)
    assert not periods.power_for_edges
    assert facts["sensor_periods"]["replay:gpu0"]["power_for_edges"] is False
    assert len(notes) == 1 and "no faster than its energy counter" in notes[0]


def _synthetic_trace(tmp_path, power_step_s: float) -> Path:
    """A 100 W device whose counter ticks every 100 ms and whose power field changes every
    `power_step_s` (alternating 99 and 101 W, so every update is a change)."""
    rows = ["t_s,gpu0_energy_j,gpu0_power_w"]
    t, step = 0.0, 0.001
    while t < 5.0:
        counter = 100.0 * (int(t / 0.1) * 0.1)
        power = 99.0 if int(t / power_step_s) % 2 else 101.0
        rows.append(f"{t:.4f},{counter:.6f},{power}")
        t += step
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("power_step_s, used", [(0.005, True), (0.1, False)])
def test_power_field_corrects_edges_only_where_it_is_faster_than_the_counter(tmp_path, power_step_s, used):
    clock = SimulatedClock(100.0)
    backend = ReplayBackend(_synthetic_trace(tmp_path, power_step_s), clock=clock, read_cost_s=0.001)
    with MeterSession([backend], lambda: None, 0.002, clock) as session:
        session.idle_power_w(1.5)
        periods = session.edges.periods["replay:gpu0"]
        assert session.edges.power_for_edges("replay:gpu0") is used
    assert periods.power_for_edges is used
    assert periods.power_s == pytest.approx(power_step_s, rel=0.15)


def test_without_an_idle_phase_the_power_field_is_not_trusted():
    clock = SimulatedClock(100.0)
    backend = ReplayBackend(TRACE, clock=clock, read_cost_s=trace_truth.READ_COST_S)
    with EnergyMeter([backend], clock=clock, keep_trace=False) as meter:
        clock.sleep(0.05)
    assert meter.result.below_resolution
    low, high = meter.result.total_bounds_j
    assert low <= meter.result.total_energy_j <= high
    assert any("below the counter's resolution" in w for w in meter.result.warnings)


def test_update_period_survives_missed_changes():
    # A 100 ms sensor whose value repeated twice (no change seen at 0.3 and 0.7 s).
    times = [0.0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 1.0]
    assert update_period_s(times) == pytest.approx(0.1)
    assert update_period_s(times[:3]) is None
