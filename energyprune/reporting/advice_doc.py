"""`energyprune advise`'s result as text, Markdown and HTML: where the energy goes, then every
lever with its ratio, interval and fidelity, and the levers that did not apply with the reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from energyprune.backends.base import is_estimated
from energyprune.reporting import plots
from energyprune.reporting.doc import Banner, Bullets, Document, Figure, Section, table
from energyprune.reporting.text import anatomy_rows
from energyprune.units import format_energy, format_time


def _fidelity(row: Mapping[str, Any]) -> str:
    fidelity = row.get("fidelity") or {}
    value = fidelity.get("fidelity")
    worst = fidelity.get("max_abs_error")
    text = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
    if isinstance(worst, (int, float)):
        text += f" (max |diff| {worst:.2g})"
    return text


def _interval(pair: Any, fmt: Any = format_energy) -> str:
    return f"{fmt(pair[0])} .. {fmt(pair[1])}" if pair else "n/a"


def _baseline_row(result: Mapping[str, Any]) -> dict[str, Any]:
    base = result["baseline"]
    batch = base["batch_size"]
    low, high = base["ci95_j"]
    return {"per_sample_j": base["per_sample_j"], "ci95_per_sample_j": [low / batch, high / batch]}


def lever_rows(result: Mapping[str, Any]) -> list[list[str]]:
    tag = " (EST.)" if is_estimated(result.get("provenance")) else ""
    base = result["baseline"]
    rows = [["lever", "J/call" + tag, "J/sample" + tag, "95% interval / sample", "original alongside" + tag,
             "ratio / sample",
             "ratio 95% interval", "latency / call", "fidelity", "verdict"]]
    rows.append(["original", format_energy(base["per_inference_j"]), format_energy(base["per_sample_j"]),
                 _interval(_baseline_row(result)["ci95_per_sample_j"]), "", "1", "", format_time(base["latency_s"]["median"]),
                 "1 (itself)", f"batch {base['batch_size']}"])
    measured = [r for r in result["levers"] if r["status"] == "measured"]
    if result.get("combined") and result["combined"]["status"] == "measured":
        measured.append(result["combined"])
    for r in measured:
        name = r["name"] + (" (lossy)" if r.get("lossy") else "") + (f" [batch {r['batch_size']}]" if r.get("workload") else "")
        rows.append([name, format_energy(r["per_inference_j"]), format_energy(r["per_sample_j"]),
                     _interval(r["per_sample_ci95_j"]),
                     format_energy(r["original_per_sample_j"]) if r.get("original_per_sample_j") else "n/a",
                     f"{r['ratio']:.3f}",
                     _interval(r["ratio_ci95"], lambda v: f"{v:.3f}"), format_time(r["latency_s"]), _fidelity(r),
                     r["verdict"]])
    return rows


def skipped_lines(result: Mapping[str, Any]) -> list[str]:
    return [f"{r['name']}: {r['reason']}" for r in result["levers"] if r["status"] == "skipped"]


def _summary(result: Mapping[str, Any]) -> list[str]:
    worth = result.get("worth_it") or []
    if worth:
        line = f"worth it (saving beyond the interval, fidelity >= {result['fidelity_floor']:g}): {', '.join(worth)}"
    else:
        line = f"no lever saved energy beyond the interval with fidelity >= {result['fidelity_floor']:g}"
    combined = result.get("combined")
    if combined and combined.get("status") == "measured":
        line += f"; together ({combined['name']}): ratio {combined['ratio']:.3f}, {combined['verdict']}"
    return [line, "apply them first in the budget loop: energyprune prune MODEL --levers auto"]


def render_advice_text(result: Mapping[str, Any]) -> str:
    from energyprune.reporting.text import _columns  # the one column layout of the terminal tables

    estimated = is_estimated(result.get("provenance"))
    title = f"energyprune advise: {result.get('model') or result['label']} on {result['device']}"
    lines = [title, "  provenance: " + ("ESTIMATED - from a power model, not a hardware counter" if estimated
                                        else "MEASURED - hardware counters")]
    tag = " (ESTIMATED)" if estimated else ""
    lines += [f"  {k}: {v}" for k, v in anatomy_rows(result["baseline"], tag)]
    lines += ["", _columns(lever_rows(result))]
    skipped = skipped_lines(result)
    if skipped:
        lines += ["", "  skipped:"] + [f"    - {s}" for s in skipped]
    lines += [""] + [f"  {s}" for s in _summary(result)]
    if result.get("fidelity_data"):
        lines.append(f"  fidelity checked on: {result['fidelity_data']}")
    return "\n".join(lines) + "\n"


def advice_document(result: Mapping[str, Any]) -> Document:
    estimated = is_estimated(result.get("provenance"))
    label = result.get("model") or result.get("label") or "model"
    rows = lever_rows(result)
    measured = [r for r in result["levers"] if r["status"] == "measured"]
    if result.get("combined") and result["combined"]["status"] == "measured":
        measured.append(result["combined"])

    def draw() -> bytes:
        return plots.levers_plot(measured, _baseline_row(result), estimated=estimated,
                                 title=f"Levers: {label}")

    tag = " (ESTIMATED)" if estimated else ""
    sections = [
        Section("Where the energy goes", [table(("figure", "value"), anatomy_rows(result["baseline"], tag))]),
        Section("Levers", [table(rows[0], rows[1:]), Figure(
            "Left: energy per sample with each lever (bars: 95% interval; blue: worth it). Right: each lever's "
            "energy ratio to the original against the fidelity it loses.", draw, estimated)]),
        Section("Summary", [Bullets(tuple(_summary(result)))]),
    ]
    skipped = skipped_lines(result)
    if skipped:
        sections.append(Section("Skipped", [Bullets(tuple(skipped))]))
    if result.get("fidelity_data"):
        sections.append(Section("Fidelity data", [str(result["fidelity_data"])]))
    banner = Banner(str(result.get("provenance")), (f"device {result['device']}, batch {result['batch_size']}",))
    return Document(f"energyprune advice: {label}", str(result.get("schema")), banner, sections)
