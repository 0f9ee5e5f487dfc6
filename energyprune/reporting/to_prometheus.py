"""The last measurement as a Prometheus text-format file, for node_exporter's textfile collector
(`--collector.textfile.directory`) or any scraper that reads the exposition format.

    # HELP energyprune_energy_per_inference_joules Median energy of one inference (one call on one batch).
    # TYPE energyprune_energy_per_inference_joules gauge
    energyprune_energy_per_inference_joules{model="demo",provenance="estimated",...} 0.0123

Every sample carries the provenance as a label, so a dashboard cannot show an estimated figure as a
measured one. Names follow Prometheus' conventions: base units (joules, seconds, watts, and grams
for CO2e, Prometheus' base unit of mass), a `_ratio` suffix for the comparison. The first line says
who wrote the file, which is how `--prometheus` knows it may replace it without --force.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from energyprune.version import __version__

FIRST_LINE = "# energyprune metrics"
PREFIX = "energyprune_"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Metrics:
    def __init__(self) -> None:
        self._families: dict[str, tuple[str, list[str]]] = {}

    def add(self, name: str, help_text: str, value: Any, labels: Mapping[str, Any]) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return  # a figure that does not exist is left out, not written as 0
        rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items() if v is not None)
        family = self._families.setdefault(PREFIX + name, (help_text, []))
        family[1].append(f"{PREFIX}{name}{{{rendered}}} {_value(float(value))}" if rendered
                         else f"{PREFIX}{name} {_value(float(value))}")

    def text(self, header: str) -> str:
        lines = [header]
        for name, (help_text, samples) in self._families.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]
        return "\n".join(lines) + "\n"


def _pair(values: Any) -> tuple[Any, Any]:
    return tuple(values) if isinstance(values, (list, tuple)) and len(values) == 2 else (None, None)  # type: ignore[return-value]


def _measurement(metrics: _Metrics, m: Mapping[str, Any], labels: dict[str, Any]) -> None:
    low, high = _pair(m.get("ci95_j"))
    metrics.add("energy_per_inference_joules", "Median energy of one inference (one call on one batch), all domains.",
                m.get("per_inference_j"), labels)
    metrics.add("energy_per_inference_ci95_low_joules", "Low end of the 95% interval of the energy per inference.",
                low, labels)
    metrics.add("energy_per_inference_ci95_high_joules", "High end of the 95% interval of the energy per inference.",
                high, labels)
    metrics.add("energy_per_inference_dynamic_joules", "Energy per inference above the idle power.",
                m.get("per_inference_dynamic_j"), labels)
    metrics.add("energy_per_sample_joules", "Energy per sample (energy per inference / batch size).",
                m.get("per_sample_j"), labels)
    band_low, band_high = _pair(m.get("estimate_band_j"))
    metrics.add("estimate_band_low_joules", "Low end of an estimate's model band (estimated results only).",
                band_low, labels)
    metrics.add("estimate_band_high_joules", "High end of an estimate's model band (estimated results only).",
                band_high, labels)
    latency = m.get("latency_s") if isinstance(m.get("latency_s"), Mapping) else {}
    metrics.add("latency_seconds", "Median latency of one inference.", latency.get("median"), labels)
    metrics.add("mean_power_watts", "Mean power over the measured windows.", m.get("mean_power_w"), labels)
    metrics.add("idle_power_watts", "Idle power measured before the run.", m.get("idle_power_w"), labels)
    co2 = m.get("co2") if isinstance(m.get("co2"), Mapping) else None
    if co2:
        intensity = co2.get("intensity") if isinstance(co2.get("intensity"), Mapping) else {}
        co2_labels = {**labels, "grid": intensity.get("where"), "intensity_source": intensity.get("source"),
                      "intensity_year": intensity.get("year")}
        kg = co2.get("per_inference_kg")
        metrics.add("co2e_per_inference_grams", "CO2e of one inference, at the grid's annual average intensity.",
                    kg * 1000.0 if isinstance(kg, (int, float)) else None, co2_labels)
        metrics.add("carbon_intensity_grams_per_kilowatt_hour", "The grid's CO2e intensity used.",
                    intensity.get("g_per_kwh"), co2_labels)


def render_prometheus(result: Mapping[str, Any], now_s: float | None = None) -> str:
    """A measurement or comparison dict as Prometheus text exposition format."""
    metrics = _Metrics()
    device = str((result.get("device") or {}).get("torch_device") or "") if isinstance(result.get("device"), Mapping) else ""
    if result.get("schema") == "energyprune.comparison/1":
        labels = {"model_a": result["a"].get("model") or result["a"].get("label"),
                  "model_b": result["b"].get("model") or result["b"].get("label"), "provenance": result.get("provenance")}
        low, high = _pair(result.get("ratio_ci95"))
        metrics.add("energy_ratio", "B's energy per inference over A's, from interleaved windows.",
                    result.get("ratio_b_over_a"), labels)
        metrics.add("energy_ratio_ci95_low", "Low end of the ratio's 95% interval.", low, labels)
        metrics.add("energy_ratio_ci95_high", "High end of the ratio's 95% interval.", high, labels)
        co2 = result.get("co2") if isinstance(result.get("co2"), Mapping) else None
        saved = co2.get("saved_per_million_inferences_kg") if co2 else None
        metrics.add("co2e_saved_per_million_inferences_grams", "CO2e B saves against A per million inferences.",
                    saved * 1000.0 if isinstance(saved, (int, float)) else None, labels)
        for role in ("a", "b"):
            part = result[role]
            _measurement(metrics, part, {"model": part.get("model") or part.get("label"), "role": role,
                                         "provenance": part.get("provenance"), "backends": ",".join(part.get("backends") or [])})
    else:
        _measurement(metrics, result, {"model": result.get("model") or result.get("label"),
                                       "provenance": result.get("provenance"),
                                       "backends": ",".join(result.get("backends") or []), "device": device or None})
    stamp = time.time() if now_s is None else now_s
    metrics.add("last_run_timestamp_seconds", "When this file was written (Unix time).", stamp, {})
    return metrics.text(f"{FIRST_LINE} (energyprune {__version__}); replaced by the next run")


def written_by_us(path: str | Path) -> bool:
    """Whether `path` is a metrics file an earlier run wrote (so replacing it loses nothing)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().startswith(FIRST_LINE)
    except (OSError, UnicodeDecodeError):
        return False
