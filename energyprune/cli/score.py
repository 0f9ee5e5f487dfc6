"""`energyprune score [MODEL]`: per-unit scores of a pruning criterion, and the entropy profile."""

from __future__ import annotations

import argparse
from typing import Any

from energyprune.cli import options


def add_parser(commands: Any) -> argparse.ArgumentParser:
    from energyprune.pruning.kinds import KIND_NAMES

    parser = commands.add_parser("score", help="per-unit scores of a pruning criterion, and the entropy profile")
    parser.add_argument("model", nargs="?", help="as for measure; nothing for the built-in demo")
    parser.add_argument("--criterion", default="entropy-block",
                        help="entropy-block (default), cosine-block, magnitude, random, ...")
    parser.add_argument("--unit-kind", choices=KIND_NAMES, help="what to score (default: the criterion's own)")
    parser.add_argument("--estimator", default="knn", choices=["knn", "bucket", "renyi", "gaussian"],
                        help="entropy estimator for entropy-block and the profile (default knn)")
    parser.add_argument("--stage", choices=["increase", "positive", "all"],
                        help="entropy-block's stage rule (default increase: only blocks before the entropy peak)")
    parser.add_argument("--calibration", default="auto", choices=["auto", "text", "random"],
                        help="calibration data: real text for a Hugging Face LM with a tokenizer, else random")
    parser.add_argument("--calibration-batches", type=options.positive_int,
                        help="default: 4, or as many as the criterion needs (mipp: ~4 tokens per unit)")
    parser.add_argument("--batch-size", type=options.positive_int, default=4)
    parser.add_argument("--seq-len", type=options.positive_int)
    parser.add_argument("--device")
    parser.add_argument("--trust-code", action="store_true",
                        help="allow a pruned DIR built by a module:factory to run that factory")
    parser.add_argument("--json", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    from energyprune.files import to_json
    from energyprune.models import load_model, prepare
    from energyprune.models.calibration_data import calibration_for
    from energyprune.pruning.scores import score_model

    options.check_stdout(args)
    loaded = load_model(args.model, trust_code=args.trust_code)
    model, device = prepare(loaded.module, args.device, None)
    n_batches = options.calibration_batches(args.calibration_batches, model, args.criterion, args.unit_kind, {},
                                            args.batch_size, args.seq_len)
    calibration, source = calibration_for(loaded, model, args.batch_size, args.seq_len, n_batches,
                                          args.calibration, device)
    extra = {"stage": args.stage} if args.stage else {}
    result = score_model(model, args.criterion, calibration, args.unit_kind, args.estimator, **extra)
    result["model"] = loaded.description
    result["calibration"] = source
    if args.json:
        options.print_out(to_json(result))
    else:
        options.print_out(f"{loaded.description}; calibration: {source}\n" + render_scores(result))
    return 0


def render_scores(result: dict[str, Any], limit: int = 40) -> str:
    lines = [f"criterion {result['criterion_repr']}: {result['convention']}", ""]
    rows = result["scores"]
    shown = rows if len(rows) <= limit else sorted(rows, key=lambda r: (r["removal_rank"] is None, r["removal_rank"] or 0))[:limit]
    lines.append(f"  {'unit':<34} {'score':>14} {'removed':>8}")
    for r in shown:
        score = "inf" if r["score"] is None else f"{r['score']:.6g}"
        order = "-" if r["removal_rank"] is None else f"#{r['removal_rank']}"
        name = f"{r['kind']} {r['path']}" + (f"[{r['index']}]" if r["kind"] in ("neuron", "channel") else "")
        lines.append(f"  {name:<34} {score:>14} {order:>8}")
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more (all of them with --json)")
    profile = result.get("entropy_profile")
    if profile:
        lines += ["", f"entropy across depth ({profile['estimator']}, nats; boundary 0 enters block 0):"]
        values = profile["entropies"]
        low, high = min(values), max(values)
        for i, h in enumerate(values):
            bar = "#" * (1 + int(30 * (h - low) / (high - low))) if high > low else "#"
            delta = "" if i == 0 else f"  dH {profile['delta'][i - 1]:+.4g}"
            peak = "  <- peak (end of the increase stage)" if i == profile["peak_boundary"] else ""
            lines.append(f"  {i:>3} {h:>12.5g} {bar:<31}{delta}{peak}")
    return "\n".join(lines) + "\n"
