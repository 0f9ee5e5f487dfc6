"""`energyprune prune MODEL --target T --criterion C --out DIR`: the energy-budgeted loop on the
command line.

Standard error carries the live view (one line per step: units removed, parameters, energy ratio
with its interval, joules per inference, quality); standard output the summary, or the JSON
result alone with `--json`. DIR receives the pruned model (loadable by `load_model(DIR)`),
`result.json` (the source of truth), `record.json`, `report.md`, `report.html` and the checkpoint.

Exit codes: 0 target reached (the whole 95% interval of the final energy ratio is at or below the
goal); 4 UNCONFIRMED: the median ratio meets the target but its interval reaches above it (the
model is saved; `--accept-median` makes this exit 0); 3 target not reached (the best model that
met the quality floor is still saved, and the last line says how close it got and why); 2 a usage
error; 130 interrupted (the checkpoint is saved and the message says how to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

from energyprune.cli import options
from energyprune.errors import UsageError
from energyprune.backends.base import is_estimated

logger = logging.getLogger(__name__)

#: The target was not reached (the model closest to it is still written to DIR).
EXIT_UNREACHED = 3
#: The median met the target, its 95% interval did not (the model is still written to DIR).
EXIT_UNCONFIRMED = 4
EXIT_INTERRUPTED = 130

RESULT_FILE = "result.json"
RECORD_FILE = "record.json"
REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"
#: Files this command writes into DIR; with --force exactly these are replaced.
OWN_FILES = (RESULT_FILE, RECORD_FILE, REPORT_FILE, HTML_REPORT_FILE, "pruned.json", "pruned.safetensors",
             "checkpoint.json", "checkpoint-weights.safetensors",
             "state_dict.pt", "checkpoint-weights.pt")  # the last two: written by versions before 0.2
#: What save_pretrained writes, removed with --force only where an earlier pruned.json says it wrote them.
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


def _criterion_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. estimator=bucket)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word such as bucket
    return key.strip().replace("-", "_"), value


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add `prune` to the `energyprune` sub-commands; returns its parser."""
    from energyprune.pruning.kinds import KIND_NAMES

    parser = commands.add_parser(
        "prune", help="prune a model until it meets an energy target, measuring every step",
        description="Prune a copy of MODEL, step by measured step, until one inference meets --target. "
                    "Exit codes: 0 reached (the 95%% interval at or below the goal), 4 unconfirmed (only the "
                    "median meets it; model saved), 3 not reached (best model still saved), 2 usage error, 130 "
                    "interrupted (resume with --resume).")
    # "--target -30%" works because cli.main joins it into "--target=-30%" before parsing.
    parser.add_argument("model", nargs="?", help="a local Hugging Face folder, a pruned DIR, module:factory, "
                        "file.py:factory (runs that code), or nothing for the built-in demo")
    loop = parser.add_argument_group("pruning")
    loop.add_argument("--target", required=True,
                      help="0.5J or 500mJ (joules per inference), -30%% or 0.7x (of the original), "
                           "latency<=10ms, power<=150W (quote the last two in a shell)")
    loop.add_argument("--criterion", required=True,
                      help="blocks: cosine-block, entropy-block, energy-aware; width (neuron, head, hidden, channel): "
                           "taylor (Taylor-FO by default; --criterion-option estimator=abs), activation, mipp, "
                           "thermodynamic, nepenthe; any kind: magnitude, random")
    loop.add_argument("--unit-kind", "--unit", type=_unit_kinds, metavar="KIND[,KIND...]",
                      help=f"what to remove: {', '.join(KIND_NAMES)}; several (neuron,head) let every step take "
                           "the kind that loses the least fidelity per FLOP saved (default: the criterion's own)")
    loop.add_argument("--criterion-option", type=_criterion_option, action="append", default=[],
                      metavar="KEY=VALUE", help="an option of the criterion, e.g. estimator=bucket (repeatable)")
    loop.add_argument("--quality-floor", type=options.finite_float, metavar="Q",
                      help="never accept a step whose quality (fidelity to the original, 0..1) falls below Q")
    loop.add_argument("--max-steps", type=options.positive_int, default=50, help="at most this many steps (default 50)")
    loop.add_argument("--accept-median", action="store_true",
                      help="count the target as reached when the median ratio meets it even if its 95%% interval "
                           "reaches above (exit 0 instead of 4)")
    loop.add_argument("--calibration", default="auto", choices=["auto", "text", "random"],
                      help="calibration data for the criterion: real text for a Hugging Face LM with a "
                           "tokenizer, else random inputs (default auto)")
    loop.add_argument("--calibration-batches", type=options.positive_int, metavar="N",
                      help="calibration batches (default: 4, or as many as the criterion needs - mipp wants ~4 "
                           "tokens per unit of the widest MLP; 16 with --bridge)")
    loop.add_argument("--recovery-steps", type=int, default=0, metavar="N",
                      help="after each removal, N steps of distillation toward the original on the calibration "
                           "data (default 0: none)")
    loop.add_argument("--bridge", action="store_true",
                      help="when blocks go, fit a least-squares linear map for each removed run on the calibration "
                           "data and fold it into the block before (ReplaceMe): same size and energy, less lost")
    loop.add_argument("--levers", default="none", metavar="NAMES",
                      help="lossless first: try these levers on the original before pruning (auto: every one that "
                           "may apply here; or names such as compile,bf16; see energyprune advise), run the model "
                           "with those worth it, and prune only for the rest (default none)")
    loop.add_argument("--choose-kind-by", choices=("flops", "energy"), default="flops",
                      help="with several unit kinds (--unit-kind neuron,head): pick each step's kind by fidelity lost "
                           "per FLOP saved (flops, default) or per joule saved, measuring every kind's candidate "
                           "(energy: one more comparison per kind and step)")
    loop.add_argument("--lever-floor", type=options.probability, default=0.99, metavar="F",
                      help="the fidelity a lever must keep to be applied (default 0.99)")
    loop.add_argument("--recovery-lr", type=options.positive_float, default=1e-4, metavar="LR",
                      help="learning rate of the recovery steps (default 1e-4)")
    loop.add_argument("--final-recovery-steps", type=int, default=0, metavar="N",
                      help="N more distillation steps on the model the run ends with (default 0); the fidelity "
                           "before and after is reported")
    loop.add_argument("--recovery-lora-rank", type=int, default=0, metavar="R",
                      help="distil rank-R adapters on every linear layer instead of all weights, merged back into "
                           "the weights after each recovery (default 0: all weights)")
    loop.add_argument("--recovery-hidden-weight", type=options.non_negative_float, default=0.0, metavar="W",
                      help="add W x the MSE of the last hidden states to the logit KL (default 0)")
    loop.add_argument("--recovery-temperature", type=options.positive_float, default=1.0, metavar="T",
                      help="distillation temperature (default 1)")
    options.add_model_options(parser)
    options.add_meter_options(parser)
    options.add_carbon_options(parser)
    out = options.add_output_options(
        parser, out_help="write the pruned model, result.json, record.json, report.md and the checkpoint here")
    out.add_argument("--resume", action="store_true", help="continue the interrupted run whose checkpoint is in DIR")
    return parser


