"""Renders a neuron-pruning benchmark's JSON (the source of truth) as prune_neurons.md and
prune_neurons_<model>.png.

    python benchmarks/prune_neurons_report.py benchmarks/results/<device>/prune_neurons.json   # re-render in place

The summary paragraphs are written from the numbers, not by hand, so a re-run says what it found.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from energyprune.bench.session import primary_key, rerender_main, write_report_files  # noqa: E402
from energyprune.bench.session import provenance_word as _provenance_word  # noqa: E402
from prune_report import (  # noqa: E402
    _measure_text,
    _ratio_text,
    load_note,
    meter_note,
    place_legend,
    run_lines,
    seed_runs,
    seed_summary,
)

RANDOM = "random (mean of seeds)"
RANDOM_FOLD = "random fold (mean of seeds)"


# ---- reading the data ---------------------------------------------------------------------------
def _all_rows(model: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [r for run in model["runs"].values() for r in run.get("rows", [])]
    rows += [r for run in model.get("folding", {}).get("runs", {}).values() for r in run.get("rows", [])]
    return rows


def provenance_word(model: dict[str, Any]) -> str:
    return _provenance_word(_all_rows(model), model["original"])


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def pooled_energy(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Per fraction: the energy ratios of every distinct neuron-pruned model (all criteria), their
    median and range, next to the FLOPs and parameter ratios."""
    orig = model["original"]
    by_f: dict[float, dict[str, dict[str, Any]]] = {}
    for run in model["runs"].values():
        for row in run.get("rows", []):
            by_f.setdefault(row["fraction"], {})[row["selection"]] = row
    out = []
    for f in sorted(by_f):
        rows = list(by_f[f].values())
        ratios = sorted(r["energy"]["ratio"] for r in rows)
        halfwidths = [(r["energy"]["ratio_ci95"][1] - r["energy"]["ratio_ci95"][0]) / 2 for r in rows]
        latency = sorted(r["energy"]["latency_ratio"] for r in rows)
        out.append({
            "fraction": f, "n_models": len(rows), "median": statistics.median(ratios), "min": ratios[0],
            "max": ratios[-1], "halfwidth_median": statistics.median(halfwidths),
            "latency_ratio_median": statistics.median(latency),
            "flops_ratio": statistics.fmean(r["flops"] for r in rows) / orig["flops"],
            "params_ratio": statistics.fmean(r["params"] for r in rows) / orig["params"],
            "same_size": len({(r["params"], r["flops"]) for r in rows}) == 1,
        })
    return out


def series(model: dict[str, Any], key: str | None = None) -> dict[str, dict[float, float]]:
    """A held-out measure (default: the primary one) per neuron criterion and fraction (random seeds
    merged into their mean)."""
    key = key or primary_key(model)
    out: dict[str, dict[float, float]] = {}
    for label, run in model["runs"].items():
        if run.get("family") == "random" or not run.get("rows"):
            continue
        out[label] = {row["fraction"]: row["fidelity"][key] for row in run["rows"]}
    summary = seed_summary(model, model["runs"], "random", "fraction")
    if summary:
        out[RANDOM] = {e["fraction"]: e["fidelity"][key] for e in summary}
    return out


