"""Renders a prune benchmark's JSON (the source of truth) as prune.md and prune_<model>.png.

    python benchmarks/prune_report.py benchmarks/results/<device>/prune.json   # re-render in place

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

RANDOM = "random (mean of seeds)"


# ---- reading the data ---------------------------------------------------------------------------
def provenance_word(model: dict[str, Any]) -> str:
    return _provenance_word([row for run in model["runs"].values() for row in run.get("rows", [])], model["original"])


def seed_runs(runs: dict[str, Any], family: str) -> list[dict[str, Any]]:
    return [run for run in runs.values() if run.get("family") == family and run.get("rows")]


def seed_summary(model: dict[str, Any], runs: dict[str, Any], family: str, x: str) -> list[dict[str, Any]]:
    """Per x (k blocks, a fraction of neurons, k folded layers) over the seeds of `family`: mean, min
    and max of every measure and of the energy ratio."""
    by_x: dict[Any, list[dict[str, Any]]] = {}
    for run in seed_runs(runs, family):
        for row in run["rows"]:
            by_x.setdefault(row[x], []).append(row)
    out = []
    for value in sorted(by_x):
        rows = by_x[value]
        entry: dict[str, Any] = {x: value, "n": len(rows), "fidelity": {}, "spread": {}}
        for m in model["measures"]:
            values = [row["fidelity"][m["key"]] for row in rows]
            entry["fidelity"][m["key"]] = statistics.fmean(values)
            entry["spread"][m["key"]] = (min(values), max(values))
        ratios = [row["energy"]["ratio"] for row in rows]
        entry["ratio"] = statistics.fmean(ratios)
        entry["ratio_spread"] = (min(ratios), max(ratios))
        entry["params"] = statistics.fmean(row["params"] for row in rows)
        entry["flops"] = statistics.fmean(row["flops"] for row in rows)
        entry["latency_s"] = statistics.fmean(row["energy"]["latency_s"] for row in rows)
        out.append(entry)
    return out


def random_runs(model: dict[str, Any]) -> list[dict[str, Any]]:
    return seed_runs(model["runs"], "random")


def random_summary(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Per k over the random seeds: mean, min and max of every measure and of the energy ratio."""
    return seed_summary(model, model["runs"], "random", "k")


