"""Rows in the columns of codecarbon's `emissions.csv`, so dashboards built on codecarbon read ours.

codecarbon writes one row per tracked run, energies in kWh and emissions in kg; a row here is one
measurement: the measured windows (idle and warm-up excluded) are the "run", `duration` their total
time and `energy_consumed` their energy. A column is filled where it means the same thing as in
codecarbon and left empty where it does not (`codecarbon_version`: codecarbon measured nothing;
utilisation, water, cloud and geolocation columns: not known here). `pue` is 1: no PUE is applied.
energyprune's own columns follow codecarbon's (provenance first: an ESTIMATED row says so), in
joules: kWh exists only in the codecarbon columns, converted here, at the edge.

`append_rows` adds rows to a file the way codecarbon's file output does: a new file gets the
header; a file with energyprune's header gets full rows; a file with codecarbon's own header (a
codecarbon `emissions.csv`) gets codecarbon's columns only, so codecarbon can keep appending to it;
any other file is refused in one line.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from energyprune.errors import UsageError
from energyprune.version import __version__

#: codecarbon 3.3's EmissionsData fields, in its order (`tests/reporting/test_exports.py` checks them).
CODECARBON_COLUMNS = (
    "timestamp", "project_name", "run_id", "experiment_id", "duration", "emissions", "emissions_rate",
    "cpu_power", "gpu_power", "ram_power", "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed",
    "water_consumed", "country_name", "country_iso_code", "region", "cloud_provider", "cloud_region", "os",
    "python_version", "codecarbon_version", "cpu_count", "cpu_model", "gpu_count", "gpu_model", "longitude",
    "latitude", "ram_total_size", "tracking_mode", "cpu_utilization_percent", "gpu_utilization_percent",
    "ram_utilization_percent", "ram_used_gb", "on_cloud", "pue", "wue",
)
ENERGYPRUNE_COLUMNS = (
    "provenance", "label", "model", "backends", "per_inference_j", "per_inference_ci95_low_j",
    "per_inference_ci95_high_j", "per_sample_j", "batch_size", "n_inferences", "co2e_per_inference_kg",
    "co2e_per_million_inferences_kg", "carbon_intensity_g_per_kwh", "carbon_intensity_source",
    "carbon_intensity_year", "energyprune_schema", "energyprune_version",
)
COLUMNS = CODECARBON_COLUMNS + ENERGYPRUNE_COLUMNS
PROJECT_NAME = "energyprune"
JOULES_PER_KWH = 3.6e6
_KINDS = (("gpu", ("gpu:",)), ("cpu", ("rapl:package", "estimated:cpu")), ("ram", ("rapl:dram", "estimated:ram")))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _kind(domain_name: str) -> str | None:
    for kind, prefixes in _KINDS:
        if domain_name.startswith(prefixes):
            return kind
    return None


def measurement_row(m: Mapping[str, Any], run: Mapping[str, Any] | None = None, suffix: str = "") -> dict[str, Any]:
    """One row from a measurement dict. `run` is the result that holds it (run id, end time)."""
    run = run or m
    duration = _number(m.get("duration_s"))
    domains = [d for d in m.get("domains") or [] if isinstance(d, Mapping)]
    energy_by_kind: dict[str, float] = {}
    power_by_kind: dict[str, float] = {}
    for d in domains:
        kind = _kind(str(d.get("name", "")))
        if kind and _number(d.get("energy_j")) is not None:
            energy_by_kind[kind] = energy_by_kind.get(kind, 0.0) + float(d["energy_j"])
            power_by_kind[kind] = power_by_kind.get(kind, 0.0) + float(d.get("mean_power_w") or 0.0)
    total_j = sum(_number(d.get("energy_j")) or 0.0 for d in domains) if domains and all(
        _number(d.get("energy_j")) is not None for d in domains) else None
    if total_j is None and duration is not None and _number(m.get("mean_power_w")) is not None:
        total_j = duration * float(m["mean_power_w"])
    co2 = m.get("co2") if isinstance(m.get("co2"), Mapping) else None
    intensity = co2.get("intensity") if co2 else None
    intensity = intensity if isinstance(intensity, Mapping) else {}
    g_per_kwh = _number(intensity.get("g_per_kwh"))
    emissions = total_j / JOULES_PER_KWH * g_per_kwh / 1000.0 if total_j is not None and g_per_kwh is not None else None
    device = m.get("device") if isinstance(m.get("device"), Mapping) else {}
    estimated = device.get("estimated") if isinstance(device.get("estimated"), Mapping) else {}
    gpus = [d for d in domains if _kind(str(d.get("name", ""))) == "gpu"]
    memory = _number(estimated.get("memory_total_bytes"))
    ci = m.get("ci95_j") if isinstance(m.get("ci95_j"), (list, tuple)) and len(m.get("ci95_j") or []) == 2 else (None, None)
    process = "this process" in str(estimated.get("cpu_charged", ""))
    run_id = run.get("run_id")
    row = {
        "timestamp": run.get("finished_at"),
        "project_name": PROJECT_NAME,
        "run_id": f"{run_id}{suffix}" if run_id else None,
        "experiment_id": None,
        "duration": duration,
        "emissions": emissions,
        "emissions_rate": emissions / duration if emissions is not None and duration else None,
        "cpu_power": power_by_kind.get("cpu"), "gpu_power": power_by_kind.get("gpu"),
        "ram_power": power_by_kind.get("ram"),
        "cpu_energy": _kwh(energy_by_kind.get("cpu")), "gpu_energy": _kwh(energy_by_kind.get("gpu")),
        "ram_energy": _kwh(energy_by_kind.get("ram")), "energy_consumed": _kwh(total_j),
        "country_name": intensity.get("country_name"), "country_iso_code": intensity.get("country_iso3"),
        "region": intensity.get("region"),
        "os": device.get("platform"), "python_version": device.get("python"),
        "cpu_count": estimated.get("logical_cpus"), "cpu_model": estimated.get("cpu_model"),
        "gpu_count": len(gpus) if gpus else None,
        "gpu_model": ", ".join(dict.fromkeys(str(d.get("device")) for d in gpus)) or None,
        "ram_total_size": memory / 1024**3 if memory is not None else None,
        "tracking_mode": ("process" if process else "machine") if domains else None,
        "pue": 1.0,
        "provenance": m.get("provenance"),
        "label": m.get("label"),
        "model": m.get("model"),
        "backends": ",".join(m.get("backends") or []) or None,
        "per_inference_j": m.get("per_inference_j"),
        "per_inference_ci95_low_j": ci[0], "per_inference_ci95_high_j": ci[1],
        "per_sample_j": m.get("per_sample_j"),
        "batch_size": m.get("batch_size"),
        "n_inferences": m.get("n_inferences"),
        "co2e_per_inference_kg": co2.get("per_inference_kg") if co2 else None,
        "co2e_per_million_inferences_kg": co2.get("per_million_inferences_kg") if co2 else None,
        "carbon_intensity_g_per_kwh": g_per_kwh,
        "carbon_intensity_source": intensity.get("source"),
        "carbon_intensity_year": intensity.get("year"),
        "energyprune_schema": run.get("schema"),
        "energyprune_version": __version__,
    }
    return {column: row.get(column) for column in COLUMNS}


def _kwh(energy_j: float | None) -> float | None:
    return None if energy_j is None else energy_j / JOULES_PER_KWH


def emissions_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of any result: a measurement (one), a comparison (A and B), a prune result (the
    original, and the pruned model of the final interleaved check), a bench (each reference model)."""
    schema = str(result.get("schema"))
    if schema == "energyprune.comparison/1":
        return [measurement_row(result["a"], result, "-a"), measurement_row(result["b"], result, "-b")]
    if schema == "energyprune.prune_result/1":
        rows = []
        original = (result.get("original") or {}).get("measurement")
        if isinstance(original, Mapping):
            rows.append(measurement_row(original, result, "-original"))
        comparison = (result.get("final") or {}).get("comparison")
        if isinstance(comparison, Mapping) and isinstance(comparison.get("b"), Mapping):
            rows.append(measurement_row(comparison["b"], result, "-final"))
        return rows
    if schema == "energyprune.bench/1":
        return [measurement_row({**m.get("measurement", {}), "model": m.get("name")}, result, f"-{m.get('name')}")
                for m in result.get("models") or [] if isinstance(m, Mapping)]
    return [measurement_row(result)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS, header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows([[_cell(row.get(c)) for c in columns] for row in rows])
    return buffer.getvalue()


def render_emissions_csv(result: Mapping[str, Any]) -> str:
    """The result's rows with the header: codecarbon's columns, then energyprune's."""
    return write_rows(emissions_rows(result))


def existing_columns(path: str | os.PathLike[str], option: str = "--emissions-csv") -> tuple[str, ...] | None:
    """The columns rows must have to be appended to `path`; None when it does not exist or is
    empty (it gets the full header). One line when the file has some other header."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file name (emissions.csv)")
    if not target.exists() or target.stat().st_size == 0:
        return None
    try:
        with target.open(encoding="utf-8-sig", newline="") as handle:
            header = tuple(next(csv.reader(handle), ()))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{option} {path} cannot be read as CSV ({error}): choose another file") from None
    for columns in (COLUMNS, CODECARBON_COLUMNS):
        if sorted(header) == sorted(columns):  # codecarbon accepts its columns in any order
            return header
    raise UsageError(f"{option} {path} has other columns than codecarbon's emissions.csv (or energyprune's): rows "
                     "are only added to such a file; choose another name")


def append_rows(path: str | os.PathLike[str], result: Mapping[str, Any], option: str = "--emissions-csv") -> int:
    """Add the result's rows to `path` (see the module docstring); returns how many. The whole
    file is rewritten atomically, so an interrupted write never loses earlier rows."""
    from energyprune.files import write_atomic

    columns = existing_columns(path, option)
    rows = emissions_rows(result)
    target = Path(path)
    if columns is None:
        text = write_rows(rows)
    else:
        before = target.read_text(encoding="utf-8")
        text = before + ("" if before.endswith("\n") else "\n") + write_rows(rows, columns, header=False)
    write_atomic(target, text)
    return len(rows)
