"""`energyprune measure | compare | advise | score | prune | report | bench | backends`: the command line.

Each command is a module of this package with `add_parser(commands)` and `run(args)`; this one
builds the parser from them and turns every `EnergyPruneError` into one line on standard error
and its exit code, never a traceback (`-v` shows the traceback for bug reports). With `--json`,
standard output holds the JSON alone.

Exit codes: 0 done; 2 a usage error or a failure the message explains; 3 `prune` did not reach
its target; 4 `prune` met it by the median only; 5 a finished result could not be written (it
was printed on standard output instead); 130 interrupted; 141 standard output was closed by its
reader (a broken pipe).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from energyprune.version import __version__
from energyprune.cli.options import join_dash_values
from energyprune.errors import EnergyPruneError

logger = logging.getLogger("energyprune")

#: The commands, in the order `--help` lists them: name -> module of this package.
COMMANDS = ("measure", "compare", "advise", "score", "prune", "report", "bench", "backends")
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def _module(name: str):
    return importlib.import_module(f"energyprune.cli.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energyprune",
        description="Measure the joules a PyTorch model spends per inference, honestly, and prune it to a budget.",
    )
    parser.add_argument("--version", action="version", version=f"energyprune {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name in COMMANDS:
        _module(name).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_dash_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="energyprune: %(message)s" if args.verbose == 0 else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(_module(args.command).run(args))
    except EnergyPruneError as error:
        if args.verbose:
            logger.exception("details")
        # Under torchrun every rank raises the same error; only rank 0 says it.
        if not (getattr(error, "all_ranks", False) and os.environ.get("RANK", "0") != "0"):
            print(f"energyprune: error: {error}", file=sys.stderr)
            _keep_partial(args, error)
        return error.exit_code
    except BrokenPipeError:
        # The reader of standard output went away (`| head`): nothing more can be said there.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("energyprune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _keep_partial(args: argparse.Namespace, error: EnergyPruneError) -> None:
    """A measurement stopped by a fault keeps what it measured before: in `--out`'s sibling
    `*.partial.json`, on standard output with `--json`, and as one line of figures here."""
    partial = getattr(error, "partial", None)
    if not partial:
        return
    from energyprune.cli.options import print_out
    from energyprune.files import to_json, write_atomic

    windows = partial.get("windows") or []
    figures = ", ".join(f"{w['per_inference_j']:.4g}" for w in windows[:12]) + (" ..." if len(windows) > 12 else "")
    print(f"energyprune: kept the {len(windows)} window(s) measured before the fault (J/inference: {figures})",
          file=sys.stderr)
    if getattr(args, "json", False):
        print_out(to_json(partial))
    out = getattr(args, "out", None)
    if out and not os.path.isdir(out):
        path = f"{out}.partial.json"
        try:
            write_atomic(path, to_json(partial))
            print(f"energyprune: wrote {path}", file=sys.stderr)
        except OSError as write_error:
            print(f"energyprune: could not write {path}: {write_error.strerror or write_error}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
