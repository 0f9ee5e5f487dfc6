"""The replay backend on small traces written to tmp_path, against a fake clock."""

from __future__ import annotations

import pytest

from energyprune.backends.base import Backend, PowerSensor
from energyprune.backends.replay import ReplayBackend
from energyprune.errors import BackendError, BackendUnavailable
from energyprune.backends.base import Provenance

# A GPU whose counter ticks every 0.1 s while rows come every 0.05 s; a CPU with power only.
TRACE = """\
t_s,gpu0_energy_j,gpu0_power_w,cpu_power_w
0.0,1000.0,80.0,20.0
0.05,1000.0,81.0,21.0
0.1,1008.0,82.0,22.0
0.15,1008.0,83.0,23.0
0.2,1016.0,84.0,24.0
0.25,1016.0,85.0,25.0
0.3,1024.0,86.0,26.0
"""


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write(tmp_path, text: str, name: str = "trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def opened(tmp_path, text: str = TRACE, t_open: float = 50.0):
    clock = FakeClock(t_open)
    backend = ReplayBackend(write(tmp_path, text), clock=clock)
    backend.open()
    return backend, clock


# ---- reading ----------------------------------------------------------------------------------
def test_counter_stays_coarse_between_rows(tmp_path):
    backend, clock = opened(tmp_path)
    clock.now = 50.0 + 0.099  # before the tick at 0.1 s: nothing yet
    assert backend.read().energy_j == {"replay:gpu0": 0.0}
    clock.now = 50.0 + 0.1
    assert backend.read().energy_j["replay:gpu0"] == 8.0
    clock.now = 50.0 + 0.19  # between rows and before the next tick: still 8, not interpolated
    assert backend.read().energy_j["replay:gpu0"] == 8.0
    clock.now = 50.0 + 0.3  # 50.3 - 50.0 is 0.29999999999999716 in floats: still the 0.3 row
    reading = backend.read()
    assert reading.energy_j["replay:gpu0"] == 24.0
    assert reading.t_s == 50.3


def test_energy_is_relative_to_the_value_at_open(tmp_path):
    backend, clock = opened(tmp_path, t_open=7.0)
    clock.now = 7.0
    assert backend.read().energy_j["replay:gpu0"] == 0.0  # the trace's 1000 J is not reported
    clock.now = 7.25
    assert backend.read().energy_j["replay:gpu0"] == 16.0


def test_reopening_restarts_the_trace(tmp_path):
    backend, clock = opened(tmp_path, t_open=0.0)
    clock.now = 0.3
    assert backend.read().energy_j["replay:gpu0"] == 24.0
    backend.close()
    backend.open()  # t = 0 is now 0.3 on the clock
    clock.now = 0.4
    assert backend.read().energy_j["replay:gpu0"] == 8.0


def test_power_is_sample_and_hold(tmp_path):
    backend, clock = opened(tmp_path, t_open=0.0)
    clock.now = 0.12
    assert backend.power_w() == {"replay:gpu0": 82.0, "replay:cpu": 22.0}
    clock.now = 0.149
    assert backend.power_w()["replay:cpu"] == 22.0
    clock.now = 0.15
    assert backend.power_w()["replay:cpu"] == 23.0


def test_domains(tmp_path):
    backend, _ = opened(tmp_path)
    gpu, cpu = backend.domains()
    assert gpu.name == "replay:gpu0"
    assert gpu.has_counter and gpu.method == "replay-counter"
    assert gpu.resolution_s == pytest.approx(0.1)  # the counter's tick, not the 0.05 s rows
    assert cpu.name == "replay:cpu"
    assert not cpu.has_counter and cpu.method == "replay-power"
    assert "replay:cpu" not in backend.read().energy_j  # the meter integrates its power
    for d in (gpu, cpu):
        assert d.provenance is Provenance.MEASURED
        assert d.backend == "replay"
    assert backend.provenance is Provenance.MEASURED


def test_counter_that_ticks_once_or_never(tmp_path):
    backend, _ = opened(tmp_path, "t_s,b_energy_j\n0,5\n1,6\n2,6\n4,6\n")
    (b,) = backend.domains()
    assert b.resolution_s == 1.0  # one change, 1 s after the first row
    # A counter that never changes could only ever measure 0 J: the trace is refused at once.
    path = tmp_path / "frozen.csv"
    path.write_text("t_s,a_energy_j,b_energy_j\n0,5,5\n1,5,6\n2,5,6\n4,5,6\n")
    availability = ReplayBackend(path).probe()
    assert not availability.ok and "a_energy_j never changes" in availability.reason


def test_past_the_end_is_an_error_with_the_fix(tmp_path):
    text = "t_s,gpu_energy_j\n0,0\n6,10\n12.0,20\n"
    backend, clock = opened(tmp_path, text, t_open=100.0)
    clock.now = 112.0
    assert backend.read().energy_j["replay:gpu"] == 20.0  # the last row itself is fine
    clock.now = 112.3
    path = tmp_path / "trace.csv"
    expected = (f"the replay trace {path} ends at t=12.0 s but the measurement reached "
                f"t=12.3 s: record a longer trace or measure for less time")
    with pytest.raises(BackendError) as excinfo:
        backend.read()
    assert str(excinfo.value) == expected
    with pytest.raises(BackendError, match="ends at t=12.0 s"):
        backend.power_w()


def test_a_trace_that_starts_late_replays_from_its_first_row(tmp_path):
    # The H200 trace starts at t_s = 2.68 s (its samplers began after warm-up): it replays as it is.
    backend, clock = opened(tmp_path, "t_s,gpu_energy_j\n0.5,0\n1,10\n", t_open=0.0)
    clock.now = 0.4  # 0.9 s of trace time
    assert backend.read().energy_j["replay:gpu"] == 0.0
    clock.now = 0.5
    assert backend.read().energy_j["replay:gpu"] == 10.0


def test_before_the_first_row_is_an_error(tmp_path):
    path = write(tmp_path, "t_s,gpu_energy_j\n0.5,0\n1,10\n")
    clock = FakeClock(0.0)
    backend = ReplayBackend(path, clock=clock, start_s=0.0)  # open() stands for t_s = 0
    backend.open()
    clock.now = 0.4
    with pytest.raises(BackendError, match="starts at t=0.5 s"):
        backend.read()
    clock.now = 0.5
    assert backend.read().energy_j["replay:gpu"] == 0.0


def test_read_before_open_is_an_error(tmp_path):
    backend = ReplayBackend(write(tmp_path, TRACE), clock=FakeClock())
    assert backend.probe().ok
    with pytest.raises(BackendError, match="before open"):
        backend.read()


# ---- provenance -------------------------------------------------------------------------------
def test_provenance_comment_marks_the_trace_estimated(tmp_path):
    backend, _ = opened(tmp_path, "# provenance: estimated\n" + TRACE)
    assert backend.provenance is Provenance.ESTIMATED
    assert all(d.provenance is Provenance.ESTIMATED for d in backend.domains())
    assert "estimated" in backend.probe().reason


def test_provenance_comment_measured_is_accepted(tmp_path):
    backend, _ = opened(tmp_path, "#Provenance: Measured\n" + TRACE)
    assert backend.provenance is Provenance.MEASURED


def test_unknown_provenance_is_malformed(tmp_path):
    availability = ReplayBackend(write(tmp_path, "# provenance: guessed\n" + TRACE)).probe()
    assert not availability.ok
    assert "guessed" in availability.reason and "line 1" in availability.reason


# ---- malformed files --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("# provenance: measured\n\n", "is empty"),
        ("time,gpu_energy_j\n0,1\n", "no t_s column"),
        ("t_s,temperature_c\n0,40\n", "no <domain>_energy_j or <domain>_power_w column"),
        ("t_s,gpu_energy_j\n", "no data rows"),
        ("t_s,gpu_energy_j\n0,1\n0.1,abc\n", "line 3, column gpu_energy_j: 'abc' is not a finite"),
        ("t_s,gpu_energy_j\n0,1\n0.1,\n", "line 3, column gpu_energy_j: '' is not a finite"),
        ("t_s,gpu_power_w\n0,1\nnan,2\n", "line 3, column t_s: 'nan' is not a finite"),
        ("t_s,gpu_energy_j\n0,1\n0.2,2\n0.1,3\n", "line 4: t_s decreases"),
        ("t_s,gpu_energy_j\n-1,1\n0.2,2\n", "line 2: t_s starts at -1, below 0"),
        ("t_s,gpu_energy_j\n0,5\n0.1,6\n0.2,4\n", "line 4, column gpu_energy_j: the counter "
                                                   "decreases"),
        ("t_s,gpu_power_w\n0,5\n0.1,-6\n", "line 3, column gpu_power_w: a power of -6 W"),
        ("t_s,gpu_energy_j\n0,5\n0.1\n", "line 3: 1 cells, but the header has 2"),
        ("t_s,gpu_energy_j,gpu_energy_j\n0,5,5\n", "'gpu_energy_j' appears twice"),
        ("t_s,_energy_j\n0,5\n", "needs a domain name"),
    ],
)
def test_malformed_trace_is_reported_by_probe_and_open(tmp_path, text, expected):
    path = write(tmp_path, text)
    backend = ReplayBackend(path, clock=FakeClock())
    availability = backend.probe()
    assert not availability.ok
    assert expected in availability.reason
    assert str(path) in availability.reason
    assert availability.fix
    with pytest.raises(BackendUnavailable, match="replay trace"):
        backend.open()


