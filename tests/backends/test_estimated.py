"""The estimated backend on fake machines: a VM slice of a known EPYC, an unknown CPU, a user
TDP."""

from __future__ import annotations

import pytest

from energyprune.backends.base import Backend, DeviceFactsReporter, PowerSensor
from energyprune.backends.cpu_database import CpuPowerDatabase, codecarbon_database
from energyprune.backends.estimated import (
    CPU_DOMAIN,
    RAM_DOMAIN,
    EstimatedBackend,
    lookup_tdp,
    read_cpu_model,
)
from energyprune.errors import BackendError, UsageError
from energyprune.backends.base import Provenance

GIB = 1024**3


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCpuTimes:
    """(busy_s, total_s) summed over all CPUs; the test sets `busy` before each read."""

    def __init__(self) -> None:
        self.busy = 0.0
        self.total = 0.0

    def __call__(self) -> tuple[float, float]:
        return self.busy, self.total


def cpuinfo(tmp_path, model: str | None, n: int = 2, siblings: int | None = None, virtual: bool = False):
    path = tmp_path / "cpuinfo"
    blocks = []
    for i in range(n):
        lines = [f"processor\t: {i}", "vendor_id\t: AuthenticAMD"]
        if model is not None:
            lines.append(f"model name\t: {model}")
        if siblings is not None:
            lines.append(f"siblings\t: {siblings}")
        lines.append("flags\t\t: fpu vme sse sse2 ht" + (" hypervisor" if virtual else ""))
        blocks.append("\n".join(lines))
    path.write_text("\n\n".join(blocks) + "\n")
    return path


def make(tmp_path, model="AMD EPYC 7763 64-Core Processor", logical_cpus=2,
         memory_total_bytes=8 * GIB, cpu_tdp_w=None, cpu_database=None, siblings=None, virtual=False):
    """A fake machine; by default the TDP comes from energyprune's table alone (cpu_database=None)."""
    clock, times = FakeClock(), FakeCpuTimes()
    # No other process runs on this fake machine: this process's busy time is the machine's.
    backend = EstimatedBackend(cpu_tdp_w=cpu_tdp_w, cpu_times=times, process_cpu_s=lambda: times.busy,
                               cpuinfo_path=cpuinfo(tmp_path, model, logical_cpus, siblings, virtual),
                               logical_cpus=logical_cpus, memory_total_bytes=memory_total_bytes,
                               clock=clock, cpu_database=cpu_database)
    return backend, clock, times


def domain(backend, name):
    return next(d for d in backend.domains() if d.name == name)


# ---- the model's inputs -----------------------------------------------------------------------
def test_cpu_model_read_from_cpuinfo(tmp_path):
    assert read_cpu_model(cpuinfo(tmp_path, "AMD EPYC 7763 64-Core Processor")) == \
        "AMD EPYC 7763 64-Core Processor"


def test_cpu_model_unknown_without_model_name_or_file(tmp_path):
    assert read_cpu_model(cpuinfo(tmp_path, None)) == "unknown CPU"
    assert read_cpu_model(tmp_path / "absent") == "unknown CPU"


def test_table_keys_do_not_run_on_into_other_models():
    assert lookup_tdp("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz").tdp_w == 270.0
    assert lookup_tdp("Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz") is None  # Cooper Lake
    assert lookup_tdp("AMD Ryzen 9 7950X 16-Core Processor").tdp_w == 170.0
    assert lookup_tdp("AMD Ryzen 9 7950X3D 16-Core Processor") is None  # a 120 W part
    assert lookup_tdp("13th Gen Intel(R) Core(TM) i9-13900KF").threads_per_package == 32
    assert lookup_tdp("AMD EPYC") is None


# ---- the VM share -----------------------------------------------------------------------------
def test_vm_slice_of_known_epyc_is_charged_its_share(tmp_path):
    backend, _, _ = make(tmp_path, logical_cpus=2)
    backend.open()
    m = backend.power_model()
    assert m.max_w == pytest.approx(280.0 * 2 / 128)  # 4.375 W, not 280 W
    assert m.idle_w == pytest.approx(0.3 * 4.375)
    cpu = domain(backend, CPU_DOMAIN)
    assert cpu.model_relative_uncertainty == 0.35
    assert any("vendor specification sheets" in a for a in cpu.assumptions)
    assert any("2/128" in a for a in cpu.assumptions)
    assert cpu.device == "AMD EPYC 7763 64-Core Processor (2 logical CPUs visible), estimated"
    facts = backend.device_facts()
    assert facts["cpu_tdp_w"] == 280.0
    assert facts["cpu_tdp_source"] == "energyprune's table of vendor specification sheets"
    assert facts["cpu_band"].startswith("±35%: a TDP from energyprune's table")
    assert facts["logical_cpus"] == 2
    assert facts["memory_total_bytes"] == 8 * GIB


