"""Short windows on a 10 Hz sensor: how far an `EnergyMeter` span can be trusted, checked against
the real H200 trace (`benchmarks/results/nvidia-h200/traces/`) replayed on a simulated clock.

    python benchmarks/windows_benchmark.py                        # writes benchmarks/results/nvidia-h200/windows.{md,json}
    python benchmarks/windows_benchmark.py --per-segment 5 --out-dir /tmp/w   # a quicker look

No wall time and no GPU: the trace replays through the `replay` backend, each counter read costs
the 3 ms it cost on the card. The truth of each span, and why, is `energyprune.bench.trace_truth`'s
docstring (repeated in the report). The figures depend on the seed only through where spans land.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from energyprune.bench import trace_truth  # noqa: E402
from energyprune.files import write_atomic  # noqa: E402
from energyprune.version import __version__  # noqa: E402

HERE = Path(__file__).resolve().parent
TRACES = HERE / "results" / "nvidia-h200" / "traces"
COVERAGE_GOAL = 0.95
ERROR_GOAL = 0.05
ERROR_GOAL_FROM_S = 0.5


def _length(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:g} s"


def _table(rows: list[dict[str, float]], first: str) -> list[str]:
    lines = [f"| {first} | spans | interval holds the truth | median \\|error\\| of the point figure | "
             "median half-width of the interval | marked below resolution | largest miss |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        miss = f"{r['largest_miss']:.1%}" if r["largest_miss"] else "none"
        lines.append(f"| {r['label']} | {r['spans']} | {r['coverage']:.0%} | {r['median_abs_error']:.1%} | "
                     f"{r['median_half_width']:.0%} | {r['below_resolution']:.0%} | {miss} |")
    return lines


def _burst_rows(results: list[trace_truth.SpanResult]) -> list[dict[str, float]]:
    rows = []
    for name in sorted({r.segment for r in results}):
        group = [r for r in results if r.segment == name]
        rows.append({"label": f"{name} ({_length(statistics.median(r.length_s for r in group))} spans)",
                     "spans": len(group), "coverage": sum(r.covered for r in group) / len(group),
                     "median_abs_error": statistics.median(abs(r.error) for r in group),
                     "median_half_width": statistics.median((r.high_j - r.low_j) / 2 / r.truth_j for r in group),
                     "below_resolution": sum(r.below_resolution for r in group) / len(group),
                     "largest_miss": max(r.miss for r in group)})
    return rows


def render(data: dict) -> str:
    by_length = [dict(row, label=_length(row["length_s"])) for row in data["by_length"]]
    goals_met = all(r["coverage"] >= COVERAGE_GOAL for r in by_length + data["at_bursts"]) and all(
        r["median_abs_error"] <= ERROR_GOAL for r in by_length if r["length_s"] >= ERROR_GOAL_FROM_S)
    doc = trace_truth.__doc__.split("\n\n", 1)[1].strip()
    lines = [
        "# Short windows on the H200's 10 Hz counter",
        "",
        f"energyprune {data['version']}, `python benchmarks/windows_benchmark.py --per-segment "
        f"{data['per_segment']} --seed {data['seed']}` (no GPU: the recorded trace replays on a simulated clock).",
        "",
        f"Goals (issue 15): the reported interval holds the truth for at least {COVERAGE_GOAL:.0%} of spans at every "
        f"length, and the median error of the point figure is within {ERROR_GOAL:.0%} from "
        f"{_length(ERROR_GOAL_FROM_S)} up. **{'Met' if goals_met else 'NOT met'}.**",
        "",
        "## Spans at random places (idle, steady matmuls, power-capped MLP, burst runs)",
        "",
        *_table(by_length, "span"),
        "",
        "## Spans around single bursts (the meter opens in the idle before a burst; the span ends 25 ms after it)",
        "",
        *_table(data["at_bursts"], "burst run"),
        "",
        "*Largest miss*: how far outside its interval the truth of the worst span lay, relative to the truth. The "
        "truth model itself agrees with the counter to 1.3-1.8% over a burst run and 4-6% over a single tick "
        "(below), so misses of that size are within what the truth can tell.",
        "",
        "Reading it: below three counter periods (300 ms) the span says it is below the sensor's resolution and "
        "its interval is wide (up to one counter period of energy at each edge, between 0.9 × idle and the "
        "device's maximum power; without an idle phase the floor is 0 W). The interval still holds the truth; the "
        "point figure alone does not, and should not be used there. A repeated workload is measured to its "
        "precision by `energyprune measure`, which puts many calls in each window.",
        "",
        "## How the truth is derived",
        "",
        doc,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-segment", type=int, default=20, help="random spans per segment and length (20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=HERE / "results" / "nvidia-h200")
    args = parser.parse_args(argv)
    trace, events = TRACES / "h200-workload-trace.csv", TRACES / "h200-workload-events.csv"
    random_spans = trace_truth.run(trace, events, per_segment=args.per_segment, seed=args.seed)
    burst_spans = trace_truth.run_at_bursts(trace, events, every=1)
    data = {"version": __version__, "per_segment": args.per_segment, "seed": args.seed,
            "by_length": trace_truth.summary(random_spans), "at_bursts": _burst_rows(burst_spans)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out_dir / "windows.json", json.dumps(data, indent=1) + "\n")
    write_atomic(args.out_dir / "windows.md", render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
