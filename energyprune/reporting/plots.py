"""Plots for the HTML report, as PNG bytes.

matplotlib is an optional extra (`pip install 'energyprune[report]'`): it is imported inside each
function, and its absence raises `PlotsUnavailable`, which the HTML writer turns into a line in
place of the plot. We draw on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so
rendering a report never switches the backend of a user's notebook or opens a window.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from energyprune.errors import EnergyPruneError
from energyprune.reporting.pareto import Point, clean_points, pareto_front

INSTALL_HINT = "plots need `pip install 'energyprune[report]'`"
ESTIMATED_COLOR = "#b35900"
WINDOW_COLORS = ("#1f77b4", "#ff7f0e")  # A, B (one colour when a measurement has one workload)


class PlotsUnavailable(EnergyPruneError):
    """matplotlib is not installed: the report renders its tables and says how to get the plots."""


@dataclass(frozen=True)
class Span:
    """A stretch of the time axis to shade: a measured window, or the idle baseline."""

    start_s: float
    end_s: float
    group: str  # legend entry shared by the spans of one kind ("windows", "A", "B", "idle")


def plots_available() -> bool:
    try:
        _matplotlib()
    except PlotsUnavailable:
        return False
    return True


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 - the canvas we draw on
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as error:
        raise PlotsUnavailable(f"{INSTALL_HINT} ({error})") from None
    return matplotlib


def _figure(width: float = 8.0, height: float = 4.2, nrows: int = 1, sharex: bool = False) -> tuple[Any, Any]:
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, list(axes)


def _title(fig: Any, title: str, estimated: bool) -> None:
    if estimated:
        # The label travels with the picture: a PNG copied out of the report still says it.
        fig.suptitle(f"{title}\nESTIMATED: from a power model, not a hardware counter",
                     color=ESTIMATED_COLOR, fontsize=11)
    else:
        fig.suptitle(title, fontsize=11)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _module_boundaries(ax: Any, names: Sequence[str]) -> None:
    """Where thousands of neurons are plotted, a line and a label where one module's units end."""
    modules = [name.split("[")[0] for name in names]
    starts = [i for i, m in enumerate(modules) if i == 0 or m != modules[i - 1]]
    if len(starts) > 12:
        return  # more labels than fit: the x axis stays a plain unit count
    for start in starts:
        if start:
            ax.axvline(start - 0.5, color="grey", lw=0.6, ls=":")
        ax.text(start, 1.01, modules[start], transform=ax.get_xaxis_transform(), fontsize=7, rotation=0,
                ha="left", va="bottom", color="#555555")


def _joule_scale(values: Sequence[float]) -> tuple[float, str]:
    """(divisor, unit) so that tick labels read 0.43 mJ rather than 0.00043 J."""
    finite = [abs(v) for v in values if _finite(v) and v != 0]
    top = max(finite) if finite else 1.0
    for factor, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ")):
        if top >= factor:
            return factor, unit
    return 1e-12, "pJ"


