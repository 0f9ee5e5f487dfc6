"""`energyprune measure [MODEL]`: joules per inference of one model (under torchrun: of every rank)."""

from __future__ import annotations

import argparse
from typing import Any

from energyprune.cli import options
from energyprune.errors import UsageError


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser("measure", help="joules per inference of one model")
    parser.add_argument("model", nargs="?", help="a local Hugging Face folder, a pruned DIR, module:factory, "
                        "file.py:factory (runs that code), or nothing for the built-in demo")
    options.add_model_options(parser)
    parser.add_argument("--batch-sizes", type=options.int_list, metavar="N,N,...",
                        help="also measure at each of these batch sizes (e.g. 1,8,32) and show J per sample at each; "
                             "the result's main figures are those of the first")
    options.add_meter_options(parser)
    options.add_output_options(parser, out_help="also write the result to FILE (.json or .md)")
    options.add_export_options(parser)
    options.add_carbon_options(parser)
    parser.add_argument("--lockstep", action="store_true",
                        help="under torchrun: every rank calls the model equally often (needed when its forward "
                             "talks to the other ranks, e.g. tensor parallel); no effect in one process")
    return parser


def run(args: argparse.Namespace) -> int:
    from energyprune.files import OutputLock, check_output_file
    from energyprune.measure.distributed import distributed_context

    info = distributed_context()
    if info is not None and info.world_size > 1:
        given = [flag for flag, attr in (("--country", "country"), ("--region", "region"),
                                         ("--carbon-intensity", "carbon_intensity"), ("--prometheus", "prometheus"),
                                         ("--emissions-csv", "emissions_csv")) if getattr(args, attr, None) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: not available under torchrun yet; measure one process, or compute "
                             "the CO2e from the JSON's per_inference_j with energyprune.metrics.carbon")
        return _run_distributed(args, info)
    config = options.meter_config(args)
    options.check_stdout(args)
    intensity = options.carbon_intensity(args)
    options.check_exports(args)
    if not args.out:
        return _measure(args, config, intensity)
    check_output_file(args.out, force=args.force, extensions=OUT_EXTENSIONS)
    with OutputLock(args.out, folder=False):
        return _measure(args, config, intensity)


OUT_EXTENSIONS = {".json": "json", ".md": "md", ".markdown": "md"}


def _measure(args: argparse.Namespace, config: Any, intensity: Any = None) -> int:
    from energyprune.cli.progress import ProgressBar
    from energyprune.measure.api import measure
    from energyprune.measure.results import batch_row
    from energyprune.metrics.carbon import add_co2
    from energyprune.reporting.text import render_text
    from energyprune.torch_io import describe_inputs

    p = options.prepared(args.model, args)
    sweep = _batch_inputs(p, args) if args.batch_sizes else [(p.batch_size, p.inputs)]
    results = []
    for batch, inputs in sweep:
        progress = ProgressBar()
        try:
            results.append(measure(p.model, inputs, backend=args.backend, batch_size=batch, config=config,
                                   cpu_tdp_w=args.cpu_tdp_w, progress=progress, label=p.loaded.spec))
        finally:
            progress.close()
    result = results[0]
    data = result.to_dict()
    if args.batch_sizes:
        data["batch_sweep"] = [batch_row(m) for m in results]
    data["model"] = p.loaded.description
    data["device"]["torch_device"] = str(p.device)
    data["inputs"] = describe_inputs(p.inputs)
    data = options.stamp(add_co2(data, intensity))
    title = (f"energyprune measure: {p.loaded.description} on {p.device}, batch {result.batch_size}, "
             f"inputs {data['inputs']}")
    options.emit(args, data, render_text(data, title))
    options.write_exports(args, data)
    return 0


def _batch_inputs(p: Any, args: argparse.Namespace) -> list[tuple[int, Any]]:
    """Inputs of each --batch-sizes batch, built before any measuring (so a batch that cannot be
    allocated costs nothing)."""
    from energyprune.models import build_inputs

    if p.loaded.factory_inputs is not None and args.input_shape is None:
        raise UsageError(f"{p.loaded.spec} returns its own inputs: --batch-sizes needs --input-shape to build inputs "
                         "of other batch sizes")
    return [(batch, build_inputs(p.loaded, p.model, batch, args.seq_len, args.input_shape, p.device))
            for batch in dict.fromkeys(args.batch_sizes)]


def _run_distributed(args: argparse.Namespace, info: Any) -> int:
    """Under torchrun: every rank measures its own replica on its own device, on its own batch
    (data parallel); rank 0 gathers, prints and writes. The other ranks print nothing."""
    from energyprune.cli.progress import ProgressBar
    from energyprune.files import to_json
    from energyprune.measure.distributed import local_device, measure_distributed, render_text

    # No --device, or plain "cuda", means this rank's own GPU (cuda:LOCAL_RANK), else the CPU.
    device_spec = str(local_device(info)) if args.device in (None, "cuda") else args.device
    p = options.prepared(args.model, args, seed=info.rank, device=device_spec)
    progress = ProgressBar() if info.rank == 0 else None
    try:
        result = measure_distributed(p.model, p.inputs, out=args.out, force=args.force,
                                     backend=args.backend, batch_size=p.batch_size,
                                     config=options.meter_config(args), cpu_tdp_w=args.cpu_tdp_w,
                                     progress=progress, label=p.loaded.spec, lockstep=args.lockstep)
    finally:
        if progress is not None:
            progress.close()
    if result is None:
        return 0
    data = result.to_dict()
    data["model"] = p.loaded.description
    options.print_out(to_json(data) if args.json else render_text(data))
    if args.out:
        options.say(f"wrote {args.out}")
    return 0
