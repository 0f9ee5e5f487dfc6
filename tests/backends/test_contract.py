"""One set of assertions for every backend, each a real class running on its fake (psutil's
test_contracts idea): whatever backend the meter gets, it can rely on these."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest

from energyprune.backends.base import Availability, Backend, PowerSensor
from energyprune.backends.estimated import EstimatedBackend
from energyprune.backends.nvml import NvmlBackend
from energyprune.backends.rapl import RaplBackend
from energyprune.backends.replay import ReplayBackend
from energyprune.clock import SimulatedClock
from energyprune.backends.base import DomainInfo, Provenance
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.fakes.powercap import add_energy, two_sockets_with_dram


def _rapl(tmp_path) -> tuple[Backend, Callable[[], None]]:
    zones = two_sockets_with_dram(tmp_path / "powercap")

    def advance() -> None:
        for zone in zones.values():
            add_energy(zone, 1_500_000)  # 1.5 J

    return RaplBackend(tmp_path / "powercap", cpuinfo_path=tmp_path / "missing"), advance


def _nvml(tmp_path) -> tuple[Backend, Callable[[], None]]:
    clock = SimulatedClock()
    gpus = [FakeGpu(load_w=300.0), FakeGpu(load_w=120.0)]
    fake = make_fake_pynvml(gpus, tick_s=0.01, clock=clock)
    return NvmlBackend(nvml=fake, environ={}, clock=clock), lambda: clock.sleep(0.03)


def _estimated(tmp_path) -> tuple[Backend, Callable[[], None]]:
    busy = {"s": 0.0}
    clock = {"t": 0.0}

    def advance() -> None:
        clock["t"] += 1.0
        busy["s"] += 1.0  # one of two CPUs busy for a second

    backend = EstimatedBackend(cpu_times=lambda: (busy["s"], 2 * clock["t"]), process_cpu_s=lambda: busy["s"], logical_cpus=2,
                               memory_total_bytes=8 * 2**30, clock=lambda: clock["t"],
                               cpuinfo_path=tmp_path / "missing")
    return backend, advance


def _replay(tmp_path) -> tuple[Backend, Callable[[], None]]:
    path = tmp_path / "trace.csv"
    rows = ["t_s,gpu_energy_j,gpu_power_w"] + [f"{i / 100:.2f},{i * 2.0:.1f},200" for i in range(0, 1001)]
    path.write_text("\n".join(rows) + "\n")
    clock = SimulatedClock()
    return ReplayBackend(path, clock=clock), lambda: clock.sleep(0.03)


FACTORIES = {"rapl": _rapl, "nvml": _nvml, "estimated": _estimated, "replay": _replay}


@pytest.fixture(params=sorted(FACTORIES))
def backend_and_advance(request, tmp_path) -> Iterator[tuple[Backend, Callable[[], None]]]:
    backend, advance = FACTORIES[request.param](tmp_path)
    yield backend, advance
    backend.close()


def test_is_a_backend_with_a_name_and_provenance(backend_and_advance):
    backend, _ = backend_and_advance
    assert isinstance(backend, Backend)
    assert isinstance(backend.name, str) and backend.name
    assert isinstance(backend.provenance, Provenance)


def test_probe_is_ok_cached_and_explains(backend_and_advance):
    backend, _ = backend_and_advance
    first = backend.probe()
    assert isinstance(first, Availability) and first.ok and first.reason
    assert backend.probe() == first


def test_domains_are_unique_prefixed_and_labelled(backend_and_advance):
    backend, _ = backend_and_advance
    backend.open()
    domains = list(backend.domains())
    assert domains and all(isinstance(d, DomainInfo) for d in domains)
    names = [d.name for d in domains]
    assert len(set(names)) == len(names)
    assert all(d.backend == backend.name for d in domains)
    assert all(d.provenance is backend.provenance for d in domains)
    if backend.provenance is Provenance.ESTIMATED:
        assert all(d.assumptions and d.model_relative_uncertainty > 0 for d in domains)
    else:
        assert all(d.model_relative_uncertainty == 0 for d in domains)


def test_read_gives_cumulative_joules_for_every_counter_domain(backend_and_advance):
    backend, advance = backend_and_advance
    backend.open()
    counters = {d.name for d in backend.domains() if d.has_counter}
    first = backend.read()
    assert set(first.energy_j) == counters
    assert all(abs(v) < 1e-6 for v in first.energy_j.values()), "energy is counted from open"
    advance()
    second = backend.read()
    assert second.t_s >= first.t_s
    for name in counters:
        assert math.isfinite(second.energy_j[name])
        assert second.energy_j[name] > first.energy_j[name]


def test_power_sensor_answers_watts_for_known_domains(backend_and_advance):
    backend, _ = backend_and_advance
    if not isinstance(backend, PowerSensor):
        pytest.skip(f"{backend.name} has no instantaneous power sensor")
    backend.open()
    power = backend.power_w()
    names = {d.name for d in backend.domains()}
    assert power and set(power) <= names
    assert all(v >= 0 and math.isfinite(v) for v in power.values())


def test_close_is_idempotent(backend_and_advance):
    backend, _ = backend_and_advance
    backend.open()
    backend.close()
    backend.close()