# ---- the summary paragraph ----------------------------------------------------------------------
def paragraph(model: dict[str, Any]) -> str:
    """What the numbers say about which criterion wins at equal size (equal measured energy), in plain words."""
    key = primary_key(model)
    label = next(m["label"] for m in model["measures"] if m["key"] == key)
    word = provenance_word(model)
    data = series(model)
    criteria = list(data)
    fractions = sorted({f for c in criteria for f in data[c]})
    sentences = []

    pooled = pooled_energy(model)
    if pooled:
        sentences.append(
            f"{word} energy ratio against FLOPs ratio, median over all criteria's models at each fraction of neurons "
            "removed: " + "; ".join(f"{_pct(p['fraction'])}: {p['median']:.2f} vs {p['flops_ratio']:.2f}"
                                   for p in pooled) + ".")
        spreads = [p["max"] - p["min"] for p in pooled if p["n_models"] > 1]
        widths = [p["halfwidth_median"] for p in pooled if p["n_models"] > 1]
        same = all(p["same_size"] for p in pooled)
        if spreads:
            spread, width = statistics.median(spreads), statistics.median(widths)
            lead = ("Every MLP keeps the same width, so at equal fraction every criterion's model has the same "
                    "parameters and FLOPs" if same else "At equal fraction the criteria's models differ in size")
            verdict = "within" if spread <= width else "more than"
            sentences.append(
                f"{lead}; their {word} energy ratios at equal fraction differ by {spread:.3f} (median over fractions; "
                f"at most {max(spreads):.3f}), {verdict} a typical 95% half-width of {width:.3f}. "
                + ("The meter does not tell the criteria apart at equal fraction, so they are compared by held-out "
                   f"{label} at equal fraction." if spread <= width and same else
                   f"The spread is meter noise on identical sizes (same FLOPs) rather than a property of the "
                   f"criteria; they are compared by held-out {label} at equal fraction." if same else
                   "Compare along the energy axis of the plot."))

    wins: dict[str, int] = {}
    per_f = []
    for f in fractions:
        present = {c: data[c][f] for c in criteria if f in data[c]}
        if len(present) < 2:
            continue
        best = max(present.values())
        winners = sorted(c for c, v in present.items() if v == best)
        for c in winners:
            wins[c] = wins.get(c, 0) + 1
        order = sorted(present, key=lambda c: -present[c])
        per_f.append(f"{_pct(f)}: " + " > ".join(f"{c} {present[c]:.3f}" for c in order))
    if per_f:
        ranked = sorted(wins.items(), key=lambda kv: -kv[1])
        leader, n = ranked[0]
        sentences.append(f"Held-out {label} by criterion, best first — " + "; ".join(per_f) + ". "
                         f"**Winner on {model['title']}: {leader}**, best at {n} of {len(per_f)} fractions.")

    rnd_summary = {e["fraction"]: e for e in seed_summary(model, model["runs"], "random", "fraction")}
    if rnd_summary:
        beat = []
        for c in criteria:
            if c == RANDOM:
                continue
            common = [f for f in data[c] if f in rnd_summary]
            if common:
                above_max = sum(data[c][f] > rnd_summary[f]["spread"][key][1] for f in common)
                below_min = sum(data[c][f] < rnd_summary[f]["spread"][key][0] for f in common)
                beat.append(f"{c} above every seed at {above_max}/{len(common)}, below every seed at "
                            f"{below_min}/{len(common)}")
        n_seeds = max(e["n"] for e in rnd_summary.values())
        if beat:
            sentences.append(f"Against the random control ({n_seeds} seed{'s' if n_seeds > 1 else ''}): "
                             + "; ".join(beat) + ".")

    # Overlap of the choices at the largest fraction.
    if model.get("overlap"):
        f_last = max(model["overlap"], key=float)
        table = model["overlap"][f_last]
        pairs = {}
        for a, row in table.items():
            for b, v in row.items():
                if a.startswith("random") or b.startswith("random") or (b, a) in pairs:
                    continue
                pairs[(a, b)] = v
        if pairs:
            sentences.append(f"At {_pct(float(f_last))} the criteria remove overlapping sets (share of removed neurons "
                             f"in common; chance level {float(f_last):.2f}): "
                             + ", ".join(f"{a} / {b} {v:.2f}" for (a, b), v in sorted(pairs.items(), key=lambda kv: -kv[1]))
                             + ".")

    mipp = model["runs"].get("mipp", {}).get("details", {})
    if mipp.get("prunable_fraction"):
        values = sorted(mipp["prunable_fraction"].values())
        sentences.append(f"MIPP's own stopping rule (loss ≤ the null unit's) marks {statistics.median(values):.0%} of "
                         f"each MLP's neurons prunable (median over MLPs; {values[0]:.0%} to {values[-1]:.0%}); "
                         "beyond that its ranking is its elimination order.")
    nep = model["runs"].get("nepenthe (neuron)", {}).get("details", {})
    if nep.get("dead_per_mlp"):
        dead = sum(nep["dead_per_mlp"].values())
        on = sum(nep["always_on_per_mlp"].values())
        ties = model["runs"]["nepenthe (neuron)"]["scores"].get("ties_at_min", 0)
        sentences.append(f"NEPENTHE's neuron entropies: {dead} neurons never ON and {on} always ON on the calibration "
                         f"tokens ({ties} tied at the lowest entropy; ties are broken by neuron index).")
    thermo = model["runs"].get("thermodynamic", {})
    if thermo.get("scores", {}).get("neg_inf"):
        sentences.append(f"thermodynamic scored {thermo['scores']['neg_inf']} inert neurons −inf ('remove first'), "
                         "but `select` keeps finite scores only, so they were never removed.")

    folding = model.get("folding", {})
    if folding.get("applies") is False:
        sentences.append(f"NEPENTHE's folding does not apply: {folding['reason']}.")
    elif folding.get("runs"):
        sentences.append(folding_sentence(model))
    errors = [f"{label_}: {run['error']}" for label_, run in model["runs"].items() if run.get("error")]
    if errors:
        sentences.append("Criteria that failed to score: " + "; ".join(errors) + ".")
    return " ".join(s for s in sentences if s)


