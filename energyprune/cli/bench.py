"""The `energyprune bench` sub-command: its options and its entry point (wired into cli.py).

    energyprune bench --quick                      # demo model, short windows (~1 min on 2 vCPUs)
    energyprune bench                              # floor, demo + SmolLM2 + MiniLM, 4 criteria, -30%
    energyprune bench --models smollm2 --criteria cosine-block,magnitude --target -20%
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from energyprune.cli import options
from energyprune.errors import UsageError

from energyprune.bench.options import DEFAULT_CRITERIA, DEFAULT_TARGET, REFERENCE_MODELS
from energyprune.backends.base import is_estimated


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `bench` to the CLI's sub-parsers (the object `add_subparsers()` returned). Imports no
    torch: the bench itself is imported by `run` only."""
    from energyprune.backends import BACKEND_HELP

    bench = commands.add_parser(
        "bench", help="this device's J/FLOP floor, the reference models against physics, and budgeted pruning",
        description="Measure this device's J/FLOP floor (cached), the reference models (J/inference, latency, "
                    "FLOPs, Landauer and floor ratios) and budgeted pruning with several criteria; write "
                    "bench.json, bench.md (and bench.html when the report renderer is installed).")
    bench.add_argument("--quick", action="store_true",
                       help="demo model only (unless --models), short windows, small floor matmuls: a smoke run")
    bench.add_argument("--models", help=f"comma list of {', '.join(REFERENCE_MODELS)} (default: all installed; "
                                        "--quick: demo)")
    bench.add_argument("--criteria", default=",".join(DEFAULT_CRITERIA),
                       help=f"comma list of criteria, each optionally name:key=value:... (default "
                            f"{','.join(DEFAULT_CRITERIA)})")
    bench.add_argument("--target", default=DEFAULT_TARGET,
                       help=f"energy target of the budgeted pruning (default {DEFAULT_TARGET.replace('%', '%%')}: "
                            "30%% less energy per inference; also 0.7x, 0.5J, latency<=10ms, power<=150W)")
    bench.add_argument("--max-steps", type=options.positive_int, default=50, help="pruning steps at most per run (default 50)")
    bench.add_argument("--out-dir", type=Path, help="where to write (default benchmarks/results/<device-slug>/)")
    bench.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out-dir")
    bench.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the models first")
    bench.add_argument("--backend", default="auto", help=BACKEND_HELP)
    bench.add_argument("--cpu-tdp-w", type=options.positive_float, metavar="W",
                       help="the power of the CPUs this process sees, for the estimated backend")
    bench.add_argument("--json", action="store_true", help="print bench.json on standard output too")
    options.add_carbon_options(bench)
    # `--target -30%` works because cli.main joins it into `--target=-30%` before parsing.
    return bench


def run(args: argparse.Namespace) -> int:
    """Run `energyprune bench` from parsed arguments; EnergyPruneErrors propagate to the CLI's handler."""
    from energyprune.bench.options import BenchOptions, parse_criteria
    from energyprune.bench.run import command_line, run_benchmark
    from energyprune.files import to_json

    models = None
    if args.models is not None:
        models = tuple(m.strip().lower() for m in args.models.split(",") if m.strip())
        if not models:
            raise UsageError("--models is empty: name at least one of demo, smollm2, minilm")
    bench_options = BenchOptions(
        out_dir=args.out_dir, device=args.device, models=models, criteria=parse_criteria(args.criteria),
        target=args.target, quick=args.quick, force=args.force, backend=args.backend,
        cpu_tdp_w=args.cpu_tdp_w, max_steps=args.max_steps, dtype=args.dtype, command=command_line(),
        carbon=options.carbon_intensity(args))

    def say(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    bench = run_benchmark(bench_options, log=say)
    if args.json:
        options.print_out(to_json(bench))
    else:
        options.print_out(summary_text(bench))
    return 0


def summary_text(bench: dict[str, Any]) -> str:
    """A few lines for the terminal; the files hold everything."""
    from energyprune.units import format_energy

    tag = " (ESTIMATED)" if is_estimated(bench["provenance"]["energy"]) else ""
    lines = []
    floor = bench.get("floor")
    if floor:
        lines.append(f"floor: {floor['pj_per_flop']:.4g} pJ/FLOP{tag if is_estimated(floor['provenance']) else ''} "
                     f"({floor['best']['dtype']} {floor['best']['size']}^3, {floor['source']})")
    for m in bench["models"]:
        op = m["physics"]["landauer"]["operational"]
        hw = m["physics"].get("hardware_floor") or {}
        ratio = hw.get("ratio")
        lines.append(f"{m['name']}: {format_energy(m['measurement']['per_inference_j'])} per inference{tag}, "
                     f"{m['flops']:.3g} FLOPs, 10^{op.get('log10_times_above') or float('nan'):.1f} x Landauer, "
                     f"{'n/a' if ratio is None else f'{ratio:.3g}'} x floor")
    for r in bench["criteria_runs"]:
        f = r["final"]
        held_out = f.get("quality") if f.get("quality") is not None else f.get("fidelity")
        ratio = f.get("energy_ratio")
        lines.append(f"{r['model']} / {r['criterion_label']}: reached={r['reached']}, energy ratio{tag} "
                     f"{'n/a' if ratio is None else f'{ratio:.3f}'}, held-out fidelity "
                     f"{'n/a' if held_out is None else f'{held_out:.3f}'}")
    from energyprune.reporting import carbon_text

    co2_rows, co2_table = carbon_text.bench_rows(bench)
    lines += [f"{name}: {value}" for name, value in co2_rows]
    lines += [f"{row[0]} / {row[1]}: CO2e per million inferences {row[2]} (95% {row[3]})" for row in co2_table]
    for s in bench["skipped"]:
        lines.append(f"skipped {s['what']}: {s['reason']}")
    return "\n".join(lines) + "\n"