def _side_legend(ax: Any) -> None:
    """A legend to the right of the axes: it never hides a bar or a point (constrained layout
    makes room for it)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- power trace ----------------------------------------------------------------------------------
def power_trace_plot(trace: Mapping[str, Any], *, idle_w: Mapping[str, float] | None = None,
                     spans: Sequence[Span] = (), estimated: bool = False,
                     title: str = "Power trace") -> bytes:
    """Power of each domain over time (W against s), the idle level of each as a dashed line, and
    the measured windows shaded. `trace` is a PowerTrace dict: {"t_s": [...], "power_w": {domain: [...]}}."""
    t = [float(x) for x in trace.get("t_s") or []]
    series = {str(k): [float(v) if _finite(v) else math.nan for v in values]
              for k, values in (trace.get("power_w") or {}).items()}
    fig, (ax,) = _figure(8.0, 4.4)
    colors = [f"C{i}" for i in range(10)]
    shaded: set[str] = set()
    span_colors = {"idle": "#999999", "A": WINDOW_COLORS[0], "B": WINDOW_COLORS[1]}
    t0 = t[0] if t else 0.0
    for i, span in enumerate(spans):
        if span.end_s <= t0:
            continue  # placed before the first sample: nothing of it is on this trace
        color = span_colors.get(span.group, WINDOW_COLORS[0])
        label = None if span.group in shaded else span.group
        shaded.add(span.group)
        # Alternate the shade so that back-to-back windows stay distinguishable.
        ax.axvspan(max(t0, span.start_s), span.end_s, color=color, alpha=0.10 if i % 2 else 0.22, lw=0, label=label)
    for i, (name, values) in enumerate(series.items()):
        n = min(len(t), len(values))
        color = colors[i % len(colors)]
        ax.plot(t[:n], values[:n], color=color, lw=1.4, marker="." if n < 40 else None, label=name)
        if idle_w and _finite(idle_w.get(name)):
            ax.axhline(idle_w[name], color=color, ls="--", lw=1.0, label=f"{name} idle ({idle_w[name]:.3g} W)")
    if len(series) > 1:
        n = min([len(t)] + [len(v) for v in series.values()])
        total = [sum(v[j] for v in series.values()) for j in range(n)]
        ax.plot(t[:n], total, color="black", lw=1.0, alpha=0.8, label="total")
    ax.set_xlabel("time since the sampler started (s)")
    ax.set_ylabel("power (W)" + (" - ESTIMATED" if estimated else ""))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        fig.legend(loc="outside lower center", ncols=min(3, len(handles)), fontsize=8, frameon=False)
    if not t:
        ax.text(0.5, 0.5, "no power samples in this result", ha="center", va="center", transform=ax.transAxes)
    _title(fig, title, estimated)
    return _png(fig)


# ---- comparison --------------------------------------------------------------------------------------
def comparison_plot(a: Sequence[tuple[int, float]], b: Sequence[tuple[int, float]], ratios: Sequence[float],
                    *, labels: tuple[str, str] = ("A", "B"), ratio: float | None = None,
                    ratio_ci95: Sequence[float] | None = None, estimated: bool = False,
                    title: str = "Interleaved windows, A against B") -> bytes:
    """Top: energy per inference of every window in time order (window index), A and B. Bottom:
    each B window over the mean of the A windows around it, with the median and its 95% interval."""
    fig, (top, bottom) = _figure(8.0, 5.6, nrows=2, sharex=True)
    factor, unit = _joule_scale([j for _, j in list(a) + list(b)])
    for (label, points), color, marker in zip(((labels[0], a), (labels[1], b)), WINDOW_COLORS, ("o", "s")):
        xs = [i for i, _ in points]
        ys = [j / factor for _, j in points]
        top.plot(xs, ys, color=color, marker=marker, lw=1.2, label=label)
    top.set_ylabel(f"{unit} per inference" + (" (ESTIMATED)" if estimated else ""))
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="best")
    b_index = [i for i, _ in b][:len(ratios)]
    bottom.plot(b_index, list(ratios)[:len(b_index)], color=WINDOW_COLORS[1], marker="s", lw=1.2,
                label=f"{labels[1]} / mean of the {labels[0]} windows around it")
    if _finite(ratio):
        bottom.axhline(ratio, color="black", lw=1.0, label=f"median {ratio:.4f}")
    if ratio_ci95 and len(ratio_ci95) == 2 and all(_finite(v) for v in ratio_ci95):
        bottom.axhspan(ratio_ci95[0], ratio_ci95[1], color="black", alpha=0.1, lw=0,
                       label=f"95% interval {ratio_ci95[0]:.4f} .. {ratio_ci95[1]:.4f}")
    bottom.axhline(1.0, color="grey", ls=":", lw=1.0)
    bottom.set_ylabel("energy ratio B / A")
    bottom.set_xlabel("window index (time order)")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8, loc="best")
    _title(fig, title, estimated)
    return _png(fig)


# ---- scores and entropy --------------------------------------------------------------------------------
def scores_plot(units: Sequence[tuple[str, float | None]], profile: Mapping[str, Any] | None = None, *,
                criterion: str = "", title: str = "Scores across depth") -> bytes:
    """Top: each unit's score in model order (protected units, score +inf, marked). Bottom, when
    there is an entropy profile: entropy at each block boundary, its peak and the increase stage."""
    rows = 2 if units and profile else 1
    fig, axes = _figure(8.0, 3.4 * rows + 0.6, nrows=rows)
    ax_i = 0
    if units:
        ax = axes[ax_i]
        ax_i += 1
        xs = list(range(len(units)))
        finite = [(x, s) for x, (_, s) in zip(xs, units) if _finite(s)]
        never = [x for x, (_, s) in zip(xs, units) if not _finite(s)]
        if len(units) <= 64:
            ax.bar([x for x, _ in finite], [s for _, s in finite], color="C0", label="score")
            ax.set_xticks(xs, [name for name, _ in units], rotation=45 if len(units) > 8 else 0,
                          ha="right" if len(units) > 8 else "center", fontsize=7 if len(units) > 16 else 8)
            ranked = sorted(finite, key=lambda p: p[1])
            if len(units) <= 24:  # the removal order on the bars, where there is room to read it
                for rank, (x, s) in enumerate(ranked, start=1):
                    ax.annotate(f"#{rank}", (x, s), xytext=(0, 3 if s >= 0 else -3), textcoords="offset points",
                                ha="center", va="bottom" if s >= 0 else "top", fontsize=8)
            for x in never:
                ax.axvspan(x - 0.4, x + 0.4, facecolor="none", edgecolor="#999999", hatch="//", lw=0,
                           label="never removed\n(+inf: protected or\noutside the rule)" if x == never[0] else None)
        else:  # thousands of neurons: bars would be thinner than a pixel
            ax.plot([x for x, _ in finite], [s for _, s in finite], color="C0", lw=0.8, label="score")
            ax.set_xlabel("unit, in model order")
            _module_boundaries(ax, [name for name, _ in units])
            if never:
                # +inf has no height: mark those units along the top edge of the axes.
                ax.scatter(never, [0.97] * len(never), marker="|", color="#999999", transform=ax.get_xaxis_transform(),
                           label="never removed\n(+inf: protected or\noutside the rule)")
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.margins(y=0.12)
        ax.set_ylabel((f"score ({criterion})" if criterion else "score") + ("\nlower: removed first" if len(units) > 64 else ""))
        if len(units) <= 64:  # (line mode puts module names where this title would go)
            ax.set_title("lower scores are removed first" + (" (#n: removal order)" if len(units) <= 24 else ""),
                         fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        _side_legend(ax)
    if profile:
        ax = axes[ax_i]
        entropies = [float(h) if _finite(h) else math.nan for h in profile.get("entropies") or []]
        boundaries = list(range(len(entropies)))
        stage = [b for b in profile.get("increase_stage_blocks") or [] if isinstance(b, int)]
        for block in stage:  # block i sits between boundaries i and i + 1
            ax.axvspan(block, block + 1, color="C2", alpha=0.12, lw=0,
                       label="blocks in the\ncriterion's stage" if block == stage[0] else None)
        ax.plot(boundaries, entropies, color="C1", marker="o", lw=1.4,
                label=f"entropy ({profile.get('estimator', '?')} estimator)")
        peak = profile.get("peak_boundary")
        if isinstance(peak, int) and 0 <= peak < len(entropies):
            ax.scatter([peak], [entropies[peak]], s=120, facecolors="none", edgecolors="C3", lw=1.5,
                       zorder=3, label=f"peak (boundary {peak})")
        ax.set_xlabel("block boundary (0 = input of block 0; i = output of block i-1)")
        ax.set_ylabel(f"entropy ({profile.get('unit', 'nats')})")
        if boundaries:
            ax.set_xticks(boundaries if len(boundaries) <= 40 else boundaries[::max(1, len(boundaries) // 20)])
        ax.grid(alpha=0.3)
        _side_legend(ax)
    _title(fig, title, False)
    return _png(fig)


# ---- prune result: energy and fidelity per step ---------------------------------------------------------
def prune_steps_plot(steps: Sequence[Mapping[str, Any]], *, target_ratio: float | None = None,
                     target_label: str = "", extra: tuple[str, str, list[float | None], float | None] | None = None,
                     estimated: bool = False, title: str = "Energy and fidelity per step") -> bytes:
    """Energy ratio (pruned / original, with 95% interval bars) and fidelity / quality per step on
    twin axes, the target as a line; step 0 is the original model (ratio 1, fidelity 1). The solid
    line joins the accepted steps (the model's path); a rejected step was undone, so it is a hollow
    marker joined by a dotted line to the step it was tried from. `extra` = (name, unit, values per
    step with step 0 first, target) adds a panel for a latency or power target."""
    rows = 2 if extra else 1
    fig, axes = _figure(8.0, 4.8 + (2.4 if extra else 0), nrows=rows, sharex=True)  # raises first without matplotlib
    from matplotlib.lines import Line2D

    ax = axes[0]
    xs = [0] + [int(s["index"]) if isinstance(s.get("index"), int) else i + 1 for i, s in enumerate(steps)]
    accepted = [True] + [s.get("accepted", True) is not False for s in steps]
    twin = ax.twinx()
    ratio = [1.0] + [s.get("energy_ratio") for s in steps]
    _trajectory(ax, xs, ratio, accepted, "C0", "o")
    for i, low_high in enumerate([None] + [s.get("energy_ratio_ci95") for s in steps]):
        if _finite(ratio[i]) and isinstance(low_high, (list, tuple)) and len(low_high) == 2 \
                and all(_finite(v) for v in low_high):
            below, above = max(0.0, ratio[i] - low_high[0]), max(0.0, low_high[1] - ratio[i])
            ax.errorbar([xs[i]], [ratio[i]], yerr=[[below], [above]], color="C0", capsize=3, lw=1.0, fmt="none")
    handles = [Line2D([], [], color="C0", marker="o", label="energy ratio (pruned / original), 95% bars")]
    if _finite(target_ratio):
        ax.axhline(target_ratio, color="C3", ls="--", lw=1.2)
        handles.append(Line2D([], [], color="C3", ls="--", label=target_label or f"target {target_ratio:.3g}"))
    for key, color, marker in (("fidelity", "C2", "^"), ("quality", "C4", "v")):
        # The original's fidelity is 1 by definition; its quality is in the summary table.
        values = [1.0 if key == "fidelity" else None] + [s.get(key) for s in steps]
        if sum(1 for v in values[1:] if _finite(v)):
            _trajectory(twin, xs, values, accepted, color, marker)
            handles.append(Line2D([], [], color=color, marker=marker, label=key + " (right axis)"))
    if not all(accepted):
        handles.append(Line2D([], [], marker="o", color="grey", mfc="white", ls=":", label="rejected step (undone)"))
    ax.set_ylabel("energy ratio, pruned / original" + (" (ESTIMATED)" if estimated else ""), color="C0")
    twin.set_ylabel("fidelity / quality (1 = the original)")
    ax.grid(alpha=0.3)
    if extra:
        name, unit, values, target = extra
        panel = axes[1]
        _trajectory(panel, xs, list(values) + [None] * (len(xs) - len(values)), accepted, "C1", "o")
        handles.append(Line2D([], [], color="C1", marker="o", label=f"{name} (lower panel)"))
        if _finite(target):
            panel.axhline(target, color="C3", ls="--", lw=1.2)
            handles.append(Line2D([], [], color="C3", ls="--", label=f"target {target:.3g} {unit}"))
        panel.set_ylabel(f"{name} ({unit})")
        panel.grid(alpha=0.3)
    axes[-1].set_xlabel("step (0 = the original model)")
    axes[-1].set_xticks(xs if len(xs) <= 30 else xs[::max(1, len(xs) // 15)])
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    _title(fig, title, estimated)
    return _png(fig)


def _trajectory(ax: Any, xs: Sequence[int], values: Sequence[Any], accepted: Sequence[bool], color: str,
                marker: str) -> None:
    """Accepted steps joined by a solid line; each rejected one dotted from the last accepted."""
    last: tuple[int, float] | None = None
    path: list[tuple[int, float]] = []
    for x, value, ok in zip(xs, values, accepted):
        if not _finite(value):
            continue
        if ok:
            path.append((x, value))
            last = (x, value)
            ax.plot([x], [value], marker, color=color, ms=6)
        else:
            if last is not None:
                ax.plot([last[0], x], [last[1], value], ls=":", color=color, lw=1.0)
            ax.plot([x], [value], marker, color=color, mfc="white", ms=6)
    ax.plot([p[0] for p in path], [p[1] for p in path], color=color, lw=1.4)


# ---- Pareto front --------------------------------------------------------------------------------------------
def pareto_plot(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = "Pareto front",
                xlabel: str = "energy per inference (J)", ylabel: str = "fidelity (1 = the original)",
                estimated: bool = False, reference: Point | None = None,
                reference_label: str = "original model") -> bytes:
    """Fidelity against energy, one series per criterion: every point faint, the non-dominated
    ones joined (less energy and more fidelity are better). A log energy axis when the points
    span more than a factor of 20."""
    fig, (ax,) = _figure(8.0, 5.0)
    everything: list[Point] = []
    # An x label naming joules gets readable ticks (mJ, µJ); any other quantity is left as it is.
    factor, unit = (1.0, "")
    if "(J" in xlabel:
        factor, unit = _joule_scale([p[0] for raw in series.values() for p in clean_points(raw)])
        xlabel = xlabel.replace("(J", f"({unit}", 1)
    scaled = {name: [(p[0] / factor, p[1]) for p in clean_points(raw)] for name, raw in series.items()}
    if reference is not None and all(_finite(v) for v in reference):
        reference = (reference[0] / factor, reference[1])
    for i, (name, raw) in enumerate(scaled.items()):
        points = clean_points(raw)
        everything += points
        if not points:
            continue
        color = f"C{i % 10}"
        ax.scatter([p[0] for p in points], [p[1] for p in points], color=color, alpha=0.35, s=22)
        front = pareto_front(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], color=color, marker="o", lw=1.6, ms=6,
                label=f"{name} ({len(front)} of {len(points)} on the front)")
    if reference is not None and all(_finite(v) for v in reference):
        ax.scatter([reference[0]], [reference[1]], marker="*", s=180, color="black", zorder=4, label=reference_label)
        everything.append((float(reference[0]), float(reference[1])))
    xs = [p[0] for p in everything if p[0] > 0]
    if xs and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel + (" - ESTIMATED" if estimated else ""))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if everything:
        fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
        ax.set_title("up and to the left is better: less energy, more fidelity", fontsize=9, color="#555555")
    else:
        ax.text(0.5, 0.5, "no point has both an energy and a fidelity", ha="center", va="center",
                transform=ax.transAxes)
    _title(fig, title, estimated)
    return _png(fig)


# ---- levers --------------------------------------------------------------------------------------------
def levers_plot(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any], *, estimated: bool = False,
                title: str = "Energy per sample, by lever") -> bytes:
    """Left: J per sample of the original and of each measured lever, with their 95% intervals.
    Right: the same levers' energy ratio to the original (per sample) against the fidelity they lose."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    names = ["original"] + [str(r["name"]) for r in rows]
    values = [baseline["per_sample_j"]] + [r["per_sample_j"] for r in rows]
    intervals = [baseline["ci95_per_sample_j"]] + [r["per_sample_ci95_j"] for r in rows]
    factor, unit = _joule_scale([v for v in values if _finite(v)])
    ys = [v / factor for v in values]
    errors = [[max(0.0, y - lo / factor) for y, (lo, _) in zip(ys, intervals)],
              [max(0.0, hi / factor - y) for y, (_, hi) in zip(ys, intervals)]]
    colors = ["grey"] + [WINDOW_COLORS[0] if r.get("worth_it") else WINDOW_COLORS[1] for r in rows]
    left.barh(range(len(names)), ys, xerr=errors, color=colors, alpha=0.8, capsize=3)
    left.set_yticks(range(len(names)), names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel(f"{unit} per sample" + (" (ESTIMATED)" if estimated else "") + "; bars: 95% interval")
    left.grid(axis="x", alpha=0.3)
    for r in rows:
        fidelity = (r.get("fidelity") or {}).get("fidelity")
        if _finite(fidelity) and _finite(r.get("ratio")):
            lost = max(1.0 - float(fidelity), 1e-9)  # near-lossless levers differ in the 6th digit: log scale
            right.scatter([lost], [r["ratio"]], color=WINDOW_COLORS[0] if r.get("worth_it") else WINDOW_COLORS[1])
            right.annotate(str(r["name"]), (lost, r["ratio"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    right.set_xscale("log")
    right.axhline(1.0, color="grey", ls=":", lw=1.0)
    right.set_xlabel("fidelity lost (1 - fidelity, log; 1e-9 = none seen)")
    right.set_ylabel("energy ratio to the original (per sample)")
    right.grid(alpha=0.3)
    _title(fig, title, estimated)
    return _png(fig)
