"""`energyprune compare A B`: B's energy per inference over A's, from interleaved windows."""

from __future__ import annotations

import argparse
from typing import Any

from energyprune.cli import options
from energyprune.cli.measure import OUT_EXTENSIONS


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser("compare", help="energy ratio of two models, by interleaved windows")
    parser.add_argument("model_a", help="the reference model (A)")
    parser.add_argument("model_b", help="the model compared with it (B)")
    options.add_model_options(parser)
    options.add_meter_options(parser)
    options.add_output_options(parser, out_help="also write the result to FILE (.json or .md)")
    options.add_export_options(parser)
    options.add_carbon_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from energyprune.files import OutputLock, check_output_file

    config = options.meter_config(args)
    options.check_stdout(args)
    intensity = options.carbon_intensity(args)
    options.check_exports(args)
    if not args.out:
        return _compare(args, config, intensity)
    check_output_file(args.out, force=args.force, extensions=OUT_EXTENSIONS)
    with OutputLock(args.out, folder=False):
        return _compare(args, config, intensity)


def _compare(args: argparse.Namespace, config: Any, intensity: Any = None) -> int:
    from energyprune.cli.progress import ProgressBar
    from energyprune.measure.api import compare
    from energyprune.metrics.carbon import add_co2
    from energyprune.reporting.text import render_comparison_text

    a = options.prepared(args.model_a, args)
    b = options.prepared(args.model_b, args)
    progress = ProgressBar()
    try:
        result = compare(a.model, b.model, a.inputs, inputs_b=b.inputs, backend=args.backend, config=config,
                         cpu_tdp_w=args.cpu_tdp_w, progress=progress, labels=(a.loaded.spec, b.loaded.spec),
                         batch_sizes=(a.batch_size, b.batch_size))
    finally:
        progress.close()
    data = result.to_dict()
    data["a"]["model"], data["b"]["model"] = a.loaded.description, b.loaded.description
    data = options.stamp(add_co2(data, intensity))
    options.emit(args, data, render_comparison_text(data))
    options.write_exports(args, data)
    return 0
