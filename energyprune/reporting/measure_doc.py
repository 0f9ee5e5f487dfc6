"""Documents for `energyprune.measurement/1` and `energyprune.comparison/1`.

The summary and domain tables are those of `energyprune.reporting.text` (the terminal and Markdown
renderers of `measure`), so the HTML says exactly what the terminal said.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from energyprune.backends.base import is_estimated
from energyprune.measure.meter import METER_STOP_REASONS
from energyprune.reporting.text import batch_sweep_rows, domain_rows, summary_rows
from energyprune.reporting import carbon_text, plots
from energyprune.reporting.doc import (
    Banner,
    Bullets,
    Code,
    Document,
    Figure,
    Section,
    Table,
    energy,
    is_number,
    num,
    pretty_json,
    seconds,
    table,
    tag,
)

APPROXIMATE_WINDOWS = ("window positions are approximate: the JSON holds each window's length, not its start, "
                       "so the windows are drawn back to back, ending where the trace ends (they are the last "
                       "thing the meter runs)")


def measurement_banner(result: Mapping[str, Any]) -> Banner:
    provenance = str(result.get("provenance", "unknown"))
    lines = [f"backends: {', '.join(result.get('backends') or []) or 'n/a'}"]
    lines += [f"{d.get('name')}: {d.get('device')} ({d.get('provenance')}, {d.get('method')})"
              for d in result.get("domains") or []]
    device = result.get("device") or {}
    facts = [f"{k} {device[k]}" for k in ("torch_device", "host", "platform", "torch") if device.get(k)]
    if facts:
        lines.append("device: " + ", ".join(facts))
    return Banner(provenance, tuple(lines))


GroupOf = Callable[[Mapping[str, Any]], str]  # a window's legend group: "measured windows", "A", "B"


def window_spans(windows: Sequence[Mapping[str, Any]], trace_end_s: float,
                 group_of: GroupOf | None = None) -> list[plots.Span]:
    """Where each window sits on the trace's time axis. Exact when the windows carry `start_s`
    (relative to the trace's first sample); otherwise back to back ending at the trace's end."""
    ordered = sorted(windows, key=lambda w: w.get("index", 0))
    group = group_of or (lambda w: "measured windows")
    if ordered and all(is_number(w.get("start_s")) for w in ordered):
        return [plots.Span(w["start_s"], w["start_s"] + w["duration_s"], group(w)) for w in ordered]
    spans = []
    end = trace_end_s
    for w in reversed(ordered):
        start = end - float(w.get("duration_s") or 0.0)
        spans.append(plots.Span(start, end, group(w)))
        end = start
    return list(reversed(spans))


def has_exact_starts(windows: Sequence[Mapping[str, Any]]) -> bool:
    return bool(windows) and all(is_number(w.get("start_s")) for w in windows)


def trace_figure(result: Mapping[str, Any], title: str,
                 windows: Sequence[Mapping[str, Any]] | None = None, group_of: GroupOf | None = None) -> Figure | str:
    """The power-trace figure of a measurement dict, or a sentence saying why there is none."""
    trace = result.get("power_trace")
    if not trace or not trace.get("t_s"):
        return ("No power trace in this result (it was measured with --no-trace, or the backends had no "
                "power sensor to sample).")
    windows = list(result.get("windows") or []) if windows is None else list(windows)
    idle = {d["name"]: d["idle_power_w"] for d in result.get("domains") or []
            if isinstance(d, Mapping) and is_number(d.get("idle_power_w"))}
    end = float(trace["t_s"][-1])
    spans = window_spans(windows, end, group_of)
    estimated = is_estimated(result.get("provenance"))
    caption = (f"Power of each domain over time; dashed: the idle power measured "
               f"before the run; shaded: the measured windows. "
               + ("" if has_exact_starts(windows) else APPROXIMATE_WINDOWS[0].upper() + APPROXIMATE_WINDOWS[1:] + "."))

    def draw() -> bytes:
        return plots.power_trace_plot(trace, idle_w=idle, spans=spans, estimated=estimated, title=title)

    return Figure(caption, draw, estimated)


def _states(window: Mapping[str, Any]) -> str:
    parts = []
    for s in window.get("states") or []:
        text = f"{s.get('domain')}: {num(s.get('sm_clock_mhz'))} MHz, {num(s.get('temperature_c'))} C"
        if s.get("throttle_reasons"):
            text += ", " + "/".join(s["throttle_reasons"])
        parts.append(text)
    return "; ".join(parts) or "-"


def _window_table(windows: Sequence[Mapping[str, Any]], provenance: Any, run_of: GroupOf | None = None) -> Table:
    header = (["#"] + (["run"] if run_of else [])
              + ["inferences", "duration", f"J/inference{tag(provenance)}", "latency", "device state"])
    rows = []
    for w in sorted(windows, key=lambda w: w.get("index", 0)):
        n = w.get("n_inferences")
        latency = w["duration_s"] / n if is_number(w.get("duration_s")) and is_number(n) and n else None
        rows.append([w.get("index")] + ([run_of(w)] if run_of else [])
                    + [n, seconds(w.get("duration_s")), energy(w.get("per_inference_j")), seconds(latency),
                       _states(w)])
    return table(header, rows)


def _summary_table(result: Mapping[str, Any]) -> Table:
    return table(("figure", "value"), summary_rows(result))


def _domains_table(result: Mapping[str, Any]) -> Table:
    rows = domain_rows(result)
    return table(rows[0], rows[1:])


def _assumptions_and_warnings(result: Mapping[str, Any], sections: list[Section]) -> None:
    assumptions = [f"[{d['name']}] {a}" for d in result.get("domains") or [] for a in d.get("assumptions") or []]
    if assumptions:
        sections.append(Section("Assumptions", [Bullets(tuple(assumptions))]))
    if result.get("warnings"):
        sections.append(Section("Warnings", [Bullets(tuple(str(w) for w in result["warnings"]))]))


def measurement_document(result: Mapping[str, Any]) -> Document:
    label = result.get("model") or result.get("label") or "model"
    intro = [f"Model: {label}" + (f"; inputs {result['inputs']}" if result.get("inputs") else "")
             + f"; batch {result.get('batch_size')}."]
    sections = [
        Section("Summary", [*intro, _summary_table(result)]),
        Section("Power trace", [trace_figure(result, f"Power trace: {label}")]),
        Section("Domains", [_domains_table(result)]),
    ]
    sweep = batch_sweep_rows(result)
    if sweep:
        sections.append(Section("Energy per sample by batch size", [
            "Each batch size measured on its own (J/sample is what batching buys).", table(sweep[0], sweep[1:])]))
    sections += [
        Section("Windows", [_window_table(result.get("windows") or [], result.get("provenance"))]),
    ]
    _assumptions_and_warnings(result, sections)
    sections.append(Section("Device", [Code(pretty_json(result.get("device") or {}))]))
    return Document(f"energyprune measurement: {label}", str(result.get("schema")),
                    measurement_banner(result), sections)


def comparison_document(result: Mapping[str, Any]) -> Document:
    a, b = result["a"], result["b"]
    la, lb = str(a.get("label", "A")), str(b.get("label", "B"))
    provenance = result.get("provenance")
    t = tag(provenance)
    ratio, ci = result.get("ratio_b_over_a"), result.get("ratio_ci95") or []
    ratios = list(result.get("ratios") or [])
    summary = table(("figure", "value"), [
        (f"energy per inference, B / A{t}", f"{num(ratio, '.4f')}   95% interval "
         + (f"{num(ci[0], '.4f')} .. {num(ci[1], '.4f')}" if len(ci) == 2 else "n/a")
         + f"   ({len(ratios)} interleaved pairs)"),
        (f"A {la}{t}", f"{energy(a.get('per_inference_j'))} per inference, latency "
                       f"{seconds((a.get('latency_s') or {}).get('median'))}"),
        (f"B {lb}{t}", f"{energy(b.get('per_inference_j'))} per inference, latency "
                       f"{seconds((b.get('latency_s') or {}).get('median'))}"),
        ("provenance", str(provenance).upper()),
        ("stopped because", METER_STOP_REASONS.get(result.get("stop_reason"), str(result.get("stop_reason")))),
        *carbon_text.saving_rows(result, "A", "B"),
    ])
    estimated = is_estimated(provenance)
    a_points = [(w["index"], w["per_inference_j"]) for w in a.get("windows") or []]
    b_points = [(w["index"], w["per_inference_j"]) for w in b.get("windows") or []]

    def draw() -> bytes:
        return plots.comparison_plot(a_points, b_points, ratios, labels=("A " + la, "B " + lb), ratio=ratio,
                                     ratio_ci95=ci, estimated=estimated, title=f"B / A: {lb} against {la}")

    comparison_figure = Figure(f"Energy per inference of every window in time order (A B A B ... A), and each "
                               f"B window over the mean of the A windows just before and after it.",
                               draw, estimated)
    windows = [dict(w, _run="A") for w in a.get("windows") or []] + [dict(w, _run="B") for w in b.get("windows") or []]
    trace_source = a if a.get("power_trace") else b
    sections = [
        Section("Summary", [f"A: {a.get('model') or la}; B: {b.get('model') or lb}.", summary]),
        Section("Windows, A against B", [comparison_figure,
                                         _window_table(windows, provenance, run_of=lambda w: w["_run"])]),
        Section("Power trace", [trace_figure(trace_source, "Power trace: interleaved A and B windows",
                                             windows, group_of=lambda w: w["_run"])]),
    ]
    for name, part in (("A", a), ("B", b)):
        sections.append(Section(f"{name}: {part.get('label')}", [_summary_table(part), _domains_table(part)]))
    warnings = list(dict.fromkeys(list(a.get("warnings") or []) + list(b.get("warnings") or [])))
    assumptions = list(dict.fromkeys(f"[{d['name']}] {x}" for d in a.get("domains") or []
                                     for x in d.get("assumptions") or []))
    if assumptions:
        sections.append(Section("Assumptions", [Bullets(tuple(assumptions))]))
    if warnings:
        sections.append(Section("Warnings", [Bullets(tuple(warnings))]))
    sections.append(Section("Device", [Code(pretty_json(a.get("device") or {}))]))
    return Document(f"energyprune comparison: {lb} against {la}", str(result.get("schema")),
                    Banner(str(provenance), measurement_banner(a).lines), sections)
