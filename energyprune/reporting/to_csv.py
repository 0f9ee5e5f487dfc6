"""One CSV table per schema, for spreadsheets and pandas: units in the column names (`_j`, `_s`,
`_w`, `ratio`), full float precision, empty cells for missing values, and a provenance column on
every row so an estimated figure never loses its label when a row is copied out."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from energyprune.reporting.bench_doc import mappings, bench_provenance, run_provenance
from energyprune.reporting.scores_doc import ordered_units, unit_name

Rows = tuple[list[str], list[list[Any]]]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return str(value)


def _ci(values: Any) -> list[Any]:
    if isinstance(values, (list, tuple)) and len(values) == 2:
        return list(values)
    return [None, None]


def measurement_rows(result: Mapping[str, Any]) -> Rows:
    windows = sorted(result.get("windows") or [], key=lambda w: w.get("index", 0))
    domains = [d["name"] for d in result.get("domains") or []]
    idle_w = result.get("idle_power_w") or 0.0
    header = (["window_index", "label", "n_inferences", "duration_s", "latency_s", "per_inference_j",
               "per_inference_dynamic_j", "energy_j"] + [f"energy_j[{d}]" for d in domains]
              + [f"edge_uncertainty_j[{d}]" for d in domains] + ["provenance"])
    rows = []
    for w in windows:
        n, duration = w.get("n_inferences") or 0, w.get("duration_s")
        total = sum((w.get("energy_j") or {}).values())
        rows.append([w.get("index"), w.get("label"), n, duration, duration / n if n else None,
                     w.get("per_inference_j"),
                     # Above idle, as the Measurement computes it: minus the idle power over the window.
                     (total - idle_w * duration) / n if n and duration is not None else None, total]
                    + [(w.get("energy_j") or {}).get(d) for d in domains]
                    + [(w.get("edge_uncertainty_j") or {}).get(d) for d in domains] + [result.get("provenance")])
    return header, rows


def comparison_rows(result: Mapping[str, Any]) -> Rows:
    ratios = list(result.get("ratios") or [])
    header = ["window_index", "run", "label", "n_inferences", "duration_s", "latency_s", "per_inference_j",
              "ratio_b_over_a", "provenance"]
    tagged = [("A", w, None) for w in result["a"].get("windows") or []]
    b_windows = sorted(result["b"].get("windows") or [], key=lambda w: w.get("index", 0))
    # The k-th B window is bracketed by A windows k and k+1: ratios[k] belongs to it.
    tagged += [("B", w, ratios[k] if k < len(ratios) else None) for k, w in enumerate(b_windows)]
    rows = []
    for run, w, ratio in sorted(tagged, key=lambda item: item[1].get("index", 0)):
        n, duration = w.get("n_inferences") or 0, w.get("duration_s")
        rows.append([w.get("index"), run, w.get("label"), n, duration, duration / n if n and duration else None,
                     w.get("per_inference_j"), ratio, result.get("provenance")])
    return header, rows


def scores_rows(result: Mapping[str, Any]) -> Rows:
    profile = result.get("entropy_profile") or {}
    delta = list(profile.get("delta") or [])
    header = ["unit", "kind", "path", "index", "score", "removal_rank", "entropy_delta_nats", "criterion",
              "unit_kind", "provenance"]
    rows = []
    for u in ordered_units(result.get("scores") or []):
        # A block's dH is the entropy change across it (boundary i -> i+1); only blocks have one.
        dh = delta[u["index"]] if u.get("kind") == "block" and isinstance(u.get("index"), int) \
            and 0 <= u["index"] < len(delta) else None
        rows.append([unit_name(u), u.get("kind"), u.get("path"), u.get("index"),
                     u["score"] if u.get("score") is not None else math.inf, u.get("removal_rank"), dh,
                     result.get("criterion"), result.get("unit_kind"), "computed (no energy)"])
    return header, rows


def prune_rows(result: Mapping[str, Any]) -> Rows:
    header = ["step_index", "removed", "n_removed_total", "n_params", "flops", "step_ratio", "step_ratio_ci95_low",
              "step_ratio_ci95_high", "energy_ratio", "energy_ratio_ci95_low", "energy_ratio_ci95_high",
              "per_inference_j", "latency_s", "quality", "fidelity", "accepted", "note", "duration_s", "provenance"]
    rows = []
    for s in result.get("steps") or []:
        removed = ";".join(unit_name(u) for u in s.get("removed") or [] if isinstance(u, Mapping))
        rows.append([s.get("index"), removed, s.get("n_removed_total"), s.get("n_params"), s.get("flops"),
                     s.get("step_ratio"), *_ci(s.get("step_ratio_ci95")), s.get("energy_ratio"),
                     *_ci(s.get("energy_ratio_ci95")), s.get("per_inference_j"), s.get("latency_s"), s.get("quality"),
                     s.get("fidelity"), s.get("accepted"), s.get("note"), s.get("duration_s"),
                     result.get("provenance")])
    return header, rows


def bench_rows(result: Mapping[str, Any]) -> Rows:
    default = bench_provenance(result)
    header = ["model", "criterion", "criterion_label", "step", "energy_ratio", "energy_ratio_ci95_low",
              "energy_ratio_ci95_high", "per_inference_j", "fidelity", "quality", "n_params", "flops", "provenance"]
    rows = []
    for r in mappings(result.get("criteria_runs")):
        for i, p in enumerate(mappings(r.get("points"))):
            rows.append([r.get("model"), r.get("criterion"), r.get("criterion_label") or r.get("criterion"), i + 1,
                         p.get("energy_ratio"), *_ci(p.get("energy_ratio_ci95")), p.get("per_inference_j"),
                         p.get("fidelity"), p.get("quality"), p.get("n_params"), p.get("flops"),
                         run_provenance(r, default)])
    return header, rows


def advice_rows(result: Mapping[str, Any]) -> Rows:
    """One row per lever (the original first, the combination last), skipped ones with their reason."""
    header = ["lever", "status", "batch_size", "per_sample_j", "per_sample_ci95_low_j", "per_sample_ci95_high_j",
              "energy_ratio", "energy_ratio_ci95_low", "energy_ratio_ci95_high", "latency_s", "fidelity",
              "fidelity_metric", "max_abs_error", "lossy", "worth_it", "verdict_or_reason", "provenance"]
    base = result.get("baseline") or {}
    batch = base.get("batch_size") or 1
    low, high = (base.get("ci95_j") or [None, None])[:2]
    rows: list[list[Any]] = [["original", "measured", batch, base.get("per_sample_j"),
                              None if low is None else low / batch, None if high is None else high / batch, 1.0,
                              None, None, (base.get("latency_s") or {}).get("median"), 1.0, "itself", 0.0, False,
                              None, "", result.get("provenance")]]
    levers = list(mappings(result.get("levers")))
    if isinstance(result.get("combined"), Mapping):
        levers.append(result["combined"])
    for r in levers:
        fidelity = r.get("fidelity") or {}
        rows.append([r.get("name"), r.get("status"), r.get("batch_size"), r.get("per_sample_j"),
                     *_ci(r.get("per_sample_ci95_j")), r.get("ratio"), *_ci(r.get("ratio_ci95")), r.get("latency_s"),
                     fidelity.get("fidelity"), fidelity.get("metric"), fidelity.get("max_abs_error"), r.get("lossy"),
                     r.get("worth_it"), r.get("verdict") or r.get("reason"), r.get("provenance")])
    return header, rows


TABLES: dict[str, Callable[[Mapping[str, Any]], Rows]] = {
    "energyprune.measurement/1": measurement_rows,
    "energyprune.comparison/1": comparison_rows,
    "energyprune.scores/1": scores_rows,
    "energyprune.prune_result/1": prune_rows,
    "energyprune.bench/1": bench_rows,
    "energyprune.advice/1": advice_rows,
}


def write_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(v) for v in row] for row in rows])
    return buffer.getvalue()


def with_co2_columns(result: Mapping[str, Any], header: list[str], rows: list[list[Any]]) -> Rows:
    """Tables with a J-per-inference column get its CO2e and the intensity used, before the
    provenance column (empty cells where the result has no grid: no figure is made up)."""
    if "per_inference_j" not in header:
        return header, rows
    from energyprune.reporting import carbon_text

    source = header.index("per_inference_j")
    at = header.index("provenance") if "provenance" in header else len(header)
    g_per_kwh = carbon_text.g_per_kwh(result)
    header = header[:at] + ["co2e_per_inference_kg", "carbon_intensity_g_per_kwh"] + header[at:]
    rows = [row[:at] + [carbon_text.per_inference_kg(result, row[source]), g_per_kwh] + row[at:] for row in rows]
    return header, rows


def render_csv(result: Mapping[str, Any]) -> str:
    header, rows = TABLES[str(result.get("schema"))](result)
    return write_csv(*with_co2_columns(result, header, rows))
