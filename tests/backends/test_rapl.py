"""RaplBackend on fake powercap trees shaped like real machines."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from energyprune.backends.base import Backend, DeviceFactsReporter
from energyprune.backends.rapl import FALLBACK_MAX_RANGE_UJ, ROOT_ENV, RaplBackend
from energyprune.errors import BackendError, BackendUnavailable
from energyprune.backends.base import Provenance
from tests.fakes import powercap

UJ = 1e-6  # joules per microjoule


# ---- machine shapes ---------------------------------------------------------------------------
@pytest.fixture
def no_rapl(tmp_path: Path) -> Path:
    """A VM or container: the powercap root does not exist."""
    return tmp_path / "powercap"


@pytest.fixture
def one_socket(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "powercap"
    root.mkdir()
    return root, powercap.one_socket(root)


@pytest.fixture
def two_sockets_dram(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "powercap"
    root.mkdir()
    return root, powercap.two_sockets_with_dram(root)


@pytest.fixture
def laptop_psys_mmio(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "powercap"
    root.mkdir()
    return root, powercap.laptop_with_psys_and_mmio(root)


@pytest.fixture
def about_to_wrap(tmp_path: Path) -> tuple[Path, Path]:
    """One package whose counter sits 1 mJ below a deliberately small range of 1 J."""
    root = tmp_path / "powercap"
    root.mkdir()
    package = powercap.make_zone(root, "intel-rapl:0", name="package-0",
                                 energy_uj=999_000, max_range_uj=1_000_000)
    return root, package


def opened(root: Path, **kwargs: object) -> RaplBackend:
    backend = RaplBackend(root, **kwargs)  # type: ignore[arg-type]
    backend.open()
    return backend


# ---- no RAPL ----------------------------------------------------------------------------------
def test_no_rapl_probe_says_why(no_rapl: Path) -> None:
    availability = RaplBackend(no_rapl).probe()
    assert availability.ok is False
    assert f"no powercap tree at {no_rapl}" in availability.reason
    assert "no RAPL counters" in availability.reason
    assert "intel_rapl_msr" in availability.fix
    assert ROOT_ENV in availability.fix


def test_no_rapl_open_raises_with_fix(no_rapl: Path) -> None:
    with pytest.raises(BackendUnavailable) as raised:
        RaplBackend(no_rapl).open()
    message = str(raised.value)
    assert "no powercap tree" in message
    assert " Fix: " in message
    assert ROOT_ENV in message


def test_root_without_package_zone_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    root.mkdir()
    powercap.make_zone(root, "intel-rapl:0", name="psys")
    availability = RaplBackend(root).probe()
    assert availability.ok is False
    assert "no RAPL package zone" in availability.reason
    assert "intel-rapl:0" in availability.reason  # says what it did find


def test_env_var_root_is_used(one_socket: tuple[Path, dict[str, Path]],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = one_socket
    monkeypatch.setenv(ROOT_ENV, str(root))
    backend = RaplBackend()
    assert backend.root == root
    assert backend.probe().ok is True


def test_env_var_pointing_nowhere_is_named(no_rapl: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_ENV, str(no_rapl))
    availability = RaplBackend().probe()
    assert availability.ok is False
    assert str(no_rapl) in availability.reason


def test_default_root_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOT_ENV, raising=False)
    assert RaplBackend().root == Path("/sys/class/powercap")


def test_env_var_is_read_at_construction(one_socket: tuple[Path, dict[str, Path]],
                                         no_rapl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = one_socket
    monkeypatch.setenv(ROOT_ENV, str(root))
    backend = RaplBackend()
    monkeypatch.setenv(ROOT_ENV, str(no_rapl))
    assert backend.probe().ok is True
    assert RaplBackend().root == no_rapl


def test_construction_reads_nothing(tmp_path: Path) -> None:
    calls: list[Path] = []

    def recording_reader(path: Path) -> str:
        calls.append(path)
        return path.read_text()

    root = tmp_path / "powercap"
    backend = RaplBackend(root, read_text=recording_reader)
    assert calls == []
    # The tree appears only after construction, and the probe still finds it.
    root.mkdir()
    powercap.one_socket(root)
    assert backend.probe().ok is True
    assert root / "intel-rapl:0" / "energy_uj" in calls


def test_probe_is_cached(one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, _ = one_socket
    backend = RaplBackend(root)
    first = backend.probe()
    shutil.rmtree(root)
    assert backend.probe() is first
    assert first.ok is True


# ---- one socket -------------------------------------------------------------------------------
def test_one_socket_counts_the_package_only(one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, _ = one_socket
    backend = opened(root)
    domains = backend.domains()
    assert [d.name for d in domains] == ["rapl:package-0"]
    (domain,) = domains
    assert domain.backend == "rapl"
    assert domain.provenance is Provenance.MEASURED
    assert domain.method == "rapl-counter"
    assert domain.device == "CPU socket 0 package (RAPL)"
    assert domain.has_counter is True
    assert domain.resolution_s == 0.001
    assert domain.assumptions == ()


def test_first_read_is_the_zero(two_sockets_dram: tuple[Path, dict[str, Path]]) -> None:
    root, _ = two_sockets_dram
    reading = opened(root).read()
    assert set(reading.energy_j) == {"rapl:package-0", "rapl:package-1",
                                     "rapl:dram-0", "rapl:dram-1"}
    assert all(value == 0.0 for value in reading.energy_j.values())


def test_one_socket_delta_ignores_core_and_uncore(
        one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, zones = one_socket
    backend = opened(root)
    powercap.add_energy(zones["package-0"], 2_500_000)
    powercap.add_energy(zones["core-0"], 9_000_000)
    powercap.add_energy(zones["uncore-0"], 7_000_000)
    assert backend.read().energy_j == {"rapl:package-0": pytest.approx(2.5, abs=1e-12)}


def test_reading_is_cumulative_and_timed(one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, zones = one_socket
    backend = opened(root)
    powercap.add_energy(zones["package-0"], 1_000_000)
    first = backend.read()
    powercap.add_energy(zones["package-0"], 3_000_000)
    before = time.perf_counter()
    second = backend.read()
    after = time.perf_counter()
    assert first.energy_j["rapl:package-0"] == pytest.approx(1.0, abs=1e-12)
    assert second.energy_j["rapl:package-0"] == pytest.approx(4.0, abs=1e-12)
    assert before <= second.t_s <= after


def test_multi_die_package_keeps_the_die_in_its_name(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    powercap.make_zone(root, "intel-rapl:0", name="package-0-die-0")
    powercap.make_zone(root, "intel-rapl:1", name="package-0-die-1")
    backend = opened(root)
    assert [d.name for d in backend.domains()] == ["rapl:package-0-die-0",
                                                   "rapl:package-0-die-1"]
    assert backend.device_facts()["sockets"] == 1


# ---- two sockets with DRAM --------------------------------------------------------------------
def test_two_sockets_with_dram_has_four_domains(
        two_sockets_dram: tuple[Path, dict[str, Path]]) -> None:
    root, _ = two_sockets_dram
    # The subzones are reachable twice (inside the package and as a top-level alias).
    assert (root / "intel-rapl:0:2").is_symlink()
    assert (root / "intel-rapl:0" / "intel-rapl:0:2").is_dir()
    backend = opened(root)
    assert [d.name for d in backend.domains()] == [
        "rapl:package-0", "rapl:package-1", "rapl:dram-0", "rapl:dram-1"]
    devices = {d.name: d.device for d in backend.domains()}
    assert devices["rapl:dram-1"] == "CPU socket 1 DRAM (RAPL)"


def test_two_sockets_exact_deltas(two_sockets_dram: tuple[Path, dict[str, Path]]) -> None:
    root, zones = two_sockets_dram
    backend = opened(root)
    powercap.add_energy(zones["package-0"], 12_345_678)
    powercap.add_energy(zones["package-1"], 7_000_001)
    powercap.add_energy(zones["dram-0"], 1_500_000)
    powercap.add_energy(zones["dram-1"], 250)
    energy_j = backend.read().energy_j
    assert energy_j["rapl:package-0"] == pytest.approx(12.345678, abs=1e-12)
    assert energy_j["rapl:package-1"] == pytest.approx(7.000001, abs=1e-12)
    assert energy_j["rapl:dram-0"] == pytest.approx(1.5, abs=1e-12)
    assert energy_j["rapl:dram-1"] == pytest.approx(0.00025, abs=1e-12)


def test_top_level_dram_zone_is_counted(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    powercap.make_zone(root, "intel-rapl:0", name="package-0")
    dram = powercap.make_zone(root, "intel-rapl:1", name="dram")
    backend = opened(root)
    assert [d.name for d in backend.domains()] == ["rapl:package-0", "rapl:dram-1"]
    powercap.add_energy(dram, 2_000_000)
    assert backend.read().energy_j["rapl:dram-1"] == pytest.approx(2.0, abs=1e-12)


def test_amd_rapl_prefix_without_dram(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    zones = powercap.make_package(root, 0, prefix="amd-rapl")
    backend = opened(root)
    assert [d.name for d in backend.domains()] == ["rapl:package-0"]
    powercap.add_energy(zones["package-0"], 42)
    assert backend.read().energy_j["rapl:package-0"] == pytest.approx(42e-6, abs=1e-15)


# ---- overlapping zones are not counted twice --------------------------------------------------
def test_psys_and_mmio_are_not_counted(laptop_psys_mmio: tuple[Path, dict[str, Path]]) -> None:
    root, zones = laptop_psys_mmio
    backend = opened(root)
    assert [d.name for d in backend.domains()] == ["rapl:package-0", "rapl:dram-0"]
    powercap.add_energy(zones["package-0"], 4_000_000)
    powercap.add_energy(zones["dram-0"], 1_000_000)
    powercap.add_energy(zones["psys"], 9_000_000)  # the whole platform
    powercap.add_energy(zones["mmio"], 4_000_000)  # the same package, seen again
    total_j = sum(backend.read().energy_j.values())
    assert total_j == pytest.approx(5.0, abs=1e-12)


# ---- unreadable counters ----------------------------------------------------------------------
def _denying(denied: Path):  # type: ignore[no-untyped-def]
    """A reader that behaves like a kernel >= 5.10 for one energy_uj file, for non-root users."""
    def read_text(path: Path) -> str:
        if path == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()
    return read_text


def test_unreadable_energy_uj_makes_backend_unavailable(
        two_sockets_dram: tuple[Path, dict[str, Path]]) -> None:
    root, _ = two_sockets_dram
    denied = root / "intel-rapl:1" / "intel-rapl:1:2" / "energy_uj"  # dram of socket 1
    availability = RaplBackend(root, read_text=_denying(denied)).probe()
    assert availability.ok is False
    assert str(denied) in availability.reason
    assert "readable by root only" in availability.reason
    assert "CVE-2020-8694" in availability.reason
    assert "sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj" in availability.fix
    assert "udev" in availability.fix


def test_unreadable_energy_uj_open_raises_with_chmod_fix(
        one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, _ = one_socket
    denied = root / "intel-rapl:0" / "energy_uj"
    with pytest.raises(BackendUnavailable) as raised:
        RaplBackend(root, read_text=_denying(denied)).open()
    assert str(denied) in str(raised.value)
    assert "Fix: run `sudo chmod o+r" in str(raised.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads a chmod 000 file anyway; the injected reader covers it")
def test_chmod_000_energy_uj_with_the_real_reader(
        one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, zones = one_socket
    counter = zones["package-0"] / "energy_uj"
    counter.chmod(0)
    try:
        availability = RaplBackend(root).probe()
    finally:
        counter.chmod(0o644)
    assert availability.ok is False
    assert "CVE-2020-8694" in availability.reason
    assert "chmod o+r" in availability.fix


def test_energy_uj_that_cannot_be_read_at_all(one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, zones = one_socket
    counter = zones["package-0"] / "energy_uj"
    counter.unlink()
    counter.mkdir()  # reading it raises IsADirectoryError, an OSError but not a PermissionError
    availability = RaplBackend(root).probe()
    assert availability.ok is False
    assert str(counter) in availability.reason
    assert "CVE" not in availability.reason


def test_garbage_in_energy_uj_at_probe(one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, zones = one_socket
    (zones["package-0"] / "energy_uj").write_text("not a number\n")
    availability = RaplBackend(root).probe()
    assert availability.ok is False
    assert "does not hold an integer" in availability.reason


# ---- wraparound -------------------------------------------------------------------------------
def test_counter_wrapping_inside_a_window(about_to_wrap: tuple[Path, Path]) -> None:
    root, package = about_to_wrap
    backend = opened(root)
    powercap.set_energy(package, 500)  # went past 1_000_000 and started again
    energy_j = backend.read().energy_j["rapl:package-0"]
    assert energy_j == pytest.approx((1_000_000 - 999_000 + 500) * UJ, abs=1e-12)


def test_counter_wrapping_twice_across_reads(about_to_wrap: tuple[Path, Path]) -> None:
    root, package = about_to_wrap
    backend = opened(root)
    powercap.set_energy(package, 200_000)
    backend.read()
    powercap.set_energy(package, 100_000)
    energy_j = backend.read().energy_j["rapl:package-0"]
    assert energy_j == pytest.approx((2 * 1_000_000 - 999_000 + 100_000) * UJ, abs=1e-12)


def test_missing_max_range_assumes_32_bits(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    package = powercap.make_zone(root, "intel-rapl:0", name="package-0",
                                 energy_uj=2**32 - 10, max_range_uj=None)
    backend = opened(root)
    (domain,) = backend.domains()
    assert len(domain.assumptions) == 1
    assert "2**32" in domain.assumptions[0]
    assert "max_energy_range_uj" in domain.assumptions[0]
    powercap.set_energy(package, 5)
    assert backend.read().energy_j["rapl:package-0"] == pytest.approx(15 * UJ, abs=1e-12)
    assert FALLBACK_MAX_RANGE_UJ == 2**32


# ---- failures after open ----------------------------------------------------------------------
def test_read_error_after_open_raises_backend_error(
        two_sockets_dram: tuple[Path, dict[str, Path]]) -> None:
    root, zones = two_sockets_dram
    backend = opened(root)
    counter = zones["dram-1"] / "energy_uj"
    counter.unlink()  # the module was unloaded, or the hardware went away
    with pytest.raises(BackendError) as raised:
        backend.read()
    assert str(counter) in str(raised.value)
    assert "No such file" in str(raised.value)


def test_garbage_after_open_raises_backend_error(
        one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, zones = one_socket
    backend = opened(root)
    (zones["package-0"] / "energy_uj").write_text("\n")
    with pytest.raises(BackendError, match="does not hold an integer"):
        backend.read()


def test_read_before_open_and_after_close(one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, zones = one_socket
    backend = RaplBackend(root)
    with pytest.raises(BackendError, match="before open"):
        backend.read()
    backend.open()
    backend.close()
    with pytest.raises(BackendError):
        backend.read()
    # Opening again starts from a new zero.
    powercap.add_energy(zones["package-0"], 7_000_000)
    backend.open()
    assert backend.read().energy_j["rapl:package-0"] == 0.0


def test_domains_empty_before_open(one_socket: tuple[Path, dict[str, Path]]) -> None:
    root, _ = one_socket
    backend = RaplBackend(root)
    assert list(backend.domains()) == []
    backend.open()
    assert len(backend.domains()) == 1


# ---- facts and protocol -----------------------------------------------------------------------
def test_device_facts(two_sockets_dram: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    root, _ = two_sockets_dram
    cpuinfo = powercap.fake_cpuinfo(tmp_path / "cpuinfo", "Intel(R) Xeon(R) Gold 6338 CPU")
    facts = RaplBackend(root, cpuinfo_path=cpuinfo).device_facts()
    assert facts["cpu_model"] == "Intel(R) Xeon(R) Gold 6338 CPU"
    assert facts["sockets"] == 2
    assert facts["root"] == str(root)
    assert facts["available"] is True
    assert [z["domain"] for z in facts["zones"]] == [
        "rapl:package-0", "rapl:package-1", "rapl:dram-0", "rapl:dram-1"]


def test_device_facts_without_rapl_or_cpuinfo(no_rapl: Path, tmp_path: Path) -> None:
    facts = RaplBackend(no_rapl, cpuinfo_path=tmp_path / "missing").device_facts()
    assert facts["cpu_model"] is None
    assert facts["available"] is False
    assert facts["sockets"] == 0
    assert facts["zones"] == []


def test_satisfies_the_backend_protocols(no_rapl: Path) -> None:
    backend = RaplBackend(no_rapl)
    assert isinstance(backend, Backend)
    assert isinstance(backend, DeviceFactsReporter)
    assert backend.name == "rapl"
    assert backend.provenance is Provenance.MEASURED
