"""Document for `energyprune.bench/1` (`energyprune bench`): the floor, the reference models, and
the Pareto front of the pruning criteria (fidelity against measured energy per inference).

The bench dict is large and still growing, so every field is read defensively (`.get`), what is
missing shows as n/a, and top-level fields this module does not know are listed, not dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from energyprune.backends.base import is_estimated
from energyprune.reporting import carbon_text, plots
from energyprune.reporting.doc import (
    Banner,
    Bullets,
    Document,
    Figure,
    Section,
    energy,
    is_number,
    key_values,
    num,
    pair,
    seconds,
    table,
    tag,
)

KNOWN_KEYS = {"schema", "device", "floor", "models", "criteria_runs", "seed_table", "seed_table_note", "target",
              "quick", "provenance", "assumptions", "skipped", "co2"}


def mappings(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, (list, tuple)) else []


def point_fidelity(point: Mapping[str, Any]) -> Any:
    """Fidelity, else task quality (as the bench's own tables do)."""
    return point.get("fidelity") if point.get("fidelity") is not None else point.get("quality")


def bench_provenance(bench: Mapping[str, Any]) -> str:
    prov = bench.get("provenance")
    if isinstance(prov, Mapping) and prov.get("energy"):
        return str(prov["energy"])
    if isinstance(prov, str):
        return prov
    seen = {str((m.get("measurement") or {}).get("provenance")) for m in mappings(bench.get("models"))}
    seen |= {str((r.get("prune_result") or {}).get("provenance")) for r in mappings(bench.get("criteria_runs"))}
    if "estimated" in seen:
        return "estimated"
    return "measured" if "measured" in seen else "unknown"


def run_provenance(run: Mapping[str, Any], default: str) -> str:
    return str((run.get("prune_result") or {}).get("provenance") or run.get("provenance") or default)


def pareto_series(bench: Mapping[str, Any], model: str) -> tuple[dict[str, list[tuple[float, float]]], str, int]:
    """For one model: {criterion: [(x, fidelity), ...]}, the x quantity ("per_inference_j" or
    "energy_ratio"), and how many points had to be left out. J per inference when every point with a
    fidelity has one (what the issue asks: fidelity against measured energy), else the energy ratio."""
    runs = [r for r in mappings(bench.get("criteria_runs")) if r.get("model") == model]
    points = [p for r in runs for p in mappings(r.get("points")) if is_number(point_fidelity(p))]
    key = "per_inference_j" if points and all(is_number(p.get("per_inference_j")) for p in points) else "energy_ratio"
    series: dict[str, list[tuple[float, float]]] = {}
    dropped = 0
    for run in runs:
        name = str(run.get("criterion_label") or run.get("criterion") or "?")
        for p in mappings(run.get("points")):
            if is_number(p.get(key)) and is_number(point_fidelity(p)):
                series.setdefault(name, []).append((float(p[key]), float(point_fidelity(p))))
            else:
                dropped += 1
        series.setdefault(name, [])
    return series, key, dropped


def _model_j(bench: Mapping[str, Any], model: str) -> Any:
    for m in mappings(bench.get("models")):
        if m.get("name") == model:
            return (m.get("measurement") or {}).get("per_inference_j")
    return None


def _pareto_figure(bench: Mapping[str, Any], model: str, provenance: str) -> Figure:
    series, key, dropped = pareto_series(bench, model)
    runs = [r for r in mappings(bench.get("criteria_runs")) if r.get("model") == model]
    estimated = is_estimated(provenance, *(run_provenance(r, provenance) for r in runs))
    used_quality = any(p.get("fidelity") is None and is_number(p.get("quality"))
                       for r in runs for p in mappings(r.get("points")))
    if key == "per_inference_j":
        reference = (_model_j(bench, model), 1.0)
        xlabel = "energy per inference (J, measured per step)"
    else:
        reference = (1.0, 1.0)
        xlabel = "energy ratio (pruned / original)"
    caption = (f"{model}: fidelity against {'J per inference' if key == 'per_inference_j' else 'the energy ratio'} "
               "after each pruning step, one colour per criterion; the non-dominated points (no other step of "
               "that criterion has less energy and more fidelity) are joined. Star: the original model "
               "(fidelity 1 by definition"
               + (", energy from the bench's own measurement of it)" if key == "per_inference_j" else ")")
               + "." + (f" {dropped} step(s) without an energy or fidelity figure are left out." if dropped else "")
               + (" Where a step has no fidelity, its task quality is plotted." if used_quality else ""))

    def draw() -> bytes:
        return plots.pareto_plot(series, title=f"Pareto front of the criteria: {model}", xlabel=xlabel,
                                 estimated=estimated, reference=reference if is_number(reference[0]) else None)

    return Figure(caption, draw, estimated)


def _floor_blocks(floor: Any, t: str) -> list[Any]:
    if floor is None:
        return ["No floor in this result."]
    if is_number(floor):
        return [f"Floor: {floor:.4g} J/FLOP{t}."]
    if not isinstance(floor, Mapping):
        return [f"Floor: {floor}"]
    best = floor.get("best") or {}
    blocks: list[Any] = [
        f"Floor: {num(floor.get('pj_per_flop'))} pJ/FLOP ({num(floor.get('j_per_flop'))} J/FLOP)"
        f"{tag(floor.get('provenance'))}, best {best.get('dtype', '?')} {best.get('size', '?')}^3; "
        f"{floor.get('source', 'source n/a')}, {floor.get('date', 'date n/a')}."]
    rows = [(p.get("dtype"), p.get("size"), num(p.get("flops"), ".3g"), energy(p.get("per_call_j")),
             num(p["j_per_flop"] * 1e12 if is_number(p.get("j_per_flop")) else None),
             seconds(p.get("latency_s")),
             num(p["flop_per_s"] / 1e9 if is_number(p.get("flop_per_s")) else None, ".3g"),
             p.get("provenance")) for p in mappings(floor.get("points"))]
    if rows:
        blocks.append(table(("dtype", "size", "FLOPs", f"J per product{tag(floor.get('provenance'))}", "pJ/FLOP",
                             "latency", "GFLOP/s", "provenance"), rows))
    return blocks


def _models_table(models: Sequence[Mapping[str, Any]]) -> Any:
    rows = []
    for m in models:
        meas = m.get("measurement") or {}
        phys = m.get("physics") or {}
        landauer = phys.get("landauer") or {}
        op = landauer.get("operational") or {}
        info = landauer.get("informational") or {}
        floor = phys.get("hardware_floor") or {}
        rows.append((m.get("name"), energy(meas.get("per_inference_j")) + tag(meas.get("provenance")),
                     pair(meas.get("ci95_j"), energy), seconds((meas.get("latency_s") or {}).get("median")
                                                              if isinstance(meas.get("latency_s"), Mapping)
                                                              else meas.get("latency_s")),
                     num(m.get("flops"), ".3g"), num(m.get("n_params"), ","), num(op.get("times_above"), ".3g"),
                     num(info.get("times_above"), ".3g"), num(floor.get("ratio"), ".3g")))
    return table(("model", "J/inference", "95% interval", "latency", "FLOPs", "params",
                  "x above Landauer (operational)", "x above Landauer (informational)", "x above floor"), rows)


def _information_table(models: Sequence[Mapping[str, Any]]) -> Any | None:
    rows = []
    for m in models:
        ic = m.get("information") or {}
        summary = ic.get("summary") or {}
        if summary:
            rows.append((m.get("name"), num(summary.get("n_layers")), num(summary.get("median"), ".3g"),
                         num(summary.get("min"), ".3g"), num(summary.get("max"), ".3g"),
                         num(summary.get("median_rank_fraction"), ".3f"), ic.get("estimator")))
    if not rows:
        return None
    return table(("model", "layers", "median IC", "min IC", "max IC", "median rank / max rank", "entropy estimator"),
                 rows)


def _semantic_table(models: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]]) -> Any | None:
    reports = [(m.get("name"), "original", m.get("semantic_entropy")) for m in models]
    reports += [(r.get("model"), r.get("criterion_label") or r.get("criterion"), r.get("semantic_entropy")) for r in runs]
    rows = []
    for name, state, report in reports:
        if isinstance(report, Mapping):
            clusters = ", ".join(str(p.get("n_clusters")) for p in mappings(report.get("prompts")))
            rows.append((name, state, num(report.get("mean_entropy_bits"), ".2f"),
                         num(report.get("mean_semantic_entropy_bits"), ".2f"), clusters))
    if not rows:
        return None
    return table(("model", "model state", "H (bits)", "H_s (bits)", "meaning clusters per prompt"), rows)


