"""Document for `energyprune.prune_result/1` (`energyprune prune`, `prune_to_energy(...).to_dict()`):
energy and fidelity per step against the target, and the original model's power trace."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from energyprune.reporting.text import summary_rows
from energyprune.reporting import carbon_text, plots
from energyprune.reporting.doc import (
    Banner,
    Bullets,
    Code,
    Document,
    Figure,
    Section,
    energy,
    is_number,
    key_values,
    num,
    pair,
    pretty_json,
    seconds,
    table,
    tag,
)
from energyprune.reporting.measure_doc import comparison_document, measurement_banner, trace_figure
from energyprune.reporting.scores_doc import unit_name
from energyprune.backends.base import is_estimated


def _ratio(value: Any, ci: Any) -> str:
    return f"{num(value, '.4f')} ({pair(ci, lambda v: num(v, '.4f'))})"


def target_ratio(result: Mapping[str, Any]) -> float | None:
    """The target as an energy ratio (target J / the original's J), when it is an energy target."""
    target = result.get("target") or {}
    original_j = (result.get("original") or {}).get("per_inference_j")
    if is_number(target.get("target_j")) and is_number(original_j) and original_j > 0:
        return float(target["target_j"]) / float(original_j)
    return None


Panel = tuple[str, str, list[Any], Any]  # name, unit, values (step 0 first), target


def _extra_panel(result: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> Panel | None:
    """A latency or power target is not an energy ratio: it gets its own panel."""
    target = result.get("target") or {}
    original = result.get("original") or {}
    kind = target.get("kind")
    if kind == "latency_s":
        return ("latency per inference", "s", [original.get("latency_s")] + [s.get("latency_s") for s in steps],
                target.get("value"))
    if kind == "power_w":
        # Mean power of a step = its J per inference / its latency: derived from two reported figures.
        def mean_power(j: Any, s: Any) -> float | None:
            return j / s if is_number(j) and is_number(s) and s > 0 else None

        values = [original.get("mean_power_w")]
        values += [mean_power(s.get("per_inference_j"), s.get("latency_s")) for s in steps]
        return ("mean power (J per inference / latency)", "W", values, target.get("value"))
    return None


def _removed(step: Mapping[str, Any], limit: int = 6) -> str:
    """What the step removed, named as in the original model (older results: as in the model the
    step pruned)."""
    units = step.get("removed_original") or step.get("removed") or []
    names = [unit_name(u) for u in units if isinstance(u, Mapping)]
    if len(names) > limit:
        return ", ".join(names[:limit]) + f" and {len(names) - limit} more"
    return ", ".join(names) or "-"


def prune_document(result: Mapping[str, Any]) -> Document:
    provenance = result.get("provenance")
    t = tag(provenance)
    estimated = is_estimated(provenance)
    target = result.get("target") or {}
    original = result.get("original") or {}
    final = result.get("final") or {}
    steps = [s for s in result.get("steps") or [] if isinstance(s, Mapping)]
    model = result.get("model", "model")
    measurement = original.get("measurement") if isinstance(original.get("measurement"), Mapping) else None
    banner_lines = measurement_banner(measurement).lines if measurement else ()
    banner = Banner(str(provenance), tuple(banner_lines))

    summary = table(("figure", "value"), [
        ("model", model),
        ("criterion", f"{result.get('criterion')} (unit: {result.get('unit_kind')})"),
        ("target", f"{target.get('text', 'n/a')} ({target.get('kind', '?')} {num(target.get('value'))}"
                   + (f"; {energy(target['target_j'])} per inference{t}" if is_number(target.get("target_j")) else "")
                   + ")"),
        ("reached", num(result.get("reached"))),
        ("stopped because", result.get("stop_reason", "n/a")),
        ("message", result.get("message", "")),
        ("provenance", str(provenance).upper()),
        (f"original per inference{t}", f"{energy(original.get('per_inference_j'))}   95% interval "
                                       f"{pair(original.get('ci95_j'), energy)}"),
        (f"final energy ratio{t}", f"{num(final.get('energy_ratio'), '.4f')}   95% interval "
                                   f"{pair(final.get('energy_ratio_ci95'), lambda v: num(v, '.4f'))}"),
        (f"final per inference{t}", energy(final.get("per_inference_j"))),
        ("parameters", f"{num(original.get('n_params'), ',')} -> {num(final.get('n_params'), ',')}"),
        ("FLOPs per inference", f"{num(original.get('flops'), '.4g')} -> {num(final.get('flops'), '.4g')}"),
        ("quality", f"{num(original.get('quality'))} -> {num(final.get('quality'))}"
                    + (f" (measured on {result['quality_measured_on']})" if result.get("quality_measured_on") else "")),
        ("steps", f"{len(steps)} ({sum(1 for s in steps if s.get('accepted') is not False)} accepted)"),
        ("duration", seconds(result.get("duration_s"))),
        *carbon_text.saving_rows(result, "original", "pruned"),
    ])
    ratio_target = target_ratio(result)
    extra = _extra_panel(result, steps)
    target_label = f"target {target.get('text', '')}" + (f" ({ratio_target:.3g})" if ratio_target else "")

    def draw() -> bytes:
        return plots.prune_steps_plot(steps, target_ratio=ratio_target, target_label=target_label, extra=extra,
                                      estimated=estimated, title=f"Pruning {model} with {result.get('criterion')}")

    caption = (f"Energy per inference relative to the original (bars: 95% interval), and fidelity to the "
               "original / task quality, after each step; step 0 is the original. Hollow markers: steps that "
               "were rejected and undone." + ("" if ratio_target is not None or extra else
                                              " The target is not an energy figure here: no target line."))
    step_rows = []
    for s in steps:
        step_rows.append((s.get("index"), _removed(s), num(s.get("n_removed_total")), num(s.get("n_params"), ","),
                          num(s.get("flops"), ".4g"),
                          _ratio(s.get("step_ratio"), s.get("step_ratio_ci95")),
                          _ratio(s.get("energy_ratio"), s.get("energy_ratio_ci95")),
                          energy(s.get("per_inference_j")), seconds(s.get("latency_s")), num(s.get("fidelity")),
                          num(s.get("quality")), num(s.get("accepted")), s.get("note", ""),
                          seconds(s.get("duration_s"))))
    sections = [
        Section("Summary", [summary]),
        Section("Energy and fidelity per step", [Figure(caption, draw, estimated)]),
        Section("Steps", [table(("step", "removed", "removed in all", "params", "FLOPs",
                                 f"step ratio{t} (95%)", f"energy ratio{t} (95%)", f"J/inference{t}", "latency",
                                 "fidelity", "quality", "accepted", "note", "took"), step_rows)]),
    ]
    comparison = final.get("comparison")
    if isinstance(comparison, Mapping) and comparison.get("a"):
        part = next(s for s in comparison_document(comparison).sections if s.title == "Windows, A against B")
        sections.append(Section("Final check: original (A) against pruned (B), interleaved", part.blocks))
    if measurement:
        sections.append(Section("Original model: power trace", [
            trace_figure(measurement, f"Power trace: {model}, original"),
            table(("figure", "value"), summary_rows(measurement)),
        ]))
    metrics = result.get("metrics")
    if isinstance(metrics, Mapping) and metrics:
        blocks: list[Any] = []
        for name, block in metrics.items():
            blocks.append(key_values(block if isinstance(block, Mapping) else {name: block}, caption=str(name)))
        sections.append(Section("Metrics", blocks))
    if result.get("warnings"):
        sections.append(Section("Warnings", [Bullets(tuple(str(w) for w in result["warnings"]))]))
    if result.get("record"):
        sections.append(Section("Pruning record", [Code(pretty_json(result["record"]),
                                                        summary="the record (JSON): what to remove to replay it")]))
    return Document(f"energyprune prune: {model} with {result.get('criterion')}", str(result.get("schema")),
                    banner, sections)