#: Calibration batches a bridged run takes unless told: a hidden-size-square map wants thousands of
#: tokens (SmolLM2 at -30%: exp(-KL) 0.18 with 4 batches of 4 x 128 tokens, 0.28 with 16).
BRIDGE_CALIBRATION_BATCHES = 16

#: The options that define a run (besides model, target and criterion): a resume must repeat them,
#: and the resume command printed at an interruption carries them all. (flag, attribute)
RUN_FLAGS = (("--unit-kind", "unit_kind"), ("--quality-floor", "quality_floor"), ("--calibration", "calibration"),
             ("--calibration-batches", "calibration_batches"), ("--recovery-steps", "recovery_steps"),
             ("--recovery-lr", "recovery_lr"), ("--final-recovery-steps", "final_recovery_steps"),
             ("--recovery-lora-rank", "recovery_lora_rank"), ("--recovery-hidden-weight", "recovery_hidden_weight"),
             ("--recovery-temperature", "recovery_temperature"), ("--batch-size", "batch_size"), ("--seq-len", "seq_len"),
             ("--input-shape", "input_shape"), ("--device", "device"), ("--dtype", "dtype"),
             ("--backend", "backend"), ("--duration", "duration"), ("--repeats", "repeats"),
             ("--precision", "precision"), ("--max-duration", "max_duration"), ("--idle", "idle"),
             ("--cpu-tdp-w", "cpu_tdp_w"), ("--levers", "levers"), ("--lever-floor", "lever_floor"),
             ("--choose-kind-by", "choose_kind_by"), ("--bridge", "bridge"))