def _runs_table(runs: Sequence[Mapping[str, Any]], default: str) -> Any:
    rows = []
    for r in runs:
        final = r.get("final") or {}
        t = tag(run_provenance(r, default))
        rows.append((r.get("model"), r.get("criterion_label") or r.get("criterion"), num(r.get("reached")),
                     len(mappings(r.get("points"))), num(final.get("energy_ratio"), ".3f") + t,
                     pair(final.get("energy_ratio_ci95"), lambda v: num(v, ".3f")),
                     energy(final.get("per_inference_j")) + (t if is_number(final.get("per_inference_j")) else ""),
                     num(point_fidelity(final), ".3f"), num(final.get("n_params"), ","),
                     num(_final_landauer(r), ".3g"), num(((r.get("physics") or {}).get("hardware_floor") or {}).get("ratio"), ".3g"),
                     r.get("message") or ""))
    return table(("model", "criterion", "reached", "steps", "energy ratio", "95% interval", "J/inference",
                  "fidelity", "params", "x above Landauer (operational)", "x above floor", "message"), rows)


def _final_landauer(run: Mapping[str, Any]) -> Any:
    """E / E_L of the pruned model (operational bits), where the bench computed it."""
    landauer = ((run.get("physics") or {}).get("landauer") or {}).get("operational") or {}
    return landauer.get("times_above")


