"""The CO2e lines of every rendering (terminal, Markdown, HTML, CSV), from a result's `co2` block.

A result has a `co2` block when the command was given a grid (`--country`, `--region`,
`ENERGYPRUNE_COUNTRY` or `--carbon-intensity`); otherwise each rendering says, in one line, how to
get one: no CO2e figure is ever made up. A CO2e figure made from an ESTIMATED energy carries the
ESTIMATED tag like the energy does, and the intensity always travels with its place, source and year.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from energyprune.backends.base import is_estimated
from energyprune.metrics.carbon import NO_CO2_HINT
from energyprune.units import format_mass

ESTIMATED_TAG = " (ESTIMATED)"


def block_of(result: Mapping[str, Any]) -> Mapping[str, Any] | None:
    block = result.get("co2")
    return block if isinstance(block, Mapping) and isinstance(block.get("intensity"), Mapping) else None


def tag_of(block: Mapping[str, Any]) -> str:
    return ESTIMATED_TAG if is_estimated(block.get("provenance") or "measured") else ""


def mass(value: Any) -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return format_mass(value) if ok else "n/a"


def interval(values: Any) -> str:
    if isinstance(values, (list, tuple)) and len(values) == 2:
        return f"{mass(values[0])} .. {mass(values[1])}"
    return "n/a"


def intensity_label(block: Mapping[str, Any]) -> str:
    intensity = block["intensity"]
    return str(intensity.get("label") or f"{intensity.get('g_per_kwh')} g CO2e/kWh ({intensity.get('source')})")


def g_per_kwh(result: Mapping[str, Any]) -> float | None:
    """The intensity a result's CO2e figures use, or None (for CSV columns)."""
    block = block_of(result)
    value = block["intensity"].get("g_per_kwh") if block else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def per_inference_kg(result: Mapping[str, Any], energy_j: Any) -> float | None:
    """kg CO2e of an energy figure of the result, at the result's intensity (None without one)."""
    intensity = g_per_kwh(result)
    if intensity is None or not isinstance(energy_j, (int, float)) or isinstance(energy_j, bool):
        return None
    return energy_j / 3.6e6 * intensity / 1000.0


def measurement_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Summary rows of a measurement: CO2e per inference, per sample, per million inferences."""
    block = block_of(result)
    if block is None:
        return [("CO2e", NO_CO2_HINT)]
    t = tag_of(block)
    rows = [(f"CO2e per inference{t}", f"{mass(block.get('per_inference_kg'))}   95% interval "
                                       f"{interval(block.get('per_inference_ci95_kg'))}   per sample "
                                       f"{mass(block.get('per_sample_kg'))}"),
            (f"CO2e per million inferences{t}", f"{mass(block.get('per_million_inferences_kg'))}   95% interval "
                                                f"{interval(block.get('per_million_inferences_ci95_kg'))}")]
    if block.get("estimate_band_kg"):
        rows.append(("CO2e estimate band", interval(block["estimate_band_kg"]) + " per inference (the power model's "
                                                                                 "own uncertainty)"))
    rows.append(("carbon intensity", intensity_label(block)))
    return rows


def saving_rows(result: Mapping[str, Any], before: str, after: str) -> list[tuple[str, str]]:
    """Rows of a comparison or a prune result: each side per million inferences, and the saving."""
    block = block_of(result)
    if block is None:
        return [("CO2e", NO_CO2_HINT)]
    t = tag_of(block)
    keys = ("a_per_million_inferences_kg", "b_per_million_inferences_kg") if "a_per_million_inferences_kg" in block \
        else ("original_per_million_inferences_kg", "final_per_million_inferences_kg")
    return [
        (f"CO2e saved per million inferences{t}", f"{mass(block.get('saved_per_million_inferences_kg'))}   95% interval "
                                                  f"{interval(block.get('saved_per_million_inferences_ci95_kg'))}"),
        (f"CO2e per million inferences{t}", f"{before} {mass(block.get(keys[0]))}, {after} {mass(block.get(keys[1]))}"),
        ("carbon intensity", intensity_label(block)),
    ]


def lines(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    return [f"{indent}{name}: {value}" for name, value in rows]


def bench_rows(bench: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, ...]]]:
    """(summary rows, one row per model and per pruning run) of a bench result."""
    block = block_of(bench)
    if block is None:
        return [("CO2e", NO_CO2_HINT)], []
    t = tag_of(block)
    table: list[tuple[str, ...]] = []
    for model in block.get("models") or []:
        table.append((str(model.get("name")), "original", f"{mass(model.get('per_million_inferences_kg'))}{t}",
                      interval(model.get("per_million_inferences_ci95_kg"))))
    for run in block.get("runs") or []:
        table.append((str(run.get("model")), str(run.get("criterion_label")),
                      f"saves {mass(run.get('saved_per_million_inferences_kg'))}{t}",
                      interval(run.get("saved_per_million_inferences_ci95_kg"))))
    return [("carbon intensity", intensity_label(block))], table