def test_two_sockets_visible_are_charged_two_tdps(tmp_path):
    backend, _, _ = make(tmp_path, logical_cpus=256)
    assert backend.power_model().max_w == pytest.approx(560.0)


def test_unknown_model_gets_generic_default(tmp_path):
    backend, _, _ = make(tmp_path, model="Frobnicator 9000", logical_cpus=4)
    backend.open()
    assert backend.power_model().max_w == 40.0
    cpu = domain(backend, CPU_DOMAIN)
    assert cpu.model_relative_uncertainty == 0.6
    assert any("No TDP is known for Frobnicator 9000" in a and "10 W per logical CPU" in a
               for a in cpu.assumptions)
    assert any("±60%" in a and "the 10 W-per-logical-CPU default" in a for a in cpu.assumptions)
    assert backend.device_facts()["cpu_tdp_source"].startswith("generic default")


# ---- the TDP from codecarbon's CPU database ----------------------------------------------------
SMALL_DATABASE = CpuPowerDatabase([("AMD EPYC 7763", "280.0"), ("AMD EPYC 9754", "360"),
                                   ("Intel Xeon Gold 6448Y", "225"), ("Intel Celeron 1000A", "27.29.5")],
                                  "a test database")


def test_a_database_tdp_is_printed_with_its_matched_name_and_band(tmp_path):
    backend, _, _ = make(tmp_path, cpu_database=SMALL_DATABASE)
    m = backend.power_model()
    assert m.max_w == pytest.approx(280.0 * 2 / 128)  # the threads per package come from the table
    assert m.band_case == "database" and m.tdp_matched_name == "AMD EPYC 7763"
    cpu = domain(backend, CPU_DOMAIN)
    assert cpu.model_relative_uncertainty == 0.35
    assert any('matched to "AMD EPYC 7763" in a test database' in a and "280 W" in a for a in cpu.assumptions)
    assert any("a TDP from codecarbon's CPU power database" in a and "±35%" in a for a in cpu.assumptions)
    assert backend.device_facts()["cpu_band"] == "±35%: a TDP from codecarbon's CPU power database (AMD EPYC 7763, 280 W)"


def test_threads_per_package_from_the_cores_in_the_name(tmp_path):
    backend, _, _ = make(tmp_path, model="AMD EPYC 9754 128-Core Processor", logical_cpus=4,
                         cpu_database=SMALL_DATABASE, virtual=True)
    m = backend.power_model()
    assert m.max_w == pytest.approx(360.0 * 4 / 256)
    assert any("twice the 128 cores" in a for a in domain(backend, CPU_DOMAIN).assumptions)


def test_threads_per_package_from_siblings_on_bare_metal_only(tmp_path):
    metal, _, _ = make(tmp_path, model="Intel(R) Xeon(R) Gold 6448Y", logical_cpus=128, siblings=64,
                       cpu_database=SMALL_DATABASE)
    assert metal.power_model().max_w == pytest.approx(2 * 225.0)  # two packages of 64 logical CPUs
    vm, _, _ = make(tmp_path, model="Intel(R) Xeon(R) Gold 6448Y", logical_cpus=8, siblings=8, virtual=True,
                    cpu_database=SMALL_DATABASE)
    m = vm.power_model()
    # A VM's siblings describe its virtual socket: 8/8 of 225 W would charge it the whole package.
    assert m.band_case == "default" and m.max_w == 80.0 and m.cpu_uncertainty == 0.6
    assert any("a test database gives 225 W for one package" in a and "cannot be taken" in a
               for a in domain(vm, CPU_DOMAIN).assumptions)


def test_a_row_whose_tdp_is_not_a_number_is_no_match(tmp_path):
    assert SMALL_DATABASE.match("Intel Celeron 1000A") is None
    backend, _, _ = make(tmp_path, model="Intel Celeron 1000A", logical_cpus=1, cpu_database=SMALL_DATABASE)
    assert backend.power_model().band_case == "default"


@pytest.mark.skipif(codecarbon_database() is None, reason="codecarbon (the carbon extra) is not installed")
@pytest.mark.parametrize("model,matched,tdp_w", [
    ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763", 280.0),
    ("Intel(R) Xeon(R) Platinum 8480+", "Intel Xeon Platinum 8480+", 350.0),
    ("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", "Intel Xeon Platinum 8380", 270.0),
    ("AMD EPYC 9654 96-Core Processor", "AMD EPYC 9654", 360.0),
    ("Intel(R) Core(TM) i9-13900K", "Intel Core i9-13900K", 125.0),
])
def test_codecarbons_database_gives_the_tdp_of_common_cpus(tmp_path, model, matched, tdp_w):
    backend, _, _ = make(tmp_path, model=model, cpu_database="auto")
    m = backend.power_model()
    assert (m.tdp_matched_name, m.tdp_w, m.band_case) == (matched, tdp_w, "database")