#: Options that may change on resume: how far to go and how to judge the end.
FREE_FLAGS = (("--max-steps", "max_steps"), ("--accept-median", "accept_median"), ("--trust-code", "trust_code"),
              ("--no-trace", "no_trace"), ("--country", "country"), ("--region", "region"),
              ("--carbon-intensity", "carbon_intensity"))


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    values = {attr: getattr(args, attr, None) for _, attr in RUN_FLAGS}
    if values["input_shape"] is not None:
        values["input_shape"] = list(values["input_shape"])
    values["criterion_options"] = {k: v for k, v in args.criterion_option}
    if values.get("choose_kind_by") == "flops":
        del values["choose_kind_by"]  # the default: checkpoints made before the option existed still resume
    if not values.get("bridge"):
        values.pop("bridge", None)  # the same
    return values


class _LiveView:
    """Step lines as whole lines on standard error; the meter's phases as a redrawn bar."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from energyprune.cli.progress import ProgressBar

        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = ProgressBar(self.stream)

    def __call__(self, phase: str, fraction: float, message: str) -> None:
        if phase in ("step", "original"):
            if phase == "original" and fraction < 1.0:
                return  # "measuring ...": the bar shows that
            self.bar.close()
            self.bar = type(self.bar)(self.stream)
            self.stream.write(f"energyprune: {message}\n")
            self.stream.flush()
            return
        if phase == "final":
            return  # the summary line is printed once, at the end
        if self.tty:  # on a pipe or in a log, one line per step is the whole view
            self.bar(phase, fraction, message)

    def close(self) -> None:
        self.bar.close()


def _remove_earlier(directory: Path) -> None:
    """--force: remove what an earlier run wrote, and nothing else."""
    hf_copy = False
    try:
        hf_copy = bool(json.loads((directory / "pruned.json").read_text(encoding="utf-8")).get("huggingface_copy"))
    except (OSError, ValueError, AttributeError):
        pass
    for name in OWN_FILES + (HF_FILES if hf_copy else ()):
        path = directory / name
        if path.is_file():
            path.unlink()


def _resume_command(args: argparse.Namespace) -> str:
    """The command that continues this run: every option that defines it, then --resume."""
    words = ["energyprune", "prune"] + ([args.model] if args.model else [])
    words += ["--target", args.target, "--criterion", args.criterion]
    for flag, attr in RUN_FLAGS + FREE_FLAGS:
        value = getattr(args, attr, None)
        if value is None or value is False or (flag == "--backend" and value == "auto"):
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, str(value)]
    for key, value in args.criterion_option:
        words += ["--criterion-option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    words += ["--out", str(args.out), "--resume"]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """The `prune` command; returns the exit code."""
    from energyprune.budget import parse_target
    from energyprune.files import OutputLock, check_output_dir

    parse_target(args.target)  # a typo in the target fails before anything else
    for flag, value in (("--recovery-steps", args.recovery_steps), ("--final-recovery-steps", args.final_recovery_steps),
                        ("--recovery-lora-rank", args.recovery_lora_rank)):
        if value < 0:
            raise UsageError(f"{flag} must be 0 or more, got {value}")
    config = options.meter_config(args)
    options.check_stdout(args)
    args.intensity = options.carbon_intensity(args)  # a wrong country code fails now, not after the run
    if args.out is None:
        if args.resume:
            raise UsageError("--resume needs --out DIR: the directory of the run to continue")
        if args.force:
            raise UsageError("--force replaces the results in --out DIR, and no --out was given")
        return _prune(args, config, None, False)
    directory = Path(args.out)
    if args.resume and args.force:
        raise UsageError("--resume continues the run in DIR and --force replaces it: choose one")
    if args.resume and not (directory / "checkpoint.json").is_file():
        raise UsageError(f"--resume: {directory} holds no checkpoint.json, so there is no run to continue")
    replace = check_output_dir(directory, own_files=OWN_FILES, force=args.force, resume=args.resume)
    with OutputLock(directory, folder=True):
        return _prune(args, config, directory, replace)


#: Held-out sequences the default quality is measured on, where the model has a tokenizer.
HELDOUT_SEQUENCES = 4


def _unit_kinds(text: str) -> str:
    """`--unit-kind neuron,head`: known kinds, comma-separated, each once."""
    from energyprune.pruning.kinds import KIND_NAMES

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KIND_NAMES]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"unknown unit kind {', '.join(unknown) or repr(text)}: use one or more of "
                                         f"{', '.join(KIND_NAMES)}, comma-separated")
    return ",".join(dict.fromkeys(kinds))


def _say_cost(model: Any, inputs: Any, target: Any, unit_kind: str | None, criterion: str,
              criterion_options: dict[str, Any]) -> None:
    """Print the cost preview before anything is measured (relative energy targets only: the
    others need the original's measurement first; the loop's result warns about them)."""
    from energyprune.pruning.criteria import get_criterion
    from energyprune.pruning.preview import PREVIEW_KINDS, preview_cost

    if target.kind != "fraction":
        return
    kind = unit_kind
    if kind is None:
        try:
            kind = get_criterion(criterion, **criterion_options).unit_kind
        except Exception:  # check_arguments accepted it; a criterion object we cannot rebuild: no preview
            return
    if kind not in PREVIEW_KINDS:
        return  # several kinds (neuron,head) or one whose FLOPs are not previewed
    try:
        preview = preview_cost(model, inputs, kind, target.value)
    except Exception as error:  # advice only: a model FlopCounterMode cannot follow still prunes
        options.say(f"cost preview: not available ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
        return
    options.say(preview.message())


def _prune(args: argparse.Namespace, config: Any, directory: Path | None, replace: bool) -> int:
    from energyprune.budget import MeterJudge, PruneInterrupted, prune_to_energy
    from energyprune.budget.loop import check_arguments
    from energyprune.models.calibration_data import calibration_for, heldout_text_for

    from energyprune.levers import parse_levers

    parse_levers(args.levers)  # a typo costs nothing
    p = options.prepared(args.model, args, run_levers=False)  # surgery needs the plain model
    loaded, model, inputs, device = p.loaded, p.model, p.inputs, p.device
    target = check_arguments(model, args.target, args.criterion, args.unit_kind, dict(args.criterion_option),
                             backend=args.backend, config=config)[0]
    _say_cost(model, inputs, target, args.unit_kind, args.criterion, dict(args.criterion_option))
    n_batches = options.calibration_batches(args.calibration_batches, model, args.criterion, args.unit_kind,
                                            dict(args.criterion_option), p.batch_size, args.seq_len)
    if args.bridge and args.calibration_batches is None:
        n_batches = max(n_batches, BRIDGE_CALIBRATION_BATCHES)
    calibration, source = calibration_for(loaded, model, p.batch_size, args.seq_len, n_batches,
                                          args.calibration, device)
    heldout = heldout_text_for(loaded, args.seq_len, HELDOUT_SEQUENCES, device) if args.calibration != "random" else None
    fidelity_batches, quality_on = (heldout if heldout is not None else
                                    (None, "the measurement inputs (no tokenizer and text for held-out data)"))
    if replace:  # only now that everything is validated: a typo must not cost the earlier results
        assert directory is not None
        _remove_earlier(directory)
    recovery = final_recovery = None
    if args.recovery_steps or args.final_recovery_steps:
        from energyprune.budget.recovery import Distillation

        # The teacher is the loaded model itself: the loop prunes copies, so it stays the original.
        settings = dict(teacher=model, batches=list(calibration), lr=args.recovery_lr,
                        temperature=args.recovery_temperature, hidden_weight=args.recovery_hidden_weight,
                        lora_rank=args.recovery_lora_rank)
        if args.recovery_steps:
            recovery = Distillation(steps=args.recovery_steps, **settings)
        if args.final_recovery_steps:
            final_recovery = Distillation(steps=args.final_recovery_steps, **settings)
    live = _LiveView()
    judge = MeterJudge(args.backend, config, cpu_tdp_w=args.cpu_tdp_w, progress=live)
    live.stream.write(f"energyprune: pruning {loaded.description} on {device} to {target.text} with "
                      f"{args.criterion}; calibration: {source}; quality measured on {quality_on}\n")
    try:
        result = prune_to_energy(
            model, target, args.criterion, inputs=inputs, calibration=calibration, unit_kind=args.unit_kind,
            quality_floor=args.quality_floor, recovery=recovery, judge=judge, checkpoint_dir=directory,
            resume=args.resume, max_steps=args.max_steps, progress=live, accept_median=args.accept_median,
            run_options=_run_options(args), levers=args.levers, lever_floor=args.lever_floor,
            final_recovery=final_recovery, fidelity_batches=fidelity_batches, kind_choice=args.choose_kind_by,
            bridge=args.bridge, **dict(args.criterion_option))
    except PruneInterrupted as interrupt:
        live.close()
        partial = interrupt.result
        if partial is not None and directory is not None:
            partial = dataclasses.replace(partial, model_name=loaded.description)
            _write_results(directory, partial, args)
            options.say(f"interrupted after step {len(partial.steps)}; the trajectory is in {directory}. "
                        f"Resume with:\n  {_resume_command(args)}")
        elif partial is not None:
            options.say(f"interrupted after step {len(partial.steps)}; nothing saved (no --out DIR)")
        else:
            options.say("interrupted before the original was measured; nothing to resume")
        return EXIT_INTERRUPTED
    finally:
        live.close()
    result = dataclasses.replace(result, model_name=loaded.description)
    data = result.to_dict()
    data["device"] = str(device)
    data["calibration"] = source
    data["quality_measured_on"] = quality_on
    from energyprune.metrics.carbon import add_co2

    data = add_co2(data, getattr(args, "intensity", None))
    if directory is not None:
        from energyprune.models.pruned import save_pruned

        assert result.model is not None
        try:
            save_pruned(directory, result.model, result.record, loaded, levers=result.applied_levers)
            _write_results(directory, result, args, data)
        except OSError as error:
            from energyprune.cli.options import ResultNotWritten
            from energyprune.files import to_json

            options.print_out(to_json(data))
            raise ResultNotWritten(f"--out {directory} could not be written ({error.strerror or error}); the result "
                                   "is on standard output above (the pruned weights were not saved)") from None
    if args.json:
        from energyprune.files import to_json

        options.print_out(to_json(data))
    else:
        options.print_out(render_text(data))
    if directory is not None:
        options.say(f"wrote {directory} (pruned model, {RESULT_FILE}, {RECORD_FILE}, {REPORT_FILE}, {HTML_REPORT_FILE}); "
                    f"load it with energyprune.models.load_model({str(directory)!r})")
    options.say(result.message)
    if result.reached:
        return 0
    return EXIT_UNCONFIRMED if result.outcome == "median-only" else EXIT_UNREACHED


def _write_results(directory: Path, result: Any, args: argparse.Namespace, data: dict[str, Any] | None = None) -> None:
    from energyprune.files import to_json, write_atomic

    directory.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else result.to_dict()
    if args.no_trace:
        measurement = data.get("original", {}).get("measurement")
        if isinstance(measurement, dict):
            measurement["power_trace"] = None
    write_atomic(directory / RECORD_FILE, to_json(result.record.to_dict()))
    from energyprune.errors import EnergyPruneError
    from energyprune.reporting import render

    # The same renderers as `energyprune report result.json`; the HTML draws its plots when
    # matplotlib is installed and says how to get them where it is not. A report that cannot be
    # drawn must not cost the run: result.json below is the source of truth either way.
    for name, fmt in ((REPORT_FILE, "md"), (HTML_REPORT_FILE, "html")):
        try:
            write_atomic(directory / name, render(data, fmt))
        except EnergyPruneError as error:
            print(f"energyprune: warning: {name} not written ({error}); "
                  f"`energyprune report {directory / RESULT_FILE}` renders it later", file=sys.stderr)
    write_atomic(directory / RESULT_FILE, to_json(data))  # last: its presence means the others are there


# ---- renderings of the result dict (the JSON is the source of truth) ----------------------------
def _ratio(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _interval(pair: Any) -> str:
    return "n/a" if not pair or None in pair else f"{pair[0]:.4f} .. {pair[1]:.4f}"


def _steps_rows(data: dict[str, Any]) -> list[list[str]]:
    from energyprune.units import format_energy

    est = " ESTIMATED" if is_estimated(data.get("provenance")) else ""
    recovered = any(s.get("fidelity_before_recovery") is not None for s in data["steps"])
    rows = [["step", "removed", "params", "energy ratio", "95% interval", "J/inference", "quality"]
            + (["fidelity before -> after recovery"] if recovered else []) + ["accepted"]]
    for s in data["steps"]:
        rows.append([str(s["index"]), str(len(s["removed"])), str(s["n_params"]), _ratio(s["energy_ratio"]),
                     _interval(s["energy_ratio_ci95"]),
                     format_energy(s["per_inference_j"]) + (est if s["per_inference_j"] is not None else ""),
                     "n/a" if s["quality"] is None else f"{s['quality']:.4g}"]
                    + ([f"{_ratio(s.get('fidelity_before_recovery'))} -> {_ratio(s.get('fidelity'))}"] if recovered else [])
                    + ["yes" if s["accepted"] else "no"])
    return rows


def render_text(data: dict[str, Any]) -> str:
    from energyprune.units import format_energy

    estimated = is_estimated(data["provenance"])
    tag = " (ESTIMATED: from a power model, not a hardware counter)" if estimated else ""
    o, f = data["original"], data["final"]
    lines = [f"energyprune prune: {data['model']}, criterion {data['criterion']} on {data['unit_kind']} units, "
             f"target {data['target']['text']}",
             f"  original  {format_energy(o['per_inference_j'])} per inference{tag}, {o['n_params']} params",
             f"  final     energy ratio {_ratio(f['energy_ratio'])} [95% {_interval(f['energy_ratio_ci95'])}], "
             f"{format_energy(f['per_inference_j'])} per inference{' ESTIMATED' if estimated else ''}, "
             f"{f['n_params']} params"
             + ("" if f.get("comparison") else " (no direct comparison with the original)")]
    levers = data.get("levers") or {}
    if levers.get("applied"):
        lines.append(f"  levers    {', '.join(levers['applied'])}: energy ratio {_ratio(levers['ratio'])} "
                     f"[95% {_interval(levers['ratio_ci95'])}] before pruning{' ESTIMATED' if estimated else ''}; "
                     f"pruning {_ratio(data.get('energy_ratio_from_pruning'))} (product of its steps); re-applied at load")
    elif levers:
        lines.append("  levers    none applied: " + "; ".join(f"{t['name']}: {t.get('reason') or t.get('verdict')}"
                                                              for t in levers.get("tried") or []))
    lines.append("")
    rows = _steps_rows(data)
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows] + [""]
    outcome = data.get("outcome") or ("reached" if data["reached"] else "not-reached")
    word = {"reached": "REACHED", "median-only": "UNCONFIRMED (met by the median only)",
            "not-reached": "NOT REACHED"}[outcome]
    if outcome == "median-only" and data["reached"]:
        word += ", accepted with --accept-median"
    final_recovery = data.get("final_recovery")
    if final_recovery:
        lines.append(f"  final recovery: fidelity {_ratio(final_recovery.get('fidelity_before'))} -> "
                     f"{_ratio(final_recovery.get('fidelity_after'))} (weights only: the energy figures stand)")
    lines.append(f"  {word} ({data['stop_reason']}): {data['message']}")
    if data.get("quality_measured_on"):
        lines.append(f"  quality (fidelity to the original) measured on {data['quality_measured_on']}")
    from energyprune.reporting.carbon_text import lines as co2_lines, saving_rows

    lines += co2_lines(saving_rows(data, "original", "pruned"))
    if data["warnings"]:
        lines += ["", "  warnings:"] + [f"    ! {w}" for w in data["warnings"]]
    return "\n".join(lines) + "\n"
