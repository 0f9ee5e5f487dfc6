"""Progress that tells the truth: the meter plans the windows its precision rule still needs, and
the bar shows the time spent and an estimate of what is left, on a terminal (tqdm) and, as one line
every few seconds, in a log. Simulated clocks throughout: nothing depends on the wall clock."""

from __future__ import annotations

import io
import math

import pytest

from energyprune.cli.progress import ProgressBar, format_duration, time_left_s
from energyprune.clock import SimulatedClock
from energyprune.measure.meter import Meter, MeterConfig
from energyprune.measure.plan import measure_plan
from tests.fakes.scripted import SensingScriptedBackend


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_line_per_phase_and_one_every_few_seconds_with_elapsed_and_left():
    stream, clock = io.StringIO(), Clock()
    bar = ProgressBar(stream, clock=clock, interval_s=5.0)  # a StringIO is not a terminal
    bar("idle", 0.0, "measuring idle power for 1 s")
    clock.now = 1.0
    bar("idle", 1.0, "idle power measured")
    for i in range(30):  # warm-up: a call every 0.1 s for 3 s
        clock.now = 1.0 + 0.1 * i
        bar("warmup", min(1.0, 0.1 * i / 10.0), f"warming up: {i} calls")
    start = clock.now = 4.0
    for second in range(57):  # 57 s of windows, one progress call a second
        clock.now = start + second
        bar("measure", second / 57.0, f"window {second} of ~57")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("idle   0% | measuring idle power")
    assert sum(line.startswith("warmup") for line in lines) == 1  # 3 s: the phase's first line only
    measure_lines = [line for line in lines if line.startswith("measure")]
    assert len(measure_lines) == 12  # 0, 5, ..., 55 s: one line every 5 s, not one per phase
    assert all("elapsed" in line for line in lines)
    # 20 s into the measuring phase, 20/57 of the way: 37 s are left.
    twentieth = next(line for line in measure_lines if "window 20 of" in line)
    assert "0:20 elapsed, ~0:37 left" in twentieth
    assert "time left unknown yet" in measure_lines[0]  # at 0% nothing can be said
    assert "\r" not in stream.getvalue()


def test_a_terminal_gets_a_tqdm_bar_with_elapsed_and_left():
    pytest.importorskip("tqdm")
    stream, clock = io.StringIO(), Clock()
    bar = ProgressBar(stream, clock=clock, tty=True)
    bar("measure", 0.25, "window 3 of ~12, +-4.0% (95%)")
    clock.now = 1.0
    bar("measure", 0.5, "window 6 of ~12, +-2.5% (95%)")
    bar.close()
    text = stream.getvalue()
    assert "measure" in text and "50%|" in text and "window 6 of ~12" in text
    assert "elapsed" in text and "left]" in text


def test_duration_and_time_left():
    assert [format_duration(s) for s in (7, 65, 3723, None, math.inf)] == ["0:07", "1:05", "1:02:03", "?", "?"]
    assert time_left_s(20.0, 0.5) == 20.0 and time_left_s(5.0, 0.0) is None and time_left_s(5.0, 1.0) == 0.0


def test_the_plan_counts_the_windows_the_precision_still_needs():
    # Without a precision target the repeats are the plan.
    assert measure_plan(3, 6, math.inf, 0.0, 6.0, 60.0).expected == 6
    # Too few windows for a 95% interval: at least six.
    assert measure_plan(3, 3, math.inf, 0.02, 6.0, 60.0).expected == 6
    # Six windows at +-4% when +-2% is asked: about 6 x (4/2)^2 = 24 windows.
    plan = measure_plan(6, 6, 0.04, 0.02, 12.0, 60.0)
    assert plan.expected == 24 and plan.fraction == pytest.approx(0.25)
    # ... but --max-duration leaves room for 30 windows of 2 s only, so 24 stays; with 20 s, 10.
    assert measure_plan(6, 6, 0.04, 0.02, 12.0, 20.0).expected == 10
    # Reached: done.
    assert measure_plan(9, 6, 0.015, 0.02, 18.0, 60.0).fraction == 1.0


def test_the_meters_fraction_does_not_sit_at_one_while_it_adds_windows():
    clock = SimulatedClock()
    fake = SensingScriptedBackend(idle_w=10.0, call_energy_j=0.2, tick_s=0.01, clock=clock)
    calls = {"n": 0}

    def workload():
        calls["n"] += 1
        fake.call()
        clock.sleep(0.001 if (calls["n"] // 40) % 2 else 0.004)  # windows that disagree: the interval stays wide

    seen: list[tuple[float, str]] = []
    config = MeterConfig(window_s=0.05, repeats=3, precision=0.01, max_duration_s=0.8, idle_s=0.05,
                         max_warmup_s=0.02, sample_interval_s=0.002)
    m = Meter([fake], config, clock=clock, progress=lambda p, f, msg: seen.append((f, msg)) if p == "measure" else None
              ).measure(workload)
    assert len(m.windows) > config.repeats  # more windows than the minimum were needed
    fractions = [f for f, _ in seen]
    assert fractions[-1] == 1.0 and max(fractions[:-1]) < 1.0  # 100% only once it is done
    assert fractions[config.repeats - 1] < 0.8  # at the minimum number of windows it is far from done
    assert "of ~" in seen[0][1] and "asked" in seen[0][1]
