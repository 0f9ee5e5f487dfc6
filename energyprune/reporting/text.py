"""The terminal text of a measurement and a comparison, rendered from their JSON dicts.

Renderers take the dict (what `Measurement.to_dict()` or a saved JSON file holds), never the live
objects, so a saved result re-renders identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from energyprune.measure.meter import METER_STOP_REASONS
from energyprune.units import format_energy, format_power, format_time
from energyprune.backends.base import is_estimated
from energyprune.reporting import carbon_text



def _interval(interval: list[float] | None) -> str:
    if not interval:
        return "n/a"
    return f"{format_energy(interval[0])} .. {format_energy(interval[1])}"


def summary_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    estimated = is_estimated(result["provenance"])
    tag = " (ESTIMATED)" if estimated else ""
    latency = result["latency_s"]
    rows = [
        ("provenance", result["provenance"].upper() + (
            " - from a power model, not a hardware counter" if estimated else " - hardware counters")),
        ("per inference" + tag, f"{format_energy(result['per_inference_j'])}   95% interval "
                                 f"{_interval(result['ci95_j'])}   CoV {result['cov'] * 100:.2f}%"),
        ("above idle" + tag, f"{format_energy(result['per_inference_dynamic_j'])}   95% interval "
                              f"{_interval(result['ci95_dynamic_j'])}"),
        ("per sample" + tag, f"{format_energy(result['per_sample_j'])} total, "
                             f"{format_energy(result['per_sample_dynamic_j'])} above idle "
                             f"(batch {result['batch_size']})"),
    ]
    if result.get("estimate_band_j"):
        rows.append(("estimate band", _interval(result["estimate_band_j"]) +
                     " (the power model's own uncertainty; more windows do not narrow it)"))
    rows += [
        ("latency", f"{format_time(latency['median'])} per inference (median of windows, "
                    f"{format_time(latency['min'])} .. {format_time(latency['max'])})"),
        ("power" + tag, f"{format_power(result['mean_power_w'])} mean, "
                        f"{format_power(result['idle_power_w'])} idle"),
    ]
    rows += anatomy_rows(result, tag)
    rows += [
        ("windows", f"{result['n_windows']} windows, {result['n_inferences']} inferences, "
                    f"{result['duration_s']:.2f} s measured"),
        ("stopped because", METER_STOP_REASONS.get(result["stop_reason"], result["stop_reason"])),
    ]
    rows += carbon_text.measurement_rows(result)
    return rows


def anatomy_rows(result: Mapping[str, Any], tag: str = "") -> list[tuple[str, str]]:
    """Where one call's energy went (`measure.anatomy`); nothing for results saved before it."""
    anatomy = result.get("anatomy")
    if not anatomy:
        return []
    busy = anatomy.get("busy")
    split = (f"{format_energy(anatomy['idle_j'])} idle power x time ({anatomy['idle_share']:.0%}), "
             f"{format_energy(anatomy['above_idle_j'])} above idle")
    if busy:
        split += f"; GPU busy {busy['busy_share']:.0%} of the time ({anatomy['bound']})"
    return [("where it goes" + tag, split), ("so" + tag, anatomy["statement"])]


def batch_sweep_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """The --batch-sizes table: J per call and per sample at each batch, with intervals."""
    sweep = result.get("batch_sweep") or []
    if not sweep:
        return []
    tag = " (EST.)" if is_estimated(result["provenance"]) else ""
    rows = [["batch", "J/call" + tag, "J/sample" + tag, "95% interval / sample", "above idle / sample",
             "latency / call", "idle share"]]
    for row in sweep:
        rows.append([str(row["batch_size"]), format_energy(row["per_inference_j"]), format_energy(row["per_sample_j"]),
                     _interval(row["ci95_per_sample_j"]), format_energy(row["per_sample_dynamic_j"]),
                     format_time(row["latency_s"]), f"{row['idle_share']:.0%}"])
    return rows


def domain_rows(result: Mapping[str, Any]) -> list[list[str]]:
    rows = [["domain", "provenance", "method", "J/inference", "above idle", "idle W", "mean W"]]
    for d in result["domains"]:
        rows.append([d["name"], d["provenance"].upper(), d["method"], format_energy(d["per_inference_j"]),
                     format_energy(d["per_inference_dynamic_j"]), f"{d['idle_power_w']:.2f}",
                     f"{d['mean_power_w']:.2f}"])
    return rows


def _columns(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def render_text(result: Mapping[str, Any], title: str = "") -> str:
    """The terminal table printed at the end of `energyprune measure`."""
    lines = [title] if title else []
    width = max(len(k) for k, _ in summary_rows(result))
    lines += [f"  {k.ljust(width)}  {v}" for k, v in summary_rows(result)]
    lines += ["", _columns(domain_rows(result))]
    sweep = batch_sweep_rows(result)
    if sweep:
        lines += ["", "  energy per sample by batch size (what batching buys):", _columns(sweep, "    ")]
    assumptions = [(d["name"], a) for d in result["domains"] for a in d["assumptions"]]
    if assumptions:
        lines += ["", "  assumptions:"] + [f"    [{name}] {text}" for name, text in assumptions]
    if result["warnings"]:
        lines += ["", "  warnings:"] + [f"    ! {w}" for w in result["warnings"]]
    return "\n".join(lines) + "\n"


def render_comparison_text(result: Mapping[str, Any]) -> str:
    low, high = result["ratio_ci95"]
    a, b = result["a"], result["b"]
    tag = " (ESTIMATED)" if is_estimated(result["provenance"]) else ""
    lines = [
        f"  energy per inference, B / A{tag}: {result['ratio_b_over_a']:.4f}   "
        f"95% interval {low:.4f} .. {high:.4f}   ({len(result['ratios'])} interleaved pairs)",
        f"  A {a['label']}: {format_energy(a['per_inference_j'])} per inference{tag}   95% interval "
        f"{_interval(a['ci95_j'])}   latency {format_time(a['latency_s']['median'])}",
        f"  B {b['label']}: {format_energy(b['per_inference_j'])} per inference{tag}   95% interval "
        f"{_interval(b['ci95_j'])}   latency {format_time(b['latency_s']['median'])}",
        *[f"  {side} where it goes{tag}: {value}" for side, m in (("A", a), ("B", b))
          for key, value in anatomy_rows(m)[:1]],
        f"  stopped because: {METER_STOP_REASONS.get(result['stop_reason'], result['stop_reason'])}",
        *carbon_text.lines(carbon_text.saving_rows(result, "A", "B")),
    ]
    warnings = list(dict.fromkeys(a["warnings"] + b["warnings"]))
    if warnings:
        lines += ["", "  warnings:"] + [f"    ! {w}" for w in warnings]
    return "\n".join(lines) + "\n"