def folding_sentence(model: dict[str, Any]) -> str:
    """NEPENTHE's folding against random folding orders, and against neuron pruning of similar FLOPs."""
    key = primary_key(model)
    label = next(m["label"] for m in model["measures"] if m["key"] == key)
    runs = model["folding"]["runs"]
    nep = runs.get("nepenthe (activation)")
    if not nep or not nep.get("rows"):
        return "NEPENTHE's folding produced no row."
    rnd = {e["k"]: e for e in seed_summary(model, runs, "random fold", "k")}
    neuron_rows = [(lbl, r) for lbl, run in model["runs"].items() for r in run.get("rows", [])
                   if run.get("family") != "random"]
    parts = []
    for row in nep["rows"]:
        text = (f"k={row['k']} ({', '.join(p.rsplit('.', 1)[-1] for p in row['folded'])}): {label} "
                f"{row['fidelity'][key]:.3f}, FLOPs ratio {row['flops'] / model['original']['flops']:.2f}, "
                f"energy ratio {row['energy']['ratio']:.2f}")
        if row["k"] in rnd:
            text += f" (random orders {rnd[row['k']]['fidelity'][key]:.3f})"
        if neuron_rows:
            near = min(neuron_rows, key=lambda lr: abs(lr[1]["flops"] - row["flops"]))
            same_f = [(lbl, r) for lbl, r in neuron_rows if r["fraction"] == near[1]["fraction"]]
            best = max(same_f, key=lambda lr: lr[1]["fidelity"][key])
            text += (f"; the neuron criteria at the nearest FLOPs ({_pct(near[1]['fraction'])} of neurons, FLOPs ratio "
                     f"{near[1]['flops'] / model['original']['flops']:.2f}) reach at best {best[1]['fidelity'][key]:.3f} "
                     f"({best[0]})")
        parts.append(text)
    scores = nep.get("scores", {})
    p_on = nep.get("mean_p_on", {})
    ordered = ", ".join(f"{p.rsplit('.', 1)[-1]}: {v:.3f}" + (f" (mean P(ON) {p_on[p]:.2f})" if p in p_on else "")
                        for p, v in sorted(scores.items(), key=lambda kv: (kv[1] is None, kv[1] or 0)) if v is not None)
    text = ("NEPENTHE folding (whole MLPs made linear, lowest mean ON/OFF entropy first; layer entropies in bits: "
            f"{ordered}) — " + "; ".join(parts) + ".")
    if p_on and max(p_on.values()) < 0.5:
        text += (" Every layer's units are mostly OFF (mean P(ON) < 0.5): a low entropy here means mostly OFF, and "
                 "replacing the activation by the identity passes every negative pre-activation through, which the "
                 "entropy does not tell apart from a mostly-ON (foldable) layer.")
    return text