def pooled_energy(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Per k: the energy ratios of every distinct pruned model with k blocks removed (all criteria),
    their median and range, next to the FLOPs and parameter ratios."""
    orig = model["original"]
    by_k: dict[int, dict[tuple[int, ...], dict[str, Any]]] = {}
    for run in model["runs"].values():
        for row in run.get("rows", []):
            by_k.setdefault(row["k"], {})[tuple(row["removed"])] = row
    out = []
    for k in sorted(by_k):
        rows = list(by_k[k].values())
        ratios = sorted(r["energy"]["ratio"] for r in rows)
        latency = sorted(r["energy"]["latency_ratio"] for r in rows if "latency_ratio" in r["energy"])
        out.append({
            "k": k, "n_models": len(rows), "median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1],
            "latency_ratio_median": statistics.median(latency) if latency else None,
            "flops_ratio": statistics.fmean(r["flops"] for r in rows) / orig["flops"],
            "params_ratio": statistics.fmean(r["params"] for r in rows) / orig["params"],
        })
    return out


def series(model: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Primary held-out measure per criterion label (random seeds merged into their mean) and k."""
    key = primary_key(model)
    out: dict[str, dict[int, float]] = {}
    for label, run in model["runs"].items():
        if run.get("family") == "random" or not run.get("rows"):
            continue
        out[label] = {row["k"]: row["fidelity"][key] for row in run["rows"]}
    summary = random_summary(model)
    if summary:
        out[RANDOM] = {e["k"]: e["fidelity"][key] for e in summary}
    return out


# ---- formatting ---------------------------------------------------------------------------------
def _measure_text(m: dict[str, Any], value: float) -> str:
    if m["key"] == "perplexity":
        return f"{value:.1f}" if value < 1000 else f"{value:.3g}"
    return f"{value:.3f}"


def _ratio_text(energy: dict[str, Any]) -> str:
    low, high = energy["ratio_ci95"]
    return f"{energy['ratio']:.3f} [{low:.3f}, {high:.3f}]"


# ---- the summary paragraph ----------------------------------------------------------------------
def paragraph(model: dict[str, Any]) -> str:
    """What the numbers say about which criterion wins at equal measured energy, in plain words."""
    key = primary_key(model)
    label = next(m["label"] for m in model["measures"] if m["key"] == key)
    word = provenance_word(model)
    data = series(model)
    criteria = [c for c in data if c != "oracle"]
    ks = sorted({k for c in criteria for k in data[c]})
    sentences = []

    # 1. Is equal k equal energy? Compare the spread of ratios at each k with their intervals.
    spreads, halfwidths = [], []
    for k in ks:
        ratios, widths = [], []
        for run in model["runs"].values():
            for row in run.get("rows", []):
                if row["k"] == k and not row.get("shared_with_earlier_row"):
                    ratios.append(row["energy"]["ratio"])
                    low, high = row["energy"]["ratio_ci95"]
                    widths.append((high - low) / 2)
        if len(ratios) > 1:
            spreads.append(max(ratios) - min(ratios))
            halfwidths.append(statistics.median(widths))
    sizes = {(row["k"], row["params"], row["flops"]) for run in model["runs"].values() for row in run.get("rows", [])}
    same_size = len(sizes) == len({k for k, _, _ in sizes})
    pooled = pooled_energy(model)
    if pooled:
        sentences.append(
            f"Measured ({word}) energy ratio against FLOPs ratio, median over all models at each k: "
            + "; ".join(f"k={p['k']}: {p['median']:.2f} vs {p['flops_ratio']:.2f}" for p in pooled) + ".")
    if spreads:
        lead = (f"All {model['n_blocks']} blocks are the same size, so at equal k every criterion's model has the same "
                "parameters and FLOPs" if same_size else "At equal k the criteria's models differ in size")
        spread, width = statistics.median(spreads), statistics.median(halfwidths)
        verdict = ("well inside a typical 95% half-width of" if spread <= width else
                   "more than a typical 95% half-width of")
        sentences.append(
            f"{lead}; at equal k their {word} energy ratios differ by {spread:.3f} (median over k; at most "
            f"{max(spreads):.3f}), {verdict} {width:.3f}. "
            + ("The meter cannot tell the criteria apart at equal k, so equal k stands for equal measured energy "
               f"and the criteria are compared by held-out {label} at equal k."
               if spread <= width and same_size else
               f"Read the plot's top row with care; the criteria are compared by held-out {label} at equal k."))

    # 2. Who wins at each k (the oracle aside).
    wins: dict[str, int] = {}
    per_k = []
    for k in ks:
        present = {c: data[c][k] for c in criteria if k in data[c]}
        if len(present) < 2:
            continue
        best = max(present.values())
        winners = sorted(c for c, v in present.items() if v == best)
        for c in winners:
            wins[c] = wins.get(c, 0) + 1
        per_k.append(f"k={k}: {' = '.join(winners)} ({best:.3f})")
    if per_k:
        ranked = sorted(wins.items(), key=lambda kv: -kv[1])
        leader, n = ranked[0]
        sentences.append(f"Highest held-out {label} among the criteria — " + "; ".join(per_k) + ". "
                         f"{leader} is best at {n} of {len(per_k)} values of k.")

    # 3. Entropy against cosine, the seed's claim.
    if "cosine-block" in data:
        cos = data["cosine-block"]
        parts = []
        for c in criteria:
            if not c.startswith("entropy-"):
                continue
            common = [k for k in data[c] if k in cos]
            if not common:
                parts.append(f"{c} removes nothing (no block is a candidate under its rule)")
                continue
            better = sum(data[c][k] > cos[k] for k in common)
            worse = sum(data[c][k] < cos[k] for k in common)
            mean_diff = statistics.fmean(data[c][k] - cos[k] for k in common)
            parts.append(f"{c} beats cosine-block at {better} and loses at {worse} of {len(common)} values of k "
                         f"(mean difference {mean_diff:+.3f})")
        if parts:
            sentences.append("Entropy against cosine: " + "; ".join(parts) + ".")

    # 4. Against the random control.
    if RANDOM in data:
        rnd = data[RANDOM]
        beat = []
        for c in criteria:
            if c == RANDOM:
                continue
            common = [k for k in data[c] if k in rnd]
            if common:
                above = sum(data[c][k] > rnd[k] for k in common)
                beat.append(f"{c} {above}/{len(common)}")
        if beat:
            sentences.append("Above the mean of the random seeds at how many k: " + ", ".join(beat) + ".")

    # 5. The oracle: how far the best criterion is from it.
    if "oracle" in data and per_k:
        k_last = max(k for k in data["oracle"] if any(k in data[c] for c in criteria))
        best_c = max((c for c in criteria if k_last in data[c]), key=lambda c: data[c][k_last])
        gap = data["oracle"][k_last] - data[best_c][k_last]
        beaten = [f"{c} at k={k}" for c in criteria for k in data[c]
                  if k in data["oracle"] and data[c][k] > data["oracle"][k] + 1e-9]
        where = f"{gap:.3f} above" if gap >= 0 else f"{-gap:.3f} below"
        sentences.append(
            f"The greedy oracle (searched on calibration data, scored on held-out data) reaches {data['oracle'][k_last]:.3f} "
            f"at k={k_last}, {where} the best criterion there ({best_c}, {data[best_c][k_last]:.3f})"
            + (f"; on held-out data it is beaten by {', '.join(beaten)}" if beaten else "") + ".")

    # 6. Rules that refuse.
    stops = [f"{label_} stops at k={len(run['ranking'])}" for label_, run in model["runs"].items()
             if run.get("stopped_early")]
    if stops:
        sentences.append("Criteria that stop early (the rest of their scores are +inf): " + "; ".join(stops) + ".")
    errors = [f"{label_}: {run['error']}" for label_, run in model["runs"].items() if run.get("error")]
    if errors:
        sentences.append("Criteria that failed to score: " + "; ".join(errors) + ".")
    return " ".join(sentences)


# ---- Markdown -----------------------------------------------------------------------------------
def model_markdown(key: str, model: dict[str, Any], data: dict[str, Any]) -> list[str]:
    word = provenance_word(model)
    measures = model["measures"]
    orig = model["original"]
    lines = [f"## {model['title']} ({model['n_blocks']} blocks, k = 1..{model['k_max']})", ""]
    lines += [f"- calibration: {model['data']['calibration']}",
              f"- oracle search: {model['data']['oracle_search']}",
              f"- held-out evaluation: {model['data']['heldout']}",
              f"- energy / FLOPs inputs: {model['data']['measure_inputs']}",
              f"- original: {orig['params'] / 1e6:.2f} M parameters, {orig['flops'] / 1e9:.3f} GFLOPs, "
              f"{orig['energy']['per_inference_j']:.4g} J/inference {word} "
              f"(95% CI {orig['energy']['ci95_j'][0]:.4g}..{orig['energy']['ci95_j'][1]:.4g}"
              + (f"; the power model allows {orig['energy']['estimate_band_j'][0]:.3g}..{orig['energy']['estimate_band_j'][1]:.3g}"
                 if orig["energy"].get("estimate_band_j") else "")
              + f"), latency {orig['energy']['latency_s'] * 1e3:.1f} ms; "
              + ", ".join(f"{m['label']} {_measure_text(m, orig['fidelity'][m['key']])}" for m in measures),
              f"- checks: in-place block skipping (oracle search) vs `remove_blocks`: max rel. diff "
              f"{model['checks']['skip_vs_surgery_max_rel_diff']:.1e}; cached-reference metrics vs "
              f"`energyprune.metrics.fidelity`: {model['checks']['metrics_vs_library_max_rel_diff']:.1e}",
              f"- run time {model['wall_s'] / 60:.1f} min", ""]
    for skip in model.get("criteria_skipped", []):
        lines.insert(-1, f"- not run on this model: {skip['criterion']} — {skip['reason']}")
    lines += ["**What it shows.** " + paragraph(model), ""]
    lines += [f"![{model['title']}](prune_{key}.png)", ""]

    # At a glance: the primary measure, criterion × k.
    pk = primary_key(model)
    plabel = next(m["label"] for m in measures if m["key"] == pk)
    srs = series(model)
    ks = list(range(1, model["k_max"] + 1))
    lines += [f"Held-out {plabel} by blocks removed (— : the criterion has no more candidates):", "",
              "| criterion | " + " | ".join(f"k={k}" for k in ks) + " |",
              "| --- | " + " | ".join("---" for _ in ks) + " |"]
    for label, values in srs.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[k]:.3f}" if k in values else "—" for k in ks) + " |")
    lines.append("")

    # Energy by k, pooled over criteria.
    lines += [f"Size and {word} energy by blocks removed, over every distinct pruned model at that k:", "",
              "| k | models | params ratio | FLOPs ratio | energy ratio median [min, max] | latency ratio median |",
              "| --- | --- | --- | --- | --- | --- |"]
    for p in pooled_energy(model):
        latency = "n/a" if p["latency_ratio_median"] is None else f"{p['latency_ratio_median']:.3f}"
        lines.append(f"| {p['k']} | {p['n_models']} | {p['params_ratio']:.3f} | {p['flops_ratio']:.3f} | "
                     f"{p['median']:.3f} [{p['min']:.3f}, {p['max']:.3f}] | {latency} |")
    loads = [v for run in model["runs"].values() for r in run.get("rows", []) for v in r["energy"].get("loadavg_1min", [])]
    if loads:
        lines += ["", load_note(data, loads)]
    lines.append("")

    # The full table.
    head = ["criterion", "k", "blocks removed", "params (M)", "GFLOPs",
            f"energy ratio [95% CI] ({word})", "latency ms (original, same comparison)"] + [m["label"] for m in measures]
    lines += [f"Every pruned model (energy ratio = pruned / original J per inference, `compare`, {word}):", "",
              "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for label, run in model["runs"].items():
        if run.get("family") == "random":
            continue
        for row in run.get("rows", []):
            lines.append("| " + " | ".join([
                label, str(row["k"]), ",".join(map(str, row["removed"])), f"{row['params'] / 1e6:.2f}",
                f"{row['flops'] / 1e9:.3f}", _ratio_text(row["energy"]) + (" *" if row.get("shared_with_earlier_row") else ""),
                f"{row['energy']['latency_s'] * 1e3:.1f} ({row['energy']['latency_original_s'] * 1e3:.1f})",
            ] + [_measure_text(m, row["fidelity"][m["key"]]) for m in measures]) + " |")
    for entry in random_summary(model):
        low, high = entry["ratio_spread"]
        lines.append("| " + " | ".join([
            f"random ({entry['n']} seeds: mean [min, max])", str(entry["k"]), "varies", f"{entry['params'] / 1e6:.2f}",
            f"{entry['flops'] / 1e9:.3f}", f"{entry['ratio']:.3f} [{low:.3f}, {high:.3f}]",
            f"{entry['latency_s'] * 1e3:.1f}",
        ] + [f"{_measure_text(m, entry['fidelity'][m['key']])} [{_measure_text(m, entry['spread'][m['key']][0])}, "
             f"{_measure_text(m, entry['spread'][m['key']][1])}]" for m in measures]) + " |")
    lines += ["", "\\* the same set of blocks as an earlier row: the same pruned model, measured once.", ""]

    # Rankings.
    lines += ["Rankings (computed once on the original model; first blocks are removed first):", "",
              "| criterion | candidates | ranking (first 10) | scoring time | note |", "| --- | --- | --- | --- | --- |"]
    for label, run in model["runs"].items():
        note = run.get("stop_note", "") or run.get("error", "")
        profile = run.get("entropy_profile")
        if profile:
            note = (note + "; " if note else "") + (f"entropy peaks at boundary {profile['peak_boundary']}, "
                                                     f"protected {profile['protected']}")
        if run.get("cut_by_time_budget_at_k"):
            note = (note + "; " if note else "") + f"time budget spent at k={run['cut_by_time_budget_at_k']}"
        ranking = run.get("ranking", [])
        lines.append(f"| {label} | {run.get('candidates', 0)} | {', '.join(map(str, ranking[:10]))}"
                     f"{' …' if len(ranking) > 10 else ''} | {run.get('score_s', 0):.1f} s | {note} |")
    lines.append("")
    return lines


def _on_gpu(data: dict[str, Any]) -> bool:
    return str(data.get("torch_device", "cpu")).startswith("cuda")


def run_lines(data: dict[str, Any]) -> list[str]:
    """Where and how the run was made: the hardware, the software, and each call of a resumed run."""
    if _on_gpu(data):
        where = (f"on {data.get('device_name', data['device'])} ({data['torch_device']}; driver {data.get('driver', '?')}, "
                 f"CUDA {data.get('cuda', '?')}, torch {data['torch']}; float32, TF32 matmuls "
                 f"{'on' if data.get('tf32_matmul') else 'off'})")
    else:
        where = (f"on {data.get('device_name', data['device'])} (torch {data['torch']}, {data['threads']} threads)")
    calls = data.get("calls") or []
    if len(calls) <= 1:
        return [f"Run {data['date']} {where} with `{data['command']}`, {data['wall_s'] / 60:.1f} min."]
    lines = [f"Run {where} in {len(calls)} calls continued with `--resume`, {data['wall_s'] / 60:.1f} min in all:", ""]
    lines += [f"- {c.get('date')}: `{c.get('command')}` ({(c.get('wall_s') or 0) / 60:.1f} min)" for c in calls]
    return lines


def meter_note(data: dict[str, Any]) -> str:
    if _on_gpu(data):
        return ("Windows of >= 20 ticks of the GPU's ~100 ms energy counter (NVML; the backend integrates the "
                "instantaneous power between ticks where it can).")
    return "Short windows on a shared 2-vCPU machine: read the intervals."


def load_note(data: dict[str, Any], loads: list[float]) -> str:
    if _on_gpu(data):
        return (f"1-minute load average of the host's CPUs around the comparisons: {min(loads):.2f} to {max(loads):.2f} "
                "(the GPU's counter does not see the CPUs; a busy host slows the kernel launches).")
    return (f"1-minute load average around the comparisons: {min(loads):.2f} to {max(loads):.2f} "
            f"on {data['threads']} threads (above ~{data['threads']}: other work shared the CPUs).")


def markdown(data: dict[str, Any]) -> str:
    words = {provenance_word(m) for m in data["models"].values()}
    word = "ESTIMATED" if "ESTIMATED" in words else "measured"
    cfg = data["meter_config"]
    lines = [f"# Block pruning benchmark: {data['device']}" + (" (quick smoke test)" if data.get("quick") else ""), "",
             *run_lines(data), "",
             f"**Energy figures are {word}**" + (
                 " — no hardware energy counter is readable on this machine, so the meter fell back to the "
                 "estimated backend (CPU utilisation × a power model). The ratio pruned/original from interleaved "
                 "windows is the figure to trust; the absolute joules are a model's guess." if word == "ESTIMATED" else "."),
             "",
             "Method:", ""]
    lines += [f"- {name}: {text}" for name, text in data["method"].items()]
    lines += [f"- meter: backend {cfg['backend']}, windows of >= {cfg['window_s']} s, {cfg['repeats']} per model "
              f"(interleaved with the original's), idle {cfg['idle_s']} s, warm-up {cfg['min_warmup_s']}..{cfg['max_warmup_s']} s. "
              + meter_note(data),
              "- criteria in the registry at run time: " + ", ".join(data["criteria_available"])]
    for skip in data.get("criteria_skipped", []):
        lines.append(f"- not run: {skip['criterion']} — {skip['reason']}")
    lines += [f"- {data['efficientnet']}", ""]
    for key, model in data["models"].items():
        lines += model_markdown(key, model, data)
    return "\n".join(lines) + "\n"


# ---- plots --------------------------------------------------------------------------------------
STYLE = {
    "entropy-knn (all)": ("tab:red", "-", "o"),
    "entropy-knn (increase)": ("tab:red", ":", "o"),
    "entropy-bucket (all)": ("tab:orange", "-", "s"),
    "entropy-bucket (increase)": ("tab:orange", ":", "s"),
    "cosine-block": ("tab:blue", "-", "D"),
    "magnitude": ("tab:brown", "-", "v"),
    "oracle": ("black", "--", "*"),
}
EXTRA_COLOURS = ["tab:green", "tab:purple", "tab:pink", "tab:olive", "tab:cyan"]


def _styles(model: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    extra = iter(EXTRA_COLOURS)
    return {label: STYLE.get(label) or (next(extra, "tab:gray"), "-", "^")
            for label, run in model["runs"].items() if run.get("family") != "random" and run.get("rows")}


def plot(key: str, model: dict[str, Any], path: Path) -> None:
    """Top row: each held-out measure against the measured energy ratio (what was asked).
    Bottom row: the same against k, with the pooled energy ratio of each k under its tick: at
    equal k the models are equally large, so that row shows the criteria apart from meter noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    word = provenance_word(model)
    measures = model["measures"]
    orig = model["original"]
    styles = _styles(model)
    # Runs that removed exactly the same blocks at every k as a run drawn before them.
    twins: dict[str, str] = {}
    drawn: list[str] = []
    for label in styles:
        sets = [tuple(r["removed"]) for r in model["runs"][label]["rows"]]
        for other in drawn:
            if sets == [tuple(r["removed"]) for r in model["runs"][other]["rows"]]:
                twins[label] = other
                break
        drawn.append(label)
    summary = random_summary(model)
    pooled = pooled_energy(model)
    all_ratios = [r["energy"]["ratio"] for run in model["runs"].values() for r in run.get("rows", [])]
    lo, hi = min(all_ratios + [1.0]), max(all_ratios + [1.0])
    pad = 0.08 * (hi - lo) + 0.005
    x_lo, x_hi = lo - pad, hi + 3 * pad  # room on the right for the "original" label
    fig, axes = plt.subplots(2, len(measures), figsize=(6.0 * len(measures), 10.0), squeeze=False)
    handles: dict[str, Any] = {}

    def draw(ax: Any, m: dict[str, Any], by_k: bool) -> None:
        y0 = orig["fidelity"][m["key"]]

        def x_of(row: dict[str, Any]) -> float:
            return row["k"] if by_k else row["energy"]["ratio"]

        x_orig = 0 if by_k else 1.0
        for run in random_runs(model):
            ax.plot([x_orig] + [x_of(r) for r in run["rows"]], [y0] + [r["fidelity"][m["key"]] for r in run["rows"]],
                    color="0.75", lw=0.9, marker=".", ms=4, zorder=1)
        if summary:
            xs = [x_orig] + [(e["k"] if by_k else e["ratio"]) for e in summary]
            (h,) = ax.plot(xs, [y0] + [e["fidelity"][m["key"]] for e in summary],
                           color="0.45", lw=1.8, ls="-.", marker="x", zorder=2)
            handles[f"random: mean of {summary[0]['n']} seeds (thin grey: each seed)"] = h
        for label, (colour, style, marker) in styles.items():
            run = model["runs"][label]
            rows = run["rows"]
            xs = [x_orig] + [x_of(r) for r in rows]
            ys = [y0] + [r["fidelity"][m["key"]] for r in rows]
            kwargs = dict(color=colour, ls=style, marker=marker, ms=10 if marker == "*" else 5, lw=1.6,
                          zorder=4 if label == "oracle" else 3, mfc="white" if style == ":" else colour)
            if by_k:
                (h,) = ax.plot(xs, ys, **kwargs)
            else:
                xerr = [[0.0] + [r["energy"]["ratio"] - r["energy"]["ratio_ci95"][0] for r in rows],
                        [0.0] + [r["energy"]["ratio_ci95"][1] - r["energy"]["ratio"] for r in rows]]
                h = ax.errorbar(xs, ys, xerr=xerr, elinewidth=0.6, capsize=2, **kwargs)
                if label == "oracle":
                    for r in rows:
                        ax.annotate(f"k={r['k']}", (r["energy"]["ratio"], r["fidelity"][m["key"]]),
                                    textcoords="offset points", xytext=(5, 5), fontsize=7)
            note = f" (no candidate after k={len(rows)})" if run.get("stopped_early") else ""
            if label in twins:
                note += f" (same blocks as {twins[label]}: the lines coincide)"
            handles[label + note] = h
        for label, run in model["runs"].items():  # rules that refuse every block: say so in the legend
            if run.get("family") != "random" and not run.get("rows") and run.get("stopped_early"):
                colour, style, marker = STYLE.get(label) or ("tab:gray", "-", "^")
                (h,) = ax.plot([], [], color=colour, ls=style, marker=marker)
                handles[f"{label} (removes nothing: every score +inf)"] = h
        ax.plot([x_orig], [y0], marker="o", color="black", ms=8, mfc="white", zorder=6)
        ax.annotate("original", (x_orig, y0), textcoords="offset points",
                    xytext=(8, -3) if not by_k else (6, 6), ha="left", fontsize=8)
        if m.get("log"):
            ax.set_yscale("log")
        better = "higher is better" if m["higher_is_better"] else "lower is better"
        ax.set_ylabel(f"held-out {m['label']} ({better})")
        ax.grid(alpha=0.3)
        if by_k:
            ks = [0] + [p["k"] for p in pooled]
            ax.set_xticks(ks)
            ax.set_xticklabels(["0\n1.00"] + [f"{p['k']}\n{p['median']:.2f}" for p in pooled], fontsize=8)
            ax.set_xlabel(f"blocks removed k\n(under each k: median {word} energy ratio of all models with k removed)")
            ax.set_title(f"{m['label']} vs blocks removed")
        else:
            ax.set_xlim(x_lo, x_hi)
            ax.set_xlabel(f"energy per inference, pruned / original ({word})\nbars: 95% CI of the ratio (may run off the axis)")
            ax.set_title(f"{m['label']} vs {word} energy ratio")

    for column, m in enumerate(measures):
        draw(axes[0][column], m, by_k=False)
        draw(axes[1][column], m, by_k=True)
    fig.suptitle(f"{model['title']}: held-out fidelity of one-shot block pruning vs {word} energy "
                 f"(k = 1..{model['k_max']} blocks of {model['n_blocks']})", fontsize=13)
    place_legend(fig, handles, top=0.97)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def place_legend(fig: Any, handles: dict[str, Any], *, top: float = 0.97, max_cols: int = 4, fontsize: int = 9,
                 wrap: int = 52) -> Any:
    """A figure legend under the axes that fits the figure's width: long labels are wrapped and
    columns are dropped until the legend is no wider than the figure; the axes are laid out above
    its measured height. (A fixed 4-column legend of long labels ran off both edges of a 2-column
    figure.) Save with bbox_inches="tight" as well, so nothing drawn is ever cut."""
    import textwrap

    labels = [textwrap.fill(label, wrap, subsequent_indent="  ") for label in handles]
    renderer = fig.canvas.get_renderer()
    width_px = fig.get_figwidth() * fig.dpi
    legend = None
    for ncol in range(min(max_cols, len(labels)), 0, -1):
        legend = fig.legend(list(handles.values()), labels, loc="lower center", bbox_to_anchor=(0.5, 0.0),
                            ncol=ncol, fontsize=fontsize, frameon=False)
        if legend.get_window_extent(renderer).width <= 0.98 * width_px or ncol == 1:
            break
        legend.remove()
    height = legend.get_window_extent(renderer).height / (fig.get_figheight() * fig.dpi) if legend else 0.0
    fig.tight_layout(rect=(0, min(0.5, height + 0.01), 1, top))
    return legend


def render(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write prune.json, prune.md and one prune_<model>.png per model into `out_dir`."""
    return write_report_files(data, out_dir, "prune", markdown(data), plot)


def main(argv: Sequence[str] | None = None) -> int:
    return rerender_main(None if argv is None else list(argv), "prune_report.py", "prune.json", render)


if __name__ == "__main__":
    sys.exit(main())
