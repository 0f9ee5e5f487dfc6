"""`energyprune advise [MODEL]`: the model as given, then each lever that keeps its outputs
(compile, CUDA graphs, bf16/fp16, attention kernels, CPU threads, batch size), each against it
by interleaved windows and each with its fidelity on the same inputs."""

from __future__ import annotations

import argparse
from typing import Any

from energyprune.cli import options
from energyprune.errors import UsageError

OUT_EXTENSIONS = {".json": "json", ".md": "md", ".markdown": "md", ".html": "html"}


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser("advise", help="where the joules go, and the levers that save them without pruning")
    parser.add_argument("model", nargs="?", help="a local Hugging Face folder, a pruned DIR, module:factory, "
                        "file.py:factory (runs that code), or nothing for the built-in demo")
    options.add_model_options(parser)
    parser.add_argument("--levers", default="auto", metavar="NAMES",
                        help="the levers to try, comma-separated (compile, compile:reduce-overhead, bf16, fp16, "
                             "sdpa:flash, sdpa:math, sdpa:efficient, sdpa:cudnn, hf-attention:sdpa, threads:N, "
                             "batch:N), or auto (default: every one that may apply on this device)")
    parser.add_argument("--fidelity-floor", type=options.probability, default=0.99, metavar="F",
                        help="the fidelity to the original a lever must keep to be worth it (default 0.99)")
    parser.add_argument("--fidelity-batches", type=options.positive_int, default=2, metavar="N",
                        help="batches the fidelity is checked on: real text for a Hugging Face LM with a tokenizer, "
                             "else random inputs (default 2)")
    options.add_meter_options(parser)
    options.add_output_options(parser, out_help="also write the advice to FILE (.json, .md or .html)")
    return parser


def run(args: argparse.Namespace) -> int:
    from energyprune.files import OutputLock, check_output_file
    from energyprune.levers import parse_levers

    names = parse_levers(args.levers)  # a typo is refused before anything is loaded
    config = options.meter_config(args)
    options.check_stdout(args)
    if not args.out:
        return _advise(args, config, names)
    check_output_file(args.out, force=args.force, extensions=OUT_EXTENSIONS)
    with OutputLock(args.out, folder=False):
        return _advise(args, config, names)


def _advise(args: argparse.Namespace, config: Any, names: list[str]) -> int:
    from energyprune.cli.progress import ProgressBar
    from energyprune.levers import candidate_levers, lever_named
    from energyprune.levers.advise import advise
    from energyprune.models import build_inputs
    from energyprune.models.calibration_data import calibration_for
    from energyprune.reporting.advice_doc import render_advice_text

    if names == ["none"]:
        raise UsageError("--levers none leaves nothing to advise on: name levers or use auto")
    p = options.prepared(args.model, args, run_levers=False)  # advice starts from the plain model
    fixed = p.loaded.factory_inputs is not None and args.input_shape is None

    def make_inputs(batch: int) -> Any:
        return build_inputs(p.loaded, p.model, batch, args.seq_len, args.input_shape, p.device)

    levers = (candidate_levers(p.device.type, p.batch_size) if names == ["auto"]
              else [lever_named(n) for n in names])
    batches, source = calibration_for(p.loaded, p.model, p.batch_size, args.seq_len, args.fidelity_batches,
                                      "auto", p.device)

    def on_lever(name: str, status: str, reason: str) -> None:
        if status != "measuring":
            options.say(f"{name}: {reason or status}")

    progress = ProgressBar()
    try:
        advice = advise(p.model, p.inputs, levers=levers, make_inputs=None if fixed else make_inputs,
                        backend=args.backend, config=config, fidelity_floor=args.fidelity_floor,
                        fidelity_batches=batches, label=p.loaded.spec, progress=progress, on_lever=on_lever)
    finally:
        progress.close()
    data = options.stamp(advice.to_dict())
    data["model"] = p.loaded.description
    data["fidelity_data"] = source
    options.emit(args, data, render_advice_text(data))
    return 0