# ---- Markdown -----------------------------------------------------------------------------------
def _criteria_table(model: dict[str, Any]) -> list[str]:
    lines = ["Criteria (each scored every neuron once, on the original model):", "",
             "| criterion | scoring time | scores: finite / +inf / −inf | what the criterion says about its scores |",
             "| --- | --- | --- | --- |"]
    for label, run in model["runs"].items():
        if run.get("error"):
            lines.append(f"| {label} | — | — | FAILED: {run['error']} |")
            continue
        s = run["scores"]
        notes = []
        d = run.get("details", {})
        if d.get("prunable_fraction"):
            v = sorted(d["prunable_fraction"].values())
            notes.append(f"prunable by its own rule: median {statistics.median(v):.0%} per MLP ({v[0]:.0%}..{v[-1]:.0%}); "
                         f"{_join(d['tokens'])} tokens, {_join(d['steps'])} elimination steps")
        if "inert_per_mlp" in d:
            notes.append(f"{sum(d['inert_per_mlp'].values())} inert neurons; temperature from {_join(d['batches'])} batches; "
                         f"t_anneal {d['t_anneal']}; loss: {d.get('loss', '?')}")
        if d.get("dead_per_mlp"):
            p_on = d.get("mean_p_on", {})
            notes.append(f"{sum(d['dead_per_mlp'].values())} never ON, {sum(d['always_on_per_mlp'].values())} always ON "
                         f"over {_join(d['tokens'])} tokens (counted on {'the gate' if d.get('gated') else 'the first layer'}'s "
                         f"pre-activation); {s.get('ties_at_min', 0)} tied at the lowest score"
                         + (f"; mean P(ON) per MLP {min(p_on.values()):.2f}..{max(p_on.values()):.2f}" if p_on else ""))
        if run.get("select_errors"):
            notes.append("select refused: " + "; ".join(f"{k}: {v}" for k, v in run["select_errors"].items()))
        if run.get("warnings"):
            notes.append("warnings: " + " / ".join(run["warnings"]))
        lines.append(f"| {label} | {run['score_s']:.1f} s | {s['finite']} / {s['pos_inf']} / {s['neg_inf']} | "
                     f"{'; '.join(notes)} |")
    return lines + [""]