def _points_table(runs: Sequence[Mapping[str, Any]], default: str) -> Any:
    rows = []
    for r in runs:
        for i, p in enumerate(mappings(r.get("points"))):
            rows.append((r.get("model"), r.get("criterion_label") or r.get("criterion"), i + 1,
                         num(p.get("energy_ratio"), ".4f"), pair(p.get("energy_ratio_ci95"), lambda v: num(v, ".4f")),
                         energy(p.get("per_inference_j")), num(p.get("fidelity")), num(p.get("quality")),
                         num(p.get("n_params"), ","), num(p.get("flops"), ".4g"), run_provenance(r, default).upper()))
    return table(("model", "criterion", "step", "energy ratio", "95% interval", "J/inference", "fidelity", "quality",
                  "params", "FLOPs", "provenance"), rows)


def _seed_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    return table(("model", "row", "criterion", "reached", "compression", "fidelity loss", "energy saving",
                  "95% interval", "relative efficiency", "provenance"),
                 [(r.get("model"), r.get("row"), r.get("criterion") or "n/a", num(r.get("reached")),
                   num(r.get("compression_ratio"), ".3f"), num(r.get("fidelity_loss"), ".3f"),
                   num(r.get("energy_saving"), ".3f") + tag(r.get("provenance")),
                   pair(r.get("energy_saving_ci95"), lambda v: num(v, ".3f")), num(r.get("relative_efficiency"), ".3f"),
                   str(r.get("provenance") or "n/a").upper()) for r in rows])


