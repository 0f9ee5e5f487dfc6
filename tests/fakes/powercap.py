"""Fake Linux powercap trees, built in a temporary directory, shaped like real machines.

A zone is a directory holding `name`, `energy_uj` and `max_energy_range_uj`, as in
/sys/class/powercap. Subzones live inside their package directory and, as on a real kernel, are
also reachable from the top level through a symlink (`<root>/intel-rapl:0:0`). Counters are set
later by rewriting their file, which is exactly what a reader of sysfs sees between two reads.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The range most Intel parts report (about 262 kJ).
DEFAULT_MAX_RANGE_UJ = 262_143_328_850


def make_zone(
    root: str | os.PathLike[str],
    zone_id: str,
    *,
    name: str,
    energy_uj: int = 0,
    max_range_uj: int | None = DEFAULT_MAX_RANGE_UJ,
    parent: Path | None = None,
    alias: bool = True,
) -> Path:
    """Create one zone and return its directory.

    Without `parent` the zone is a top-level directory of `root`. With `parent` it is a subzone
    inside that directory and, when `alias` is true, also a top-level symlink like real sysfs.
    `max_range_uj=None` leaves out `max_energy_range_uj` (some kernels and VMs do).
    """
    root = Path(root)
    zone = (parent if parent is not None else root) / zone_id
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"{name}\n")
    set_energy(zone, energy_uj)
    if max_range_uj is not None:
        (zone / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    if parent is not None and alias:
        add_alias(root, zone)
    return zone


def add_alias(root: str | os.PathLike[str], zone: Path) -> Path:
    """A top-level symlink to a zone directory, as the kernel's class directory has."""
    link = Path(root) / zone.name
    link.symlink_to(zone, target_is_directory=True)
    return link


def set_energy(zone: Path, energy_uj: int) -> None:
    """Set a zone's counter, as the hardware would between two reads."""
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


def add_energy(zone: Path, delta_uj: int) -> None:
    set_energy(zone, energy_of(zone) + delta_uj)


def energy_of(zone: Path) -> int:
    return int((zone / "energy_uj").read_text())


def make_package(
    root: str | os.PathLike[str],
    index: int,
    *,
    energy_uj: int = 0,
    max_range_uj: int | None = DEFAULT_MAX_RANGE_UJ,
    dram: bool = False,
    prefix: str = "intel-rapl",
) -> dict[str, Path]:
    """One CPU package with core and uncore subzones (and dram if asked), keyed by zone name."""
    package = make_zone(root, f"{prefix}:{index}", name=f"package-{index}",
                        energy_uj=energy_uj, max_range_uj=max_range_uj)
    zones = {f"package-{index}": package}
    subzones = ["core", "uncore"] + (["dram"] if dram else [])
    for sub, name in enumerate(subzones):
        zones[f"{name}-{index}"] = make_zone(root, f"{prefix}:{index}:{sub}", name=name,
                                             energy_uj=1_000 * (sub + 1), parent=package)
    return zones


# ---- machine shapes ---------------------------------------------------------------------------
def one_socket(root: str | os.PathLike[str]) -> dict[str, Path]:
    """A desktop: one package with core and uncore, no DRAM domain."""
    return make_package(root, 0, energy_uj=5_000_000)


def two_sockets_with_dram(root: str | os.PathLike[str]) -> dict[str, Path]:
    """A two-socket server: each package has core, uncore and dram subzones."""
    zones = make_package(root, 0, energy_uj=10_000_000, dram=True)
    zones.update(make_package(root, 1, energy_uj=20_000_000, dram=True))
    return zones


def laptop_with_psys_and_mmio(root: str | os.PathLike[str]) -> dict[str, Path]:
    """A laptop: one package with dram, a platform-wide psys zone, an mmio copy of the package."""
    zones = make_package(root, 0, energy_uj=3_000_000, dram=True)
    zones["psys"] = make_zone(root, "intel-rapl:1", name="psys", energy_uj=50_000_000)
    zones["mmio"] = make_zone(root, "intel-rapl-mmio:0", name="package-0", energy_uj=3_000_000)
    zones["mmio-core"] = make_zone(root, "intel-rapl-mmio:0:0", name="core",
                                   parent=zones["mmio"])
    return zones


def fake_cpuinfo(path: Path, model: str, cpus: int = 2) -> Path:
    """A /proc/cpuinfo with `cpus` processors of the given model."""
    blocks = [f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\n"
              for i in range(cpus)]
    path.write_text("\n".join(blocks))
    return path
