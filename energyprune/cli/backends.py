"""`energyprune backends`: every backend of the registry, whether it works here, why, and the fix."""

from __future__ import annotations

import argparse
from typing import Any

from energyprune.cli import options


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser("backends", help="every backend, whether it works here, why, and the fix")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu-tdp-w", type=options.positive_float, metavar="W")
    return parser


def run(args: argparse.Namespace) -> int:
    from energyprune.backends import probe_all, registry
    from energyprune.files import to_json

    options.check_stdout(args)
    results = probe_all(cpu_tdp_w=args.cpu_tdp_w)
    if args.json:
        options.print_out(to_json({"backends": [
            {"name": name, "ok": a.ok, "reason": a.reason, "fix": a.fix} for name, a in results]}))
        return 0
    lines = []
    for name, availability in results:
        status = "ok" if availability.ok else "unavailable"
        lines.append(f"{name:<10} {status:<12} {availability.reason}")
        if availability.fix and not availability.ok:
            lines.append(f"{'':<23} fix: {availability.fix}")
    for row in registry.ROWS:
        if row.argument:
            lines.append(f"{row.name:<10} {'ok':<12} {row.summary}: --backend {row.name}:{row.argument}")
    options.print_out("\n".join(lines) + "\n")
    return 0