def test_line_numbers_count_the_comment(tmp_path):
    text = "# provenance: estimated\nt_s,gpu_energy_j\n0,1\nx,2\n"
    availability = ReplayBackend(write(tmp_path, text)).probe()
    assert "line 4, column t_s: 'x'" in availability.reason


def test_missing_file(tmp_path):
    backend = ReplayBackend(tmp_path / "absent.csv")
    availability = backend.probe()
    assert not availability.ok
    assert "does not exist" in availability.reason
    with pytest.raises(BackendUnavailable, match="does not exist"):
        backend.open()


def test_probe_is_cached(tmp_path):
    path = write(tmp_path, TRACE)
    backend = ReplayBackend(path)
    first = backend.probe()
    assert first.ok
    path.unlink()
    assert backend.probe() is first  # parsed once; deleting the file afterwards changes nothing


def test_extra_columns_and_blank_lines_are_tolerated(tmp_path):
    text = "t_s, gpu_energy_j ,temperature_c\n0,0,40\n\n1,5,hot\n"
    backend, clock = opened(tmp_path, text, t_open=0.0)
    clock.now = 1.0
    assert backend.read().energy_j == {"replay:gpu": 5.0}


def test_satisfies_the_protocols(tmp_path):
    backend = ReplayBackend(write(tmp_path, TRACE))
    assert isinstance(backend, Backend)
    assert isinstance(backend, PowerSensor)