@pytest.mark.skipif(codecarbon_database() is None, reason="codecarbon (the carbon extra) is not installed")
def test_a_cpu_codecarbon_does_not_know_keeps_the_default(tmp_path):
    backend, _, _ = make(tmp_path, model="Intel(R) Xeon(R) Processor", cpu_database="auto", virtual=True)
    m = backend.power_model()
    assert m.band_case == "default" and m.max_w == 20.0 and m.tdp_matched_name is None
    assert any("neither codecarbon's CPU power database nor energyprune's table" in a
               for a in domain(backend, CPU_DOMAIN).assumptions)


# ---- energy -----------------------------------------------------------------------------------
def test_energy_integrates_the_model_between_reads(tmp_path):
    # 2 vCPUs of an EPYC 7763: P_max = 4.375 W, P_idle = 1.3125 W; 8 GiB RAM: 3 W.
    backend, clock, times = make(tmp_path)
    backend.open()  # t = 0, busy = 0
    clock.now, times.busy = 1.0, 1.0  # one of two CPUs busy for 1 s: u = 0.5
    r1 = backend.read()
    assert r1.t_s == 1.0
    assert r1.energy_j[CPU_DOMAIN] == pytest.approx(1.3125 + 3.0625 * 0.5)  # 2.84375 J
    assert r1.energy_j[RAM_DOMAIN] == pytest.approx(3.0)
    clock.now = 3.0  # idle for 2 s: u = 0
    r2 = backend.read()
    assert r2.energy_j[CPU_DOMAIN] == pytest.approx(2.84375 + 2 * 1.3125)
    clock.now, times.busy = 4.0, 3.0  # both CPUs busy for 1 s: u = 1
    r3 = backend.read()
    assert r3.energy_j[CPU_DOMAIN] == pytest.approx(2.84375 + 2.625 + 4.375)
    assert r3.energy_j[RAM_DOMAIN] == pytest.approx(12.0)


def test_utilisation_is_clamped_to_one(tmp_path):
    backend, clock, times = make(tmp_path)
    backend.open()
    clock.now, times.busy = 1.0, 2.5  # tick quantisation can report more busy time than exists
    assert backend.read().energy_j[CPU_DOMAIN] == pytest.approx(4.375)


def test_energy_is_relative_to_open(tmp_path):
    backend, clock, times = make(tmp_path)
    clock.now, times.busy = 100.0, 500.0
    backend.open()
    clock.now = 101.0
    assert backend.read().energy_j[CPU_DOMAIN] == pytest.approx(1.3125)


def test_user_tdp_changes_energy_and_uncertainty(tmp_path):
    backend, clock, times = make(tmp_path, cpu_tdp_w=20.0)
    backend.open()
    clock.now, times.busy = 1.0, 1.0  # u = 0.5: 6 + 14 * 0.5 = 13 W
    assert backend.read().energy_j[CPU_DOMAIN] == pytest.approx(13.0)
    cpu = domain(backend, CPU_DOMAIN)
    assert cpu.model_relative_uncertainty == 0.25
    assert any("--cpu-tdp-w" in a for a in cpu.assumptions)
    assert backend.device_facts()["cpu_tdp_w"] == 20.0


def test_power_w_keeps_its_own_state(tmp_path):
    backend, clock, times = make(tmp_path)
    backend.open()
    clock.now, times.busy = 1.0, 2.0  # u = 1 over [0, 1]
    assert backend.power_w()[CPU_DOMAIN] == pytest.approx(4.375)
    clock.now = 2.0  # idle over [1, 2]
    assert backend.power_w()[CPU_DOMAIN] == pytest.approx(1.3125)
    assert backend.power_w()[RAM_DOMAIN] == pytest.approx(3.0)
    # read() has not been called since open: it integrates the whole [0, 2] at u = 0.5
    assert backend.read().energy_j[CPU_DOMAIN] == pytest.approx(2 * (1.3125 + 3.0625 * 0.5))


def test_power_w_holds_when_no_time_passed(tmp_path):
    backend, clock, times = make(tmp_path)
    backend.open()
    clock.now, times.busy = 1.0, 2.0
    first = backend.power_w()[CPU_DOMAIN]
    assert backend.power_w()[CPU_DOMAIN] == first == pytest.approx(4.375)


def test_read_before_open_is_an_error(tmp_path):
    backend, _, _ = make(tmp_path)
    with pytest.raises(BackendError, match="before open"):
        backend.read()


