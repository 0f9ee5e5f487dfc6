"""`energyprune report RESULT.json [--format md|html|csv] [--out FILE] [--force]`: re-render a
saved result. The format comes from --format, else from --out's extension, else Markdown on
standard output. A report file is written atomically and never replaces one without --force."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from energyprune.cli import options
from energyprune.errors import UsageError

EXTENSIONS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".csv": "csv", ".prom": "prometheus"}


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "report", help="re-render a saved result (JSON) as Markdown, one self-contained HTML file, or CSV",
        description="Render a result JSON written by measure, compare, score, prune or bench. The JSON is the "
                    "source of truth; this only lays it out.")
    parser.add_argument("result", metavar="RESULT.json", help="a result file written with --out FILE.json or --json")
    parser.add_argument("--format", choices=["md", "html", "csv", "emissions-csv", "prometheus"],
                        help="md, html (with plots; needs the `report` extra), csv, emissions-csv (codecarbon's "
                             "emissions.csv columns, then ours) or prometheus (text format); default: from --out's "
                             "extension, else md")
    parser.add_argument("--out", metavar="FILE", help="write to FILE (.md, .html or .csv) instead of standard output")
    parser.add_argument("--force", action="store_true", help="replace --out FILE if it exists")
    options.add_carbon_options(parser)
    return parser


def output_format(fmt: str | None, out: str | None) -> str:
    """The format asked for, checked against --out's extension so `--out r.html --format md` does
    not write Markdown into a file a browser will open as HTML."""
    by_extension = EXTENSIONS.get(Path(out).suffix.lower()) if out else None
    if fmt is None:
        if out is None:
            return "md"
        if by_extension is None:
            raise UsageError(f"--out {out}: name it .md, .html or .csv (.prom for Prometheus), or give --format "
                             "md|html|csv|emissions-csv|prometheus")
        return by_extension
    if by_extension == "csv" and fmt == "emissions-csv":
        return fmt
    if by_extension is not None and by_extension != fmt:
        raise UsageError(f"--out {out} has a .{by_extension} name but --format is {fmt}: make them agree")
    return fmt


def run(args: argparse.Namespace) -> int:
    from energyprune.files import OutputLock, check_output_file, write_atomic
    from energyprune.reporting import load_result, render

    fmt = output_format(args.format, args.out)
    options.check_stdout(args)
    intensity = options.carbon_intensity(args) if (args.country or args.region or args.carbon_intensity is not None) \
        else None  # ENERGYPRUNE_COUNTRY alone does not rewrite a saved result's figures
    if args.out:
        check_output_file(args.out, force=args.force, source=args.result)
    result = load_result(args.result)
    if intensity is not None:
        from energyprune.metrics.carbon import add_co2

        result = add_co2(result, intensity)
    text = render(result, fmt, source=str(args.result))
    if not args.out:
        options.print_out(text)
        return 0
    with OutputLock(args.out, folder=False):
        try:
            write_atomic(args.out, text)
        except OSError as error:
            options.print_out(text)
            raise options.ResultNotWritten(f"--out {args.out} could not be written ({error.strerror or error}); the "
                                           "report is on standard output above") from None
    options.say(f"wrote {args.out}")
    return 0
