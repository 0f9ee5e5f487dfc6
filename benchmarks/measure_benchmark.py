"""How trustworthy is the meter on this machine? Writes benchmarks/results/<device>/measure.{json,md}.

For each workload:
- repeatability: the default meter (2 s windows, >= 5 of them, to +-2% or 60 s) — CoV, interval;
- a long reference window (--reference-s) and whether the meter's 95% interval contains it;
- overhead: latency with the meter on vs off (the same loop timed bare), interleaved;
- counter vs integrated instantaneous power over the same windows (NVML only);
- the smallest window whose energy per inference is within 5% of the reference;
- Zeus side by side, where `zeus` is importable (GPU only).

    python benchmarks/measure_benchmark.py --device cuda      # on the GPU machine
    python benchmarks/measure_benchmark.py --device cpu       # here: the estimated backend
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_workloads, device_slug, gpu_workloads, results_dir, save, timed_loop  # noqa: E402

from energyprune import stats  # noqa: E402
from energyprune.measure.api import EnergyMeter  # noqa: E402
from energyprune.backends import select_backends  # noqa: E402
from energyprune.measure.meter import Meter, MeterConfig  # noqa: E402

WINDOW_LADDER_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def per_call_j(span: Any, n: int) -> float:
    return span.total_energy_j / n


def span_of(backends: list, sync: Callable[[], None], workload: Callable[[], Any], n: int) -> Any:
    with EnergyMeter(backends, sync=sync) as meter:
        for _ in range(n):
            workload()
    return meter.result


def reference(backends, sync, workload, latency_s: float, seconds: float) -> dict[str, Any]:
    n = max(1, int(seconds / latency_s))
    span = span_of(backends, sync, workload, n)
    return {"seconds": span.duration_s, "n": n, "per_inference_j": per_call_j(span, n),
            "uncertainty_j": span.to_dict()["uncertainty_j"] / n}


def overhead(meter_windows: list[float], workload, n: int, sync, rounds: int = 5) -> dict[str, Any]:
    """Bare-loop latency (no backend, no sampler) next to the meter's window latencies."""
    bare = [timed_loop(workload, n, sync) for _ in range(rounds)]
    on = statistics.median(meter_windows)
    off = statistics.median(bare)
    return {"latency_on_s": on, "latency_off_s": off, "overhead": on / off - 1.0, "bare_rounds": bare}


def counter_vs_power(backends, sync, workload, latency_s: float, rounds: int = 3) -> dict[str, Any] | None:
    ratios = []
    n = max(1, int(2.0 / latency_s))
    for _ in range(rounds):
        span = span_of(backends, sync, workload, n)
        trace = span.power_trace
        if trace is None:
            return None
        for domain in span.domains:
            if domain.method != "energy-counter" or domain.name not in trace.power_w:
                continue
            t = trace.t_s
            p = trace.power_w[domain.name]
            inside = [(ti, pi) for ti, pi in zip(t, p) if ti <= span.duration_s and not math.isnan(pi)]
            integrated = sum((inside[i][1] + inside[i + 1][1]) / 2 * (inside[i + 1][0] - inside[i][0])
                             for i in range(len(inside) - 1))
            ratios.append(integrated / span.energy_j[domain.name])
    if not ratios:
        return None
    return {"integrated_over_counter": ratios, "median": statistics.median(ratios),
            "max_deviation": max(abs(r - 1) for r in ratios)}


def window_ladder(backends, sync, workload, latency_s: float, ref_j: float, repeats: int = 7) -> list[dict[str, Any]]:
    """Spans of growing length: the point figure's error against the long reference, and how often
    the span's honest bounds (per call) hold the reference."""
    rows = []
    for window_s in WINDOW_LADDER_S:
        n = max(1, round(window_s / latency_s))
        spans = [span_of(backends, sync, workload, n) for _ in range(repeats)]
        values = [per_call_j(span, n) for span in spans]
        bounds = [(span.total_bounds_j[0] / n, span.total_bounds_j[1] / n) for span in spans]
        median = statistics.median(values)
        rows.append({"window_s": window_s, "n": n, "median_j": median, "error": median / ref_j - 1,
                     "worst_error": max(abs(v / ref_j - 1) for v in values),
                     "bounds_hold_reference": sum(low <= ref_j <= high for low, high in bounds) / len(bounds),
                     "median_half_width": statistics.median((high - low) / 2 / ref_j for low, high in bounds),
                     "below_resolution": sum(span.below_resolution for span in spans) / len(spans)})
    return rows


def zeus_side_by_side(device_index: int, workload, n: int, sync, windows: int = 5) -> dict[str, Any] | None:
    try:
        from zeus.monitor import ZeusMonitor
    except ImportError:
        return None
    monitor = ZeusMonitor(gpu_indices=[device_index])
    values = []
    for i in range(windows):
        sync()
        monitor.begin_window(f"w{i}")
        for _ in range(n):
            workload()
        sync()
        result = monitor.end_window(f"w{i}")
        values.append(result.total_energy / n)
    return {"per_inference_j": statistics.median(values), "cov": stats.cov(values), "windows": values}