def bench_document(bench: Mapping[str, Any]) -> Document:
    provenance = bench_provenance(bench)
    t = tag(provenance)
    device = bench.get("device") if isinstance(bench.get("device"), Mapping) else {"name": bench.get("device")}
    prov = bench.get("provenance") if isinstance(bench.get("provenance"), Mapping) else {}
    lines = []
    if prov.get("energy_note"):
        lines.append(str(prov["energy_note"]))
    lines.append(f"backends: {', '.join(map(str, prov.get('backends_used') or [])) or prov.get('backend') or 'n/a'}")
    lines.append("device: " + ", ".join(f"{k} {v}" for k, v in device.items() if v is not None))
    if bench.get("quick"):
        lines.append("--quick: short windows; the numbers are indicative, not for citing")
    models = mappings(bench.get("models"))
    runs = mappings(bench.get("criteria_runs"))
    overview = {k: prov.get(k) for k in ("date", "tool", "command", "backend", "backends_used", "backend_notes",
                                          "torch", "platform", "seconds", "meter_config") if k in prov}
    overview.update({"target": bench.get("target"), "quick": bench.get("quick")})
    sections = [Section("Overview", [key_values({"device": dict(device), **overview})])]
    sections.append(Section("Hardware floor (J per FLOP of dense matmuls)", _floor_blocks(bench.get("floor"), t)))
    sections.append(Section("Reference models", [_models_table(models)] if models else ["No model in this result."]))
    information = _information_table(models)
    if information is not None:
        sections.append(Section("Information concentration per layer", [
            "IC = rank(W) x H(activations) [bits] / ||W||_0 for every Linear/conv layer; per-layer figures in the JSON.",
            information]))
    semantic = _semantic_table(models, runs)
    if semantic is not None:
        sections.append(Section("Semantic entropy of sampled answers (H_s <= H)", [
            "H over distinct sampled token sequences, H_s over meaning clusters (MiniLM embeddings); bits, mean "
            "over the prompts; the original model and each criterion's final pruned model.", semantic]))
    names = list(dict.fromkeys(str(r.get("model")) for r in runs))
    if names:
        sections.append(Section("Pareto front of the criteria",
                                [_pareto_figure(bench, name, provenance) for name in names]))
        sections.append(Section(f"Budgeted pruning toward {bench.get('target', '?')}", [_runs_table(runs, provenance)]))
        sections.append(Section("Every step", [_points_table(runs, provenance)]))
    else:
        sections.append(Section("Budgeted pruning", ["No pruning run in this result (see Skipped)."]))
    co2_rows, co2_table = carbon_text.bench_rows(bench)
    sections.append(Section("CO2e", [table(("figure", "value"), co2_rows)]
                            + ([table(("model", "run", "CO2e per million inferences", "95% interval"), co2_table)]
                               if co2_table else [])))
    seed = mappings(bench.get("seed_table"))
    if seed:
        sections.append(Section("Seed table, with our measured numbers",
                                ([str(bench["seed_table_note"])] if bench.get("seed_table_note") else [])
                                + [_seed_table(seed)]))
    skipped = mappings(bench.get("skipped"))
    if skipped:
        sections.append(Section("Skipped", [Bullets(tuple(f"{s.get('what')}: {s.get('reason')}" for s in skipped))]))
    floor = bench.get("floor") if isinstance(bench.get("floor"), Mapping) else {}
    assumptions = [str(a) for a in bench.get("assumptions") or []]
    assumptions += [f"floor: {a}" for a in floor.get("assumptions") or []]
    assumptions += [f"energy: {a}" for a in floor.get("energy_assumptions") or []]
    if assumptions:
        sections.append(Section("Assumptions", [Bullets(tuple(assumptions))]))
    other = {k: v for k, v in bench.items() if k not in KNOWN_KEYS}
    if other:
        sections.append(Section("Other fields", [key_values(other)]))
    title = f"energyprune bench: {device.get('slug') or device.get('name') or 'device'}"
    return Document(title, str(bench.get("schema")), Banner(provenance, tuple(lines)), sections)