# ---- labels and validation --------------------------------------------------------------------
def test_every_domain_is_estimated_with_assumptions(tmp_path):
    backend, _, _ = make(tmp_path)
    backend.open()
    domains = backend.domains()
    assert {d.name for d in domains} == {CPU_DOMAIN, RAM_DOMAIN}
    for d in domains:
        assert d.provenance is Provenance.ESTIMATED
        assert d.assumptions
        assert all(a.endswith(".") for a in d.assumptions)
        assert d.has_counter and d.resolution_s == 0.0
        assert d.method == "utilisation-model"
        assert d.backend == "estimated"
    assert backend.provenance is Provenance.ESTIMATED


def test_ram_model(tmp_path):
    backend, _, _ = make(tmp_path, memory_total_bytes=64 * GIB)
    ram = domain(backend, RAM_DOMAIN)
    assert backend.power_model().ram_w == pytest.approx(24.0)
    assert ram.model_relative_uncertainty == 0.5
    assert any("constant" in a for a in ram.assumptions)
    assert ram.device == "64.0 GiB RAM, estimated"


@pytest.mark.parametrize("bad", [0, -5.0, float("nan"), float("inf"), "100"])
def test_invalid_tdp_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="cpu-tdp-w"):
        EstimatedBackend(cpu_tdp_w=bad)


def test_probe_ok_and_says_it_is_an_estimate(tmp_path):
    backend, _, _ = make(tmp_path)
    availability = backend.probe()
    assert availability.ok
    assert "not a measurement" in availability.reason
    assert backend.probe() is availability  # cached


def test_probe_not_ok_when_cpu_times_fail(tmp_path):
    def broken() -> tuple[float, float]:
        raise OSError("/proc/stat: permission denied")

    backend = EstimatedBackend(cpu_times=broken, cpuinfo_path=cpuinfo(tmp_path, None),
                               logical_cpus=2, memory_total_bytes=GIB)
    availability = backend.probe()
    assert not availability.ok
    assert "permission denied" in availability.reason


def test_probe_not_ok_without_psutil(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "psutil", None)  # makes `import psutil` raise ImportError
    availability = EstimatedBackend(cpuinfo_path=cpuinfo(tmp_path, None)).probe()
    assert not availability.ok
    assert availability.fix == "pip install psutil"


def test_defaults_with_real_psutil_run():
    backend = EstimatedBackend()
    assert backend.probe().ok
    backend.open()
    reading = backend.read()
    assert reading.energy_j[CPU_DOMAIN] >= 0.0
    assert backend.device_facts()["logical_cpus"] >= 1


def test_satisfies_the_protocols(tmp_path):
    backend, _, _ = make(tmp_path)
    assert isinstance(backend, Backend)
    assert isinstance(backend, PowerSensor)
    assert isinstance(backend, DeviceFactsReporter)


# ---- whose CPU time is charged ---------------------------------------------------------------
def shared_machine(tmp_path, charge="process"):
    """Two logical CPUs; this process keeps half of one busy while another process keeps one busy."""
    clock, times = FakeClock(), FakeCpuTimes()
    own = {"s": 0.0}
    backend = EstimatedBackend(cpu_times=times, process_cpu_s=lambda: own["s"], charge=charge,
                               cpuinfo_path=cpuinfo(tmp_path, "AMD EPYC 7763 64-Core Processor", 2),
                               logical_cpus=2, memory_total_bytes=8 * GIB, clock=clock)
    backend.open()
    clock.now += 10.0
    own["s"] += 5.0
    times.busy += 15.0  # ours (5 s) and the other process's (10 s)
    return backend


def test_only_this_process_is_charged_and_a_shared_machine_is_said(tmp_path):
    backend = shared_machine(tmp_path)
    m = backend.power_model()
    reading = backend.read()
    # utilisation of this process: 5 s / (10 s x 2 CPUs) = 0.25
    assert reading.energy_j[CPU_DOMAIN] == pytest.approx(m.cpu_power_w(0.25) * 10.0)
    (note,) = backend.run_notes()
    assert "other processes kept 50% of the CPUs busy" in note and "this process's CPU time only" in note
    assert "alone" in " ".join(domain(backend, CPU_DOMAIN).assumptions)
    assert backend.device_facts()["cpu_charged"] == "this process's own CPU time"


def test_system_charge_counts_every_process(tmp_path):
    backend = shared_machine(tmp_path, charge="system")
    m = backend.power_model()
    assert backend.read().energy_j[CPU_DOMAIN] == pytest.approx(m.cpu_power_w(0.75) * 10.0)
    assert "system-wide" in backend.device_facts()["cpu_charged"]


def test_a_quiet_machine_has_nothing_to_say(tmp_path):
    backend, clock, times = make(tmp_path)
    backend.open()
    clock.now += 10.0
    times.busy += 4.0
    backend.read()
    assert backend.run_notes() == ()


def test_unknown_charge_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="charge"):
        EstimatedBackend(charge="everyone")