def run_workload(name: str, workload, description: str, args, device: str) -> dict[str, Any]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    selection = select_backends(args.backend, cuda_devices=devices, cpu_tdp_w=args.cpu_tdp_w)
    backends = list(selection.backends)
    print(f"[{name}] {description} — backends {[b.name for b in backends]}", file=sys.stderr)
    config = MeterConfig(window_s=args.window_s, repeats=5, precision=0.02, max_duration_s=args.max_duration_s)
    with torch.inference_mode():
        m = Meter(backends, config, sync=sync).measure(workload, label=name)
        latency_s = m.latency_s["median"]
        ref = reference(backends, sync, workload, latency_s, args.reference_s)
        low, high = m.ci95_j
        result: dict[str, Any] = {
            "description": description,
            "provenance": m.provenance.value,
            "backends": list(m.backends),
            "notes": list(selection.notes),
            "latency_s": latency_s,
            "per_inference_j": m.per_inference_j,
            "per_inference_dynamic_j": m.per_inference_dynamic_j,
            "ci95_j": [low, high],
            "cov": m.cov,
            "n_windows": len(m.windows),
            "stop_reason": m.stop_reason,
            "warnings": list(m.warnings),
            "window_states": [[s.__dict__ for s in w.states] for w in m.windows],
            "reference": ref,
            "reference_inside_ci95": low <= ref["per_inference_j"] <= high,
            "median_vs_reference": m.per_inference_j / ref["per_inference_j"] - 1,
        }
        result["overhead"] = overhead([w.latency_s for w in m.windows], workload, m.windows[0].n_inferences, sync)
        result["counter_vs_instant_power"] = counter_vs_power(backends, sync, workload, latency_s)
        ladder = window_ladder(backends, sync, workload, latency_s, ref["per_inference_j"])
        result["window_ladder"] = ladder
        good = [row["window_s"] for row in ladder if abs(row["error"]) <= 0.05]
        result["smallest_window_within_5pct_s"] = min(good) if good else None
        if device.startswith("cuda") and not args.no_zeus:
            result["zeus"] = zeus_side_by_side(devices[0], workload, m.windows[0].n_inferences, sync)
    return result


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# Meter benchmark: {data['device']}", "",
             f"Run {data['date']} with `{data['command']}`. Provenance: "
             + ", ".join(sorted({w['provenance'] for w in data['workloads'].values()})) + ".", "",
             "| workload | latency | J/inference (95% interval) | CoV | ref. inside interval | median vs ref. | overhead | counter vs instant power | smallest window within 5% | Zeus |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, w in data["workloads"].items():
        cvp = w["counter_vs_instant_power"]
        zeus = w.get("zeus")
        smallest = w["smallest_window_within_5pct_s"]
        cvp_text = "n/a" if cvp is None else f"{(cvp['median'] - 1) * 100:+.2f}%"
        smallest_text = "none" if smallest is None else f"{smallest * 1e3:g} ms"
        zeus_text = "n/a" if not zeus else f"{zeus['per_inference_j']:.4g} J (CoV {zeus['cov'] * 100:.1f}%)"
        lines.append(
            f"| {name} | {w['latency_s'] * 1e3:.3f} ms | {w['per_inference_j']:.4g} J "
            f"({w['ci95_j'][0]:.4g} .. {w['ci95_j'][1]:.4g}) | {w['cov'] * 100:.2f}% | "
            f"{'yes' if w['reference_inside_ci95'] else 'no'} | {w['median_vs_reference'] * 100:+.2f}% | "
            f"{w['overhead']['overhead'] * 100:+.2f}% | {cvp_text} | {smallest_text} | {zeus_text} |")
    lines += ["", "Window ladder (7 spans per length against the long reference: error of the median point "
              "figure; share of spans whose bounds hold the reference; median half-width of the bounds):", ""]
    for name, w in data["workloads"].items():
        cells = ", ".join(
            f"{r['window_s'] * 1e3:g} ms: {r['error'] * 100:+.1f}%"
            + (f" (bounds hold {r['bounds_hold_reference']:.0%}, ±{r['median_half_width']:.0%}"
               f"{', below resolution' if r['below_resolution'] else ''})" if "bounds_hold_reference" in r else "")
            for r in w["window_ladder"])
        lines.append(f"- {name}: {cells}")
    notes = sorted({n for w in data["workloads"].values() for n in w["notes"] + w["warnings"]})
    if notes:
        lines += ["", "Notes and warnings:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--cpu-tdp-w", type=float)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--max-duration-s", type=float, default=30.0)
    parser.add_argument("--reference-s", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", metavar="WORKLOAD",
                        help="workload names to run (default: all of this device's); results are written after each")
    parser.add_argument("--no-zeus", action="store_true")
    parser.add_argument("--out-dir", type=Path, help="default: benchmarks/results/<device>/")
    args = parser.parse_args()
    workloads = gpu_workloads(args.device) if args.device.startswith("cuda") else cpu_workloads()
    data: dict[str, Any] = {
        "device": device_slug(args.device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "torch": torch.__version__,
        "workloads": {},
    }
    unknown = sorted(set(args.only or ()) - set(workloads))
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; this device has: {', '.join(workloads)}")
    out_dir = args.out_dir or results_dir(args.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (workload, description) in workloads.items():
        if args.only and name not in args.only:
            continue
        data["workloads"][name] = run_workload(name, workload, description, args, args.device)
        # Written as each workload finishes: a call of the GPU machine cut short keeps what was done.
        save(out_dir / "measure", data, markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
