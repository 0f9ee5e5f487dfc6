"""`energyprune report RESULT.json [--format md|html|csv] [--out FILE] [--force]`: re-render a
saved result. The format comes from --format, else from --out's extension, else Markdown on
standard output. A report file is written atomically and never replaces one without --force."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from energyprune.errors import UsageError

EXTENSIONS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".csv": "csv"}


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report", help="re-render a saved result (JSON) as Markdown, one self-contained HTML file, or CSV",
        description="Render a result JSON written by measure, compare, score, prune or bench. The JSON is the "
                    "source of truth; this only lays it out.")
    parser.add_argument("result", metavar="RESULT.json", help="a result file written with --out FILE.json or --json")
    parser.add_argument("--format", choices=["md", "html", "csv"],
                        help="md, html (with plots; needs the `report` extra) or csv; default: from --out's "
                             "extension, else md")
    parser.add_argument("--out", metavar="FILE", help="write to FILE (.md, .html or .csv) instead of standard output")
    parser.add_argument("--force", action="store_true", help="replace --out FILE if it exists")
    return parser


def output_format(fmt: str | None, out: str | None) -> str:
    """The format asked for, checked against --out's extension so `--out r.html --format md` does
    not write Markdown into a file a browser will open as HTML."""
    by_extension = EXTENSIONS.get(Path(out).suffix.lower()) if out else None
    if fmt is None:
        if out is None:
            return "md"
        if by_extension is None:
            raise UsageError(f"--out {out}: name it .md, .html or .csv, or give --format md|html|csv")
        return by_extension
    if by_extension is not None and by_extension != fmt:
        raise UsageError(f"--out {out} has a .{by_extension} name but --format is {fmt}: make them agree")
    return fmt


def check_out(out: str, force: bool, source: str) -> None:
    """Like `energyprune.report.check_output_path` (which knows .json and .md only)."""
    target = Path(out)
    if not target.parent.exists() and str(target.parent) not in ("", "."):
        raise UsageError(f"--out {out}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise UsageError(f"--out {out} is a folder: give a file name")
    if target.exists() and target.resolve() == Path(source).resolve():
        raise UsageError(f"--out {out} is the result file itself: the JSON is the source of truth, never replaced")
    if target.exists() and not force:
        raise UsageError(f"--out {out} already exists: choose another name or pass --force to replace it")


def run_report(args: argparse.Namespace) -> int:
    from energyprune.report import write_atomic
    from energyprune.reporting import load_result, render

    fmt = output_format(args.format, args.out)
    if args.out:
        check_out(args.out, args.force, args.result)
    result = load_result(args.result)
    text = render(result, fmt, source=str(args.result))
    if args.out:
        write_atomic(args.out, text)
        print(f"energyprune: wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
