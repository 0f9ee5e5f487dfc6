"""What the commands share: option parsers, the model / meter / output option groups, loading the
model a command names, and writing a result so that nothing measured is lost.

Defaults come from `MeterConfig` itself (one place for the meter's defaults), and nothing here
imports torch, so `energyprune --help` stays fast.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from energyprune.errors import EnergyPruneError, UsageError
from energyprune.measure.meter import MeterConfig

DEFAULTS = MeterConfig()


class ResultNotWritten(EnergyPruneError):
    """A finished result could not be written where asked; it was printed on standard output."""

    exit_code = 5


# ---- option values -------------------------------------------------------------------------------
def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def probability(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """A comma-separated list of whole numbers >= 1, such as batch sizes "1,8,32"."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers like 1,8,32") from None
    if not values or any(n < 1 for n in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers of at least 1, like 1,8,32")
    return values


def shape(text: str) -> list[int]:
    try:
        dims = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 3,224,224") from None
    if not dims or any(n < 1 for n in dims):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 3,224,224")
    return dims


# ---- option groups -------------------------------------------------------------------------------
def add_model_options(parser: argparse.ArgumentParser, *, dtype: bool = True) -> None:
    inputs = parser.add_argument_group("model and inputs")
    inputs.add_argument("--batch-size", type=positive_int,
                        help="samples per inference (default 1, or the batch of the inputs a factory returns)")
    dims = inputs.add_mutually_exclusive_group()
    dims.add_argument("--seq-len", type=positive_int, help="tokens per sample for language models (default 128)")
    dims.add_argument("--input-shape", type=shape, help="shape of one sample, without the batch, e.g. 3,224,224")
    inputs.add_argument("--device", help="cpu, cuda or cuda:N (default: where the model is, cpu for the demo)")
    if dtype:
        inputs.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the model first")
    inputs.add_argument("--trust-code", action="store_true",
                        help="allow a pruned DIR whose original was built by a module:factory to run that factory "
                             "(a folder never runs code otherwise)")


def add_meter_options(parser: argparse.ArgumentParser) -> None:
    from energyprune.backends import BACKEND_HELP

    meter = parser.add_argument_group("meter")
    meter.add_argument("--backend", default="auto", help=BACKEND_HELP)
    meter.add_argument("--duration", type=positive_float, default=DEFAULTS.window_s, metavar="S",
                       help=f"minimum seconds per window (default {DEFAULTS.window_s:g}: >= 20 ticks of a 100 ms GPU "
                            "counter)")
    meter.add_argument("--repeats", type=positive_int, default=DEFAULTS.repeats,
                       help=f"minimum number of windows (default {DEFAULTS.repeats}: the fewest for a 95%% interval "
                            "of the median)")
    meter.add_argument("--precision", type=non_negative_float, default=DEFAULTS.precision,
                       help="add windows until the 95%% half-width is within this fraction "
                            f"(default {DEFAULTS.precision:g}; 0: just --repeats)")
    meter.add_argument("--max-duration", type=positive_float, default=DEFAULTS.max_duration_s, metavar="S",
                       help=f"stop adding windows after this many measured seconds (default {DEFAULTS.max_duration_s:g})")
    meter.add_argument("--idle", type=non_negative_float, default=DEFAULTS.idle_s, metavar="S",
                       help=f"seconds of idle power measured before the run (default {DEFAULTS.idle_s:g})")
    meter.add_argument("--cpu-tdp-w", type=positive_float, metavar="W",
                       help="the power of the CPUs this process sees, for the estimated backend")


def add_output_options(parser: argparse.ArgumentParser, *, out_help: str) -> argparse._ArgumentGroup:
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the JSON result alone on standard output")
    out.add_argument("--out", metavar="FILE", help=out_help)
    out.add_argument("--force", action="store_true", help="replace --out if it exists")
    out.add_argument("--no-trace", action="store_true", help="leave the power trace out of the JSON")
    return out


def add_carbon_options(parser: argparse.ArgumentParser) -> None:
    """--country / --region / --carbon-intensity: the grid whose CO2e intensity turns joules into
    kg CO2e (codecarbon's offline data, the `carbon` extra; see energyprune.metrics.carbon)."""
    carbon = parser.add_argument_group("CO2e (the grid's intensity; --country and --region need the carbon extra)")
    carbon.add_argument("--country", metavar="ISO3",
                        help="three-letter ISO 3166-1 code of the grid, e.g. FRA (default: $ENERGYPRUNE_COUNTRY); "
                             "from codecarbon's offline data")
    carbon.add_argument("--region", metavar="NAME",
                        help="a US state, a Canadian or Chinese province, or a Nordic bidding zone (SE3), for a "
                             "regional intensity")
    carbon.add_argument("--carbon-intensity", type=finite_float, metavar="G_PER_KWH",
                        help="the intensity itself, in g CO2e per kWh (a supplier's figure), instead of --country")


def carbon_intensity(args: argparse.Namespace) -> Any:
    """The `CarbonIntensity` the options (or ENERGYPRUNE_COUNTRY) ask for, or None: resolved
    before any measuring, so a wrong code costs nothing."""
    from energyprune.metrics.carbon import resolve_intensity

    return resolve_intensity(getattr(args, "country", None), getattr(args, "region", None),
                             getattr(args, "carbon_intensity", None))


def add_export_options(parser: argparse.ArgumentParser) -> None:
    """--prometheus FILE and --emissions-csv FILE: the result where users keep their numbers."""
    export = parser.add_argument_group("export")
    export.add_argument("--prometheus", metavar="FILE",
                        help="also write the result as a Prometheus text-format file (for node_exporter's textfile "
                             "collector: name it *.prom); an earlier energyprune metrics file is replaced, any other "
                             "file only with --force")
    export.add_argument("--emissions-csv", metavar="FILE",
                        help="also add the result as a row to FILE in the columns of codecarbon's emissions.csv "
                             "(energyprune's own columns after them; a codecarbon file gets its columns only)")


def check_exports(args: argparse.Namespace) -> None:
    """Before any work: the export files can be written (or appended to)."""
    from pathlib import Path

    from energyprune.files import check_output_file, check_writable_folder
    from energyprune.reporting.to_emissions_csv import existing_columns
    from energyprune.reporting.to_prometheus import written_by_us

    out = getattr(args, "out", None)
    paths = [p for p in (out, getattr(args, "prometheus", None), getattr(args, "emissions_csv", None)) if p]
    if len({str(Path(p).resolve()) for p in paths}) != len(paths):
        raise UsageError("--out, --prometheus and --emissions-csv must name three different files")
    if getattr(args, "prometheus", None):
        check_output_file(args.prometheus, force=args.force or written_by_us(args.prometheus), option="--prometheus")
    if getattr(args, "emissions_csv", None):
        existing_columns(args.emissions_csv)
        check_writable_folder(Path(args.emissions_csv).parent, f"--emissions-csv {args.emissions_csv}")


def write_exports(args: argparse.Namespace, data: Mapping[str, Any]) -> None:
    """Write --prometheus and add the --emissions-csv rows, once the result itself is out."""
    from energyprune.files import OutputLock, write_atomic
    from energyprune.reporting.to_emissions_csv import append_rows
    from energyprune.reporting.to_prometheus import render_prometheus

    for option, path in (("--prometheus", getattr(args, "prometheus", None)),
                         ("--emissions-csv", getattr(args, "emissions_csv", None))):
        if not path:
            continue
        try:
            if option == "--prometheus":
                write_atomic(path, render_prometheus(data))
                say(f"wrote {path}")
            else:
                with OutputLock(path, folder=False):  # two runs adding rows at once must not lose one
                    rows = append_rows(path, data)
                say(f"added {rows} row(s) to {path}")
        except OSError as error:
            raise ResultNotWritten(f"{option} {path} could not be written ({error.strerror or error}); the result "
                                   "itself was written as asked") from None


def stamp(data: dict[str, Any]) -> dict[str, Any]:
    """A finished result's run id and end time (UTC, ISO 8601): what codecarbon's emissions.csv
    rows carry, so a row can be told apart and placed in time."""
    import datetime
    import uuid

    data.setdefault("run_id", str(uuid.uuid4()))
    data.setdefault("finished_at", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return data


def meter_config(args: argparse.Namespace) -> MeterConfig:
    return MeterConfig(window_s=args.duration, repeats=args.repeats, precision=args.precision,
                       max_duration_s=args.max_duration, idle_s=args.idle,
                       keep_trace=not getattr(args, "no_trace", False))


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


# ---- the model a command names -------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    loaded: Any  # models.LoadedModel
    model: Any  # torch.nn.Module on its device and dtype
    inputs: Any
    device: Any
    batch_size: int


def prepared(spec: str | None, args: argparse.Namespace, *, seed: int = 0, device: str | None = None,
             run_levers: bool = True) -> Prepared:
    """Load, move and feed the model `spec` names, as the command's options say. The batch is the
    one of the inputs: a factory's own inputs set it, and a --batch-size that disagrees is refused.
    A pruned folder saved with levers runs with them (`run_levers=False`: the plain model)."""
    from energyprune.models import build_inputs, load_model, prepare
    from energyprune.torch_io import batch_size_of

    loaded = load_model(spec, trust_code=args.trust_code)
    model, where = prepare(loaded.module, device or args.device, getattr(args, "dtype", None))
    asked = args.batch_size
    if loaded.factory_inputs is not None:
        inputs = build_inputs(loaded, model, asked or 1, args.seq_len, args.input_shape, where, seed=seed)
        batch = batch_size_of(inputs)
        if asked is not None and asked != batch and args.input_shape is None:
            raise UsageError(f"{loaded.spec} returns inputs with a batch of {batch}; --batch-size {asked} disagrees: "
                             "drop --batch-size (or give --input-shape to build other inputs)")
        if args.input_shape is not None:
            batch = asked or 1
    else:
        batch = asked or 1
        inputs = build_inputs(loaded, model, batch, args.seq_len, args.input_shape, where, seed=seed)
    if run_levers and loaded.levers:
        from energyprune.levers import run_with_levers

        model, notes = run_with_levers(model, loaded.levers, inputs)
        for note in notes:
            say(note)
    return Prepared(loaded, model, inputs, where, batch)


# ---- results -------------------------------------------------------------------------------------
def say(message: str) -> None:
    print(f"energyprune: {message}", file=sys.stderr)


def stdout_usable() -> bool:
    """False where standard output was closed before we started (`energyprune measure >&-`)."""
    stream = sys.stdout
    return stream is not None and not getattr(stream, "closed", False)


def print_out(text: str) -> None:
    """Text for standard output; dropped when it is closed (the caller checked that --out keeps it)."""
    if stdout_usable():
        sys.stdout.write(text)
        sys.stdout.flush()


def emit(args: argparse.Namespace, result: Mapping[str, Any], text: str) -> None:
    """Write `--out FILE` (JSON, or Markdown for .md) and print the text or the JSON. A file that
    cannot be written (disk full, the mount gone read-only during the run) costs nothing measured:
    the JSON is printed instead, and the command ends with `ResultNotWritten` (exit code 5)."""
    from energyprune.files import to_json, write_atomic
    from energyprune.reporting import render

    if args.out:
        try:
            suffix = args.out.lower().rsplit(".", 1)[-1]
            write_atomic(args.out, to_json(result) if suffix == "json" else render(result, "html" if suffix == "html" else "md"))
        except OSError as error:
            print_out(to_json(result))
            raise ResultNotWritten(f"--out {args.out} could not be written ({error.strerror or error}); the result "
                                   "is on standard output above") from None
    print_out(to_json(result) if args.json else text)
    if args.out:
        say(f"wrote {args.out}")


def check_stdout(args: argparse.Namespace) -> None:
    """Before any work: a result must have somewhere to go."""
    if not stdout_usable() and not getattr(args, "out", None):
        raise UsageError("standard output is closed and no --out was given: the result would be lost; "
                         "pass --out FILE")


#: Calibration batches when the criterion asks for no particular number of tokens.
DEFAULT_CALIBRATION_BATCHES = 4
#: At most this many batches are drawn for a criterion's wish (the corpus and the patience end).
MAX_CALIBRATION_BATCHES = 256


def calibration_batches(requested: int | None, model: Any, criterion: str, unit_kind: str | None,
                        criterion_options: Mapping[str, Any], batch_size: int, seq_len: int | None) -> int:
    """`--calibration-batches` as given, else enough batches of batch_size × seq_len tokens for
    what the criterion says it needs (`calibration_tokens(model)`: mipp wants ~4 tokens per unit
    of its widest MLP), never fewer than 4."""
    if requested is not None:
        return requested
    from energyprune.pruning.criteria import get_criterion

    options = dict(criterion_options)
    if unit_kind is not None:
        options["unit_kind"] = unit_kind
    try:
        wanted = getattr(get_criterion(criterion, **options), "calibration_tokens", None)
        tokens = int(wanted(model)) if callable(wanted) else 0
    except (EnergyPruneError, TypeError, ValueError):
        return DEFAULT_CALIBRATION_BATCHES  # the run itself reports what is wrong with the criterion
    per_batch = max(1, batch_size * (seq_len or 128))
    return max(DEFAULT_CALIBRATION_BATCHES, min(MAX_CALIBRATION_BATCHES, math.ceil(tokens / per_batch)))
