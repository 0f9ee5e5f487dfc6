"""`energyprune measure | compare | score | prune | report | bench | backends`: the command-line faces.

User mistakes end as one line on standard error and exit code 2, never a traceback (`-v` shows
the traceback for bug reports). With `--json`, standard output holds the JSON alone.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from energyprune import __version__
from energyprune.errors import EnergyPruneError, UsageError

logger = logging.getLogger("energyprune")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _shape(text: str) -> list[int]:
    try:
        shape = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 3,224,224") from None
    if not shape or any(n < 1 for n in shape):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 3,224,224")
    return shape


def _add_measure_options(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--batch-size", type=_positive_int, default=1, help="samples per inference (default 1)")
    shape = inputs.add_mutually_exclusive_group()
    shape.add_argument("--seq-len", type=_positive_int, help="tokens per sample for language models (default 128)")
    shape.add_argument("--input-shape", type=_shape, help="shape of one sample, without the batch, e.g. 3,224,224")
    inputs.add_argument("--device", help="cpu, cuda or cuda:N (default: where the model is, cpu for the demo)")
    inputs.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the model first")
    inputs.add_argument("--trust-code", action="store_true",
                        help="allow a pruned DIR whose original was built by a module:factory to run that factory "
                             "(a folder never runs code otherwise)")
    meter = parser.add_argument_group("meter")
    meter.add_argument("--backend", default="auto",
                       help="auto (default), nvml, rapl, estimated, replay:PATH, or a comma list (nvml,rapl)")
    meter.add_argument("--duration", type=_positive_float, default=2.0, metavar="S",
                       help="minimum seconds per window (default 2: >= 20 ticks of a 100 ms GPU counter)")
    meter.add_argument("--repeats", type=_positive_int, default=6,
                       help="minimum number of windows (default 6: the fewest for a 95%% interval of the median)")
    meter.add_argument("--precision", type=_non_negative_float, default=0.02,
                       help="add windows until the 95%% half-width is within this fraction (default 0.02; 0: just --repeats)")
    meter.add_argument("--max-duration", type=_positive_float, default=60.0, metavar="S",
                       help="stop adding windows after this many measured seconds (default 60)")
    meter.add_argument("--idle", type=_non_negative_float, default=1.0, metavar="S",
                       help="seconds of idle power measured before the run (default 1)")
    meter.add_argument("--cpu-tdp-w", type=_positive_float, metavar="W",
                       help="the power of the CPUs this process sees, for the estimated backend")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the JSON result alone on standard output")
    out.add_argument("--out", metavar="FILE", help="also write the result to FILE (.json or .md)")
    out.add_argument("--force", action="store_true", help="replace --out FILE if it exists")
    out.add_argument("--no-trace", action="store_true", help="leave the power trace out of the JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energyprune",
        description="Measure the joules a PyTorch model spends per inference, honestly.",
    )
    parser.add_argument("--version", action="version", version=f"energyprune {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    measure = commands.add_parser("measure", help="joules per inference of one model")
    measure.add_argument("model", nargs="?", help="a local Hugging Face folder, module:factory, "
                         "file.py:factory, or nothing for the built-in demo")
    _add_measure_options(measure)
    measure.add_argument("--lockstep", action="store_true",
                         help="under torchrun: every rank calls the model equally often (needed when its forward "
                              "talks to the other ranks, e.g. tensor parallel); no effect in one process")

    compare = commands.add_parser("compare", help="energy ratio of two models, by interleaved windows")
    compare.add_argument("model_a", help="the reference model (A)")
    compare.add_argument("model_b", help="the model compared with it (B)")
    _add_measure_options(compare)

    score = commands.add_parser("score", help="per-unit scores of a pruning criterion, and the entropy profile")
    score.add_argument("model", nargs="?", help="as for measure; nothing for the built-in demo")
    score.add_argument("--criterion", default="entropy-block",
                       help="entropy-block (default), cosine-block, magnitude, random, ...")
    score.add_argument("--unit-kind", choices=["block", "attention", "neuron", "activation"],
                       help="what to score (default: the criterion's own)")
    score.add_argument("--estimator", default="knn", choices=["knn", "bucket", "renyi", "gaussian"],
                       help="entropy estimator for entropy-block and the profile (default knn)")
    score.add_argument("--stage", choices=["increase", "positive", "all"],
                       help="entropy-block's stage rule (default increase: only blocks before the entropy peak)")
    score.add_argument("--calibration", default="auto", choices=["auto", "text", "random"],
                       help="calibration data: real text for a Hugging Face LM with a tokenizer, else random")
    score.add_argument("--calibration-batches", type=_positive_int, default=4)
    score.add_argument("--batch-size", type=_positive_int, default=4)
    score.add_argument("--seq-len", type=_positive_int)
    score.add_argument("--device")
    score.add_argument("--trust-code", action="store_true",
                       help="allow a pruned DIR built by a module:factory to run that factory")
    score.add_argument("--json", action="store_true")

    from energyprune.bench_cli import add_bench_parser
    from energyprune.prune_cli import add_prune_parser
    from energyprune.report_cli import add_report_parser

    add_prune_parser(commands)
    add_bench_parser(commands)

    add_report_parser(commands)

    backends = commands.add_parser("backends", help="every backend, whether it works here, why, and the fix")
    backends.add_argument("--json", action="store_true")
    backends.add_argument("--cpu-tdp-w", type=_positive_float, metavar="W")
    return parser


#: Options whose value may start with a dash ("--target -30%"): argparse would read "-30%" as an
#: option (its negative-number rule knows no "%"), so such a pair is joined into "--target=-30%"
#: before parsing.
_DASH_VALUE_OPTIONS = ("--target",)
_DASH_VALUE = re.compile(r"^-(\d+(\.\d*)?|\.\d+)%?$")


def join_dash_values(argv: Sequence[str]) -> list[str]:
    """`argv` with "--target -30%" written as "--target=-30%" (anything else unchanged)."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        if args[i] in _DASH_VALUE_OPTIONS and i + 1 < len(args) and _DASH_VALUE.match(args[i + 1]):
            out.append(f"{args[i]}={args[i + 1]}")
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_dash_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="energyprune: %(message)s" if args.verbose == 0 else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "backends":
            return _cmd_backends(args)
        if args.command == "measure":
            return _cmd_measure(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "score":
            return _cmd_score(args)
        if args.command == "prune":
            from energyprune.prune_cli import run_prune

            return run_prune(args)
        if args.command == "bench":
            from energyprune.bench_cli import run_bench

            return run_bench(args)
        if args.command == "report":
            from energyprune.report_cli import run_report

            return run_report(args)
    except EnergyPruneError as error:
        if args.verbose:
            logger.exception("details")
        # Under torchrun every rank raises the same error; only rank 0 says it.
        if not (getattr(error, "all_ranks", False) and os.environ.get("RANK", "0") != "0"):
            print(f"energyprune: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("energyprune: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


def _cmd_backends(args: argparse.Namespace) -> int:
    from energyprune.backends import probe_all
    from energyprune.report import to_json

    results = probe_all(cpu_tdp_w=args.cpu_tdp_w)
    if args.json:
        print(to_json({"backends": [
            {"name": name, "ok": a.ok, "reason": a.reason, "fix": a.fix} for name, a in results]}), end="")
        return 0
    for name, availability in results:
        status = "ok" if availability.ok else "unavailable"
        print(f"{name:<10} {status:<12} {availability.reason}")
        if availability.fix and not availability.ok:
            print(f"{'':<23} fix: {availability.fix}")
    print(f"{'replay':<10} {'ok':<12} plays back a recorded CSV trace: --backend replay:PATH")
    return 0


def _meter_config(args: argparse.Namespace):
    from energyprune.meter import MeterConfig

    return MeterConfig(window_s=args.duration, repeats=args.repeats, precision=args.precision,
                       max_duration_s=args.max_duration, idle_s=args.idle, keep_trace=not args.no_trace)


def _prepared(spec: str | None, args: argparse.Namespace):
    from energyprune.models import build_inputs, load_model, prepare

    loaded = load_model(spec, trust_code=args.trust_code)
    model, device = prepare(loaded.module, args.device, args.dtype)
    inputs = build_inputs(loaded, model, args.batch_size, args.seq_len, args.input_shape, device)
    return loaded, model, inputs, device


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    from energyprune.report import to_json, write_atomic
    from energyprune.reporting import render

    if args.out:
        write_atomic(args.out, to_json(result) if args.out.lower().endswith(".json") else render(result, "md"))
    if args.json:
        sys.stdout.write(to_json(result))
    else:
        sys.stdout.write(text)
    if args.out:
        print(f"energyprune: wrote {args.out}", file=sys.stderr)


def _cmd_measure(args: argparse.Namespace) -> int:
    from energyprune.api import measure
    from energyprune.progress import ProgressBar
    from energyprune.distributed import distributed_context
    from energyprune.report import check_output_path, render_text

    info = distributed_context()
    if info is not None and info.world_size > 1:
        return _cmd_measure_distributed(args, info)
    config = _meter_config(args)
    if args.out:
        check_output_path(args.out, args.force)
    loaded, model, inputs, device = _prepared(args.model, args)
    progress = ProgressBar()
    try:
        result = measure(model, inputs, backend=args.backend, batch_size=args.batch_size, config=config,
                         cpu_tdp_w=args.cpu_tdp_w, progress=progress, label=loaded.spec)
    finally:
        progress.close()
    data = result.to_dict()
    data["model"] = loaded.description
    data["device"]["torch_device"] = str(device)
    data["inputs"] = _inputs_text(inputs)
    title = f"energyprune measure: {loaded.description} on {device}, batch {args.batch_size}, inputs {data['inputs']}"
    _emit(args, data, render_text(data, title))
    return 0


def _cmd_measure_distributed(args: argparse.Namespace, info: Any) -> int:
    """Under torchrun: every rank measures its own replica on its own device, on its own batch
    (data parallel); rank 0 gathers, prints and writes. The other ranks print nothing."""
    from energyprune.distributed import local_device, measure_distributed, render_text
    from energyprune.models import build_inputs, load_model, prepare
    from energyprune.progress import ProgressBar
    from energyprune.report import to_json

    # No --device, or plain "cuda", means this rank's own GPU (cuda:LOCAL_RANK), else the CPU.
    device_spec = str(local_device(info)) if args.device in (None, "cuda") else args.device
    loaded = load_model(args.model, trust_code=args.trust_code)
    model, device = prepare(loaded.module, device_spec, args.dtype)
    inputs = build_inputs(loaded, model, args.batch_size, args.seq_len, args.input_shape, device,
                          seed=info.rank)
    progress = ProgressBar() if info.rank == 0 else None
    try:
        result = measure_distributed(model, inputs, out=args.out, force=args.force,
                                     backend=args.backend, batch_size=args.batch_size,
                                     config=_meter_config(args), cpu_tdp_w=args.cpu_tdp_w,
                                     progress=progress, label=loaded.spec, lockstep=args.lockstep)
    finally:
        if progress is not None:
            progress.close()
    if result is None:
        return 0
    data = result.to_dict()
    data["model"] = loaded.description
    sys.stdout.write(to_json(data) if args.json else render_text(data))
    if args.out:
        print(f"energyprune: wrote {args.out}", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from energyprune.api import compare
    from energyprune.progress import ProgressBar
    from energyprune.report import check_output_path, render_comparison_text

    config = _meter_config(args)
    if args.out:
        check_output_path(args.out, args.force)
    loaded_a, model_a, inputs_a, device = _prepared(args.model_a, args)
    loaded_b, model_b, inputs_b, _ = _prepared(args.model_b, args)
    progress = ProgressBar()
    try:
        result = compare(model_a, model_b, inputs_a, inputs_b=inputs_b, backend=args.backend, config=config,
                         cpu_tdp_w=args.cpu_tdp_w, progress=progress, labels=(loaded_a.spec, loaded_b.spec))
    finally:
        progress.close()
    data = result.to_dict()
    data["a"]["model"], data["b"]["model"] = loaded_a.description, loaded_b.description
    _emit(args, data, render_comparison_text(data))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from energyprune.models import load_model, prepare
    from energyprune.report import to_json
    from energyprune.scoring import calibration_for, render_scores, score_model

    loaded = load_model(args.model, trust_code=args.trust_code)
    model, device = prepare(loaded.module, args.device, None)
    calibration, source = calibration_for(loaded, model, args.batch_size, args.seq_len,
                                          args.calibration_batches, args.calibration, device)
    options = {"stage": args.stage} if args.stage else {}
    result = score_model(model, args.criterion, calibration, args.unit_kind, args.estimator, **options)
    result["model"] = loaded.description
    result["calibration"] = source
    if args.json:
        sys.stdout.write(to_json(result))
    else:
        sys.stdout.write(f"{loaded.description}; calibration: {source}\n" + render_scores(result))
    return 0


def _inputs_text(inputs: Any) -> str:
    from energyprune.models import describe_inputs

    return describe_inputs(inputs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