def model_markdown(key: str, model: dict[str, Any], data: dict[str, Any]) -> list[str]:
    word = provenance_word(model)
    measures = model["measures"]
    orig = model["original"]
    fr = ", ".join(_pct(f) for f in model["fractions"])
    lines = [f"## {model['title']} ({model['n_mlps']} {'gated ' if model['gated'] else ''}MLPs of "
             f"{'/'.join(map(str, orig['mlp_widths']))} neurons; {fr} removed from each)", ""]
    lines += [f"- calibration: {model['data']['calibration']}; {model.get('calibration_tokens', '?')} non-padding tokens",
              f"- held-out evaluation: {model['data']['heldout']}",
              f"- energy / FLOPs inputs: {model['data']['measure_inputs']}",
              f"- original: {orig['params'] / 1e6:.2f} M parameters, {orig['flops'] / 1e9:.3f} GFLOPs, "
              f"{orig['energy']['per_inference_j']:.4g} J/inference {word} "
              f"(95% CI {orig['energy']['ci95_j'][0]:.4g}..{orig['energy']['ci95_j'][1]:.4g}"
              + (f"; the power model allows {orig['energy']['estimate_band_j'][0]:.3g}..{orig['energy']['estimate_band_j'][1]:.3g}"
                 if orig["energy"].get("estimate_band_j") else "")
              + f"), latency {orig['energy']['latency_s'] * 1e3:.1f} ms; "
              + ", ".join(f"{m['label']} {_measure_text(m, orig['fidelity'][m['key']])}" for m in measures)]
    if model.get("checks"):
        lines.append(f"- check: cached-reference metrics vs `energyprune.metrics.fidelity` on a neuron-pruned model: "
                     f"max rel. diff {model['checks']['metrics_vs_library_max_rel_diff']:.1e}")
    if model.get("cut_by_time_budget_at_fraction"):
        lines.append(f"- **time budget spent**: no row from fraction {_pct(model['cut_by_time_budget_at_fraction'])} on")
    lines += [f"- run time {model['wall_s'] / 60:.1f} min", ""]
    lines += ["**What it shows.** " + paragraph(model), ""]
    lines += [f"![{model['title']}](prune_neurons_{key}.png)", ""]

    pk = primary_key(model)
    plabel = next(m["label"] for m in measures if m["key"] == pk)
    fractions = model["fractions"]
    for m in measures:
        srs = series(model, m["key"])
        better = "higher is better" if m["higher_is_better"] else "lower is better"
        lines += [f"Held-out {m['label']} ({better}) by fraction of every MLP's neurons removed:", "",
                  "| criterion | " + " | ".join(_pct(f) for f in fractions) + " |",
                  "| --- | " + " | ".join("---" for _ in fractions) + " |"]
        for label, values in srs.items():
            lines.append(f"| {label} | " + " | ".join(_measure_text(m, values[f]) if f in values else "—"
                                                    for f in fractions) + " |")
        lines.append("")

    lines += [f"Size and {word} energy by fraction removed, over every distinct pruned model at that fraction:", "",
              "| fraction | models | params ratio | FLOPs ratio | energy ratio median [min, max] | median 95% half-width | latency ratio median |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in pooled_energy(model):
        lines.append(f"| {_pct(p['fraction'])} | {p['n_models']} | {p['params_ratio']:.3f} | {p['flops_ratio']:.3f} | "
                     f"{p['median']:.3f} [{p['min']:.3f}, {p['max']:.3f}] | {p['halfwidth_median']:.3f} | "
                     f"{p['latency_ratio_median']:.3f} |")
    loads = [v for r in _all_rows(model) for v in r["energy"].get("loadavg_1min", [])]
    if loads:
        lines += ["", load_note(data, loads)]
    lines.append("")
    lines += _criteria_table(model)

    head = ["criterion", "fraction", "neurons removed", "params (M)", "GFLOPs", f"energy ratio [95% CI] ({word})",
            "latency ms (original, same comparison)"] + [m["label"] for m in measures]
    lines += [f"Every pruned model (energy ratio = pruned / original J per inference, `compare`, {word}):", "",
              "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for label, run in model["runs"].items():
        if run.get("family") == "random":
            continue
        for row in run.get("rows", []):
            lines.append("| " + " | ".join([
                label, _pct(row["fraction"]), str(row["removed"]), f"{row['params'] / 1e6:.2f}", f"{row['flops'] / 1e9:.3f}",
                _ratio_text(row["energy"]) + (" *" if row.get("shared_with_earlier_row") else ""),
                f"{row['energy']['latency_s'] * 1e3:.1f} ({row['energy']['latency_original_s'] * 1e3:.1f})",
            ] + [_measure_text(m, row["fidelity"][m["key"]]) for m in measures]) + " |")
    for entry in seed_summary(model, model["runs"], "random", "fraction"):
        lines.append(_seed_row(f"random ({entry['n']} seed{'s' if entry['n'] > 1 else ''}: mean [min, max])", _pct(entry["fraction"]), entry, measures))
    lines += ["", "\\* the same neurons as an earlier row: the same pruned model, measured once.", ""]

    if model.get("overlap"):
        f_last = max(model["overlap"], key=float)
        table = model["overlap"][f_last]
        labels = list(table)
        lines += [f"Share of removed neurons in common at {_pct(float(f_last))} (row criterion's removed neurons also "
                  f"removed by the column's; chance level {float(f_last):.2f}):", "",
                  "| | " + " | ".join(labels) + " |", "| --- | " + " | ".join("---" for _ in labels) + " |"]
        for a in labels:
            lines.append(f"| {a} | " + " | ".join("—" if a == b else f"{table[a][b]:.2f}" for b in labels) + " |")
        lines.append("")

    folding = model.get("folding", {})
    if folding.get("applies") is False:
        lines += [f"NEPENTHE folding (unit kind \"activation\"): not applicable — {folding['reason']}.", ""]
    elif folding.get("runs"):
        lines += [f"NEPENTHE folding (unit kind \"activation\"): k = 1..{folding['k_max']} of {folding['units']} MLPs "
                  "folded into one linear map each, in the order of the criterion's scores (lowest mean ON/OFF "
                  "entropy first), against random orders:", ""]
        head = ["order", "k", "MLPs folded", "params (M)", "GFLOPs", f"energy ratio [95% CI] ({word})",
                "latency ms (original)"] + [m["label"] for m in measures]
        lines += ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
        for label, run in folding["runs"].items():
            if run.get("family") == "random fold":
                continue
            if run.get("error"):
                lines.append(f"| {label} | — | FAILED: {run['error']} |")
            for row in run.get("rows", []):
                lines.append("| " + " | ".join([
                    label, str(row["k"]), ", ".join(p.rsplit(".", 1)[-1] for p in row["folded"]),
                    f"{row['params'] / 1e6:.2f}", f"{row['flops'] / 1e9:.3f}",
                    _ratio_text(row["energy"]) + (" *" if row.get("shared_with_earlier_row") else ""),
                    f"{row['energy']['latency_s'] * 1e3:.1f} ({row['energy']['latency_original_s'] * 1e3:.1f})",
                ] + [_measure_text(m, row["fidelity"][m["key"]]) for m in measures]) + " |")
        for entry in seed_summary(model, folding["runs"], "random fold", "k"):
            lines.append(_seed_row(f"random order ({entry['n']} seed{'s' if entry['n'] > 1 else ''}: mean [min, max])", str(entry["k"]), entry, measures))
        orders = [f"{label}: {', '.join(p.rsplit('.', 1)[-1] for p in run.get('order', []))}"
                  for label, run in folding["runs"].items() if run.get("order")]
        lines += ["", "Folding orders (layer index, first folded first): " + "; ".join(orders) + ".", ""]
        if folding.get("cut_by_time_budget_at_k"):
            lines.insert(-1, f"**Time budget spent**: no folding row from k={folding['cut_by_time_budget_at_k']} on.")
            lines.insert(-1, "")
    return lines


def _join(values: Any) -> str:
    return ", ".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values)


def _seed_row(name: str, x: str, entry: dict[str, Any], measures: Sequence[dict[str, Any]]) -> str:
    low, high = entry["ratio_spread"]
    return "| " + " | ".join([
        name, x, "varies", f"{entry['params'] / 1e6:.2f}", f"{entry['flops'] / 1e9:.3f}",
        f"{entry['ratio']:.3f} [{low:.3f}, {high:.3f}]", f"{entry['latency_s'] * 1e3:.1f}",
    ] + [f"{_measure_text(m, entry['fidelity'][m['key']])} [{_measure_text(m, entry['spread'][m['key']][0])}, "
         f"{_measure_text(m, entry['spread'][m['key']][1])}]" for m in measures]) + " |"


def markdown(data: dict[str, Any]) -> str:
    words = {provenance_word(m) for m in data["models"].values()}
    word = "ESTIMATED" if "ESTIMATED" in words else "measured"
    cfg = data["meter_config"]
    lines = [f"# Neuron pruning benchmark: {data['device']}" + (" (QUICK SMOKE TEST — not results)" if data.get("quick") else ""),
             "", *run_lines(data), "",
             f"**Energy figures are {word}**" + (
                 " — no hardware energy counter is readable on this machine, so the meter fell back to the "
                 "estimated backend (CPU utilisation × a power model). The ratio pruned/original from interleaved "
                 "windows is the figure to trust; the absolute joules are a model's guess." if word == "ESTIMATED" else "."),
             "", "Method:", ""]
    lines += [f"- {name}: {text}" for name, text in data["method"].items()]
    lines += [f"- meter: backend {cfg['backend']}, windows of >= {cfg['window_s']} s, {cfg['repeats']} per model "
              f"(interleaved with the original's), idle {cfg['idle_s']} s, warm-up {cfg['min_warmup_s']}..{cfg['max_warmup_s']} s. "
              + meter_note(data),
              f"- calibration batches: {data['calibration_batches']}"
              + (" (more than the block benchmark's 2: MIPP's regression wants several tokens per neuron, the "
                 "thermodynamic temperature is a variance across batches)" if data["calibration_batches"] > 2 else ""),
              "- criteria in the registry at run time: " + ", ".join(data["criteria_available"])]
    for skip in data.get("criteria_skipped", []):
        lines.append(f"- not run: {skip['criterion']} — {skip['reason']}")
    est = data.get("estimate_full")
    if est and "total_min" in est:
        lines.append(f"- estimated duration of the full run from this quick run: ~{est['total_min']:.0f} min "
                     f"({'; '.join(est['assumptions'])})")
    lines.append("")
    for key, model in data["models"].items():
        lines += model_markdown(key, model, data)
    return "\n".join(lines) + "\n"


# ---- plots --------------------------------------------------------------------------------------
STYLE = {
    "magnitude": ("tab:brown", "-", "v"),
    "mipp": ("tab:green", "-", "s"),
    "thermodynamic": ("tab:red", "-", "D"),
    "nepenthe (neuron)": ("tab:blue", "-", "o"),
    "nepenthe (activation)": ("tab:purple", "--", "P"),
}
EXTRA_COLOURS = ["tab:olive", "tab:cyan", "tab:pink", "tab:orange"]


def plot(key: str, model: dict[str, Any], path: Path) -> None:
    """Row 1: each held-out measure against the measured energy ratio (what was asked). Row 2: the
    same against the fraction of neurons removed, with the pooled energy ratio under each tick: at
    equal fraction the models are equally large, so that row shows the criteria apart from meter
    noise. Row 3 (models with foldable MLPs only): NEPENTHE's folding against random folding orders
    on the energy axis, the neuron criteria faded behind for scale (folding can fall far below them,
    which would flatten row 1 if drawn there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    word = provenance_word(model)
    measures = model["measures"]
    orig = model["original"]
    extra = iter(EXTRA_COLOURS)
    styles = {label: STYLE.get(label) or (next(extra, "tab:gray"), "-", "^")
              for label, run in model["runs"].items() if run.get("family") != "random" and run.get("rows")}
    summary = seed_summary(model, model["runs"], "random", "fraction")
    folding = model.get("folding", {})
    fold_runs = folding.get("runs", {}) if folding.get("applies") else {}
    fold_rows = any(run.get("rows") for run in fold_runs.values())
    fold_summary = seed_summary(model, fold_runs, "random fold", "k") if fold_runs else []
    pooled = pooled_energy(model)

    def limits(rows: list[dict[str, Any]]) -> tuple[float, float]:
        ratios = [r["energy"]["ratio"] for r in rows] + [1.0]
        pad = 0.08 * (max(ratios) - min(ratios)) + 0.005
        return min(ratios) - pad, max(ratios) + 3 * pad  # room on the right for the "original" label

    neuron_rows = [r for run in model["runs"].values() for r in run.get("rows", [])]
    n_rows = 3 if fold_rows else 2
    fig, axes = plt.subplots(n_rows, len(measures), figsize=(6.0 * len(measures), 5.0 * n_rows), squeeze=False)
    handles: dict[str, Any] = {}

    def errorbar(ax: Any, rows: list[dict[str, Any]], ys: list[float], **kwargs: Any) -> Any:
        xerr = [[0.0] + [r["energy"]["ratio"] - r["energy"]["ratio_ci95"][0] for r in rows],
                [0.0] + [r["energy"]["ratio_ci95"][1] - r["energy"]["ratio"] for r in rows]]
        return ax.errorbar([1.0] + [r["energy"]["ratio"] for r in rows], ys, xerr=xerr, elinewidth=0.6, capsize=2,
                           **kwargs)

    def draw(ax: Any, m: dict[str, Any], mode: str) -> None:
        y0 = orig["fidelity"][m["key"]]
        by_fraction = mode == "fraction"
        x_orig = 0.0 if by_fraction else 1.0
        faded = mode == "fold"

        def x_of(row: dict[str, Any]) -> float:
            return 100 * row["fraction"] if by_fraction else row["energy"]["ratio"]

        if not faded:
            for run in seed_runs(model["runs"], "random"):
                ax.plot([x_orig] + [x_of(r) for r in run["rows"]],
                        [y0] + [r["fidelity"][m["key"]] for r in run["rows"]], color="0.75", lw=0.9, marker=".",
                        ms=4, zorder=1)
        if summary:
            xs = [x_orig] + [(100 * e["fraction"] if by_fraction else e["ratio"]) for e in summary]
            (h,) = ax.plot(xs, [y0] + [e["fidelity"][m["key"]] for e in summary], color="0.45", lw=1.8, ls="-.",
                           marker="x", zorder=2, alpha=0.3 if faded else 1.0)
            n = summary[0]["n"]
            if not faded:
                handles[f"random neurons: mean of {n} seed{'s' if n > 1 else ''}"
                        + (" (thin grey: each seed)" if n > 1 else "")] = h
            if mode == "energy":
                for e in summary:
                    ax.annotate(_pct(e["fraction"]), (e["ratio"], e["fidelity"][m["key"]]), textcoords="offset points",
                                xytext=(4, -10), fontsize=7, color="0.35")
        for label, (colour, style, marker) in styles.items():
            rows = model["runs"][label]["rows"]
            ys = [y0] + [r["fidelity"][m["key"]] for r in rows]
            if by_fraction:
                (h,) = ax.plot([x_orig] + [x_of(r) for r in rows], ys, color=colour, ls=style, marker=marker, ms=5,
                               lw=1.6, zorder=3)
            elif faded:
                ax.plot([x_orig] + [x_of(r) for r in rows], ys, color=colour, ls=style, marker=marker, ms=4, lw=1.2,
                        alpha=0.3, zorder=2)
                continue
            else:
                h = errorbar(ax, rows, ys, color=colour, ls=style, marker=marker, ms=5, lw=1.6, zorder=3)
            handles[label] = h
        if faded:
            for run in seed_runs(fold_runs, "random fold"):
                ax.plot([x_orig] + [r["energy"]["ratio"] for r in run["rows"]],
                        [y0] + [r["fidelity"][m["key"]] for r in run["rows"]], color="plum", lw=0.9, marker=".",
                        ms=4, zorder=3)
            if fold_summary:
                (h,) = ax.plot([x_orig] + [e["ratio"] for e in fold_summary],
                               [y0] + [e["fidelity"][m["key"]] for e in fold_summary], color="orchid", lw=1.8,
                               ls=":", marker="x", zorder=4)
                n = fold_summary[0]["n"]
                handles[f"random folding order: mean of {n} seed{'s' if n > 1 else ''}"
                        + (" (thin pink: each seed)" if n > 1 else "") + " (bottom row)"] = h
            nep = fold_runs.get("nepenthe (activation)", {})
            if nep.get("rows"):
                colour, style, marker = STYLE["nepenthe (activation)"]
                rows = nep["rows"]
                h = errorbar(ax, rows, [y0] + [r["fidelity"][m["key"]] for r in rows], color=colour, ls=style,
                             marker=marker, ms=7, lw=1.8, zorder=5)
                for r in rows:
                    ax.annotate(f"{r['k']} folded", (r["energy"]["ratio"], r["fidelity"][m["key"]]),
                                textcoords="offset points", xytext=(5, 4), fontsize=7, color=colour)
                handles["nepenthe (activation): k whole MLPs folded, lowest mean entropy first (bottom row)"] = h
        ax.plot([x_orig], [y0], marker="o", color="black", ms=8, mfc="white", zorder=6)
        ax.annotate("original", (x_orig, y0), textcoords="offset points",
                    xytext=(8, -3) if not by_fraction else (6, 6), ha="left", fontsize=8)
        if m.get("log"):
            ax.set_yscale("log")
        better = "higher is better" if m["higher_is_better"] else "lower is better"
        ax.set_ylabel(f"held-out {m['label']} ({better})")
        ax.grid(alpha=0.3)
        if by_fraction:
            ticks = [0.0] + [100 * p["fraction"] for p in pooled]
            ax.set_xticks(ticks)
            ax.set_xticklabels(["0%\n1.00"] + [f"{_pct(p['fraction'])}\n{p['median']:.2f}" for p in pooled], fontsize=8)
            ax.set_xlabel(f"neurons removed from every MLP (%)\n(under each: median {word} energy ratio of all models "
                          "at that fraction)")
            ax.set_title(f"{m['label']} vs neurons removed")
        elif faded:
            fold_all = [r for run in fold_runs.values() for r in run.get("rows", [])]
            ax.set_xlim(*limits(fold_all + neuron_rows))
            ax.set_xlabel(f"energy per inference, pruned / original ({word})\nbars: 95% CI of the ratio; faded: the "
                          "neuron criteria of the top row")
            ax.set_title(f"{m['label']}: NEPENTHE folding vs {word} energy ratio")
        else:
            ax.set_xlim(*limits(neuron_rows))
            ax.set_xlabel(f"energy per inference, pruned / original ({word})\n"
                          "bars: 95% CI of the ratio; grey labels: fraction of neurons removed")
            ax.set_title(f"{m['label']} vs {word} energy ratio")

    for column, m in enumerate(measures):
        draw(axes[0][column], m, "energy")
        draw(axes[1][column], m, "fraction")
        if fold_rows:
            draw(axes[2][column], m, "fold")
    fractions = ", ".join(_pct(f) for f in model["fractions"])
    fig.suptitle(f"{model['title']}: held-out fidelity of one-shot neuron pruning vs {word} energy\n"
                 f"({fractions} of the neurons of each of its {model['n_mlps']} MLPs removed, one-shot; CPU)",
                 fontsize=13)
    place_legend(fig, handles, top=0.96 if n_rows == 3 else 0.95)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def render(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write prune_neurons.json, prune_neurons.md and one prune_neurons_<model>.png per model into `out_dir`."""
    return write_report_files(data, out_dir, "prune_neurons", markdown(data), plot)


def main(argv: Sequence[str] | None = None) -> int:
    return rerender_main(None if argv is None else list(argv), "prune_neurons_report.py", "prune_neurons.json", render)


if __name__ == "__main__":
    sys.exit(main())
