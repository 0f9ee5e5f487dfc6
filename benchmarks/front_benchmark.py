"""The fidelity-energy front of SmolLM2-135M: depth, width and both, at several cuts, with and
without distillation (issue 12's deciding benchmark, the parts a 2-core CPU can run).

    python benchmarks/front_benchmark.py                                  # -10/-20/-30/-40%, distil at -30%
    python benchmarks/front_benchmark.py --cuts 30 --recover-steps 0,100,400 --families width
    python benchmarks/front_benchmark.py --only depth:30                  # rerun one row, keep the others

Families (the cost proxy is the FLOPs ratio at 1 x 128 tokens; every family prunes to the smallest
amount whose FLOPs ratio is at or below 1 - cut):
* depth: whole decoder blocks by cosine-block (ShortGPT), as many as needed;
* width: attention KV groups, MLP neurons and hidden channels, the same fraction of each kind, ranked
  across layers by first-order Taylor importance scored once on the original (Minitron scores once
  too), the fraction found by bisection;
* mixed: blocks by cosine-block until half the cut is reached, then width (rescored on that model)
  for the rest.

Text: gensim's Lee corpus split by document: calibration and distillation from the first half,
every figure from the second (8 x 256 tokens): held-out exp(-KL) and top-1 agreement against the
original, perplexity ratio, and greedy answers to ten fixed questions. Distillation (KL on logits,
AdamW, 4 x 128 tokens a step) runs at `--recover-at` cuts only: each step count is cumulative.
`--energy` adds an interleaved comparison with the original per row (ESTIMATED on a machine without
counters, and labelled so; the FLOPs ratio stands beside it). The JSON and Markdown are rewritten
after every row, so an interrupted run keeps what it measured.
Results: benchmarks/results/<device>/front-smollm2.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recovery_benchmark import QUESTIONS, answers  # noqa: E402

from energyprune.bench.session import device_record, load_json, results_dir, save  # noqa: E402
from energyprune.budget.recovery import Distillation  # noqa: E402
from energyprune.metrics.fidelity import NextTokenReference  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.models import zoo  # noqa: E402
from energyprune.pruning import units_for  # noqa: E402
from energyprune.pruning.criteria import get_criterion  # noqa: E402
from energyprune.pruning.kinds import remove_units  # noqa: E402
from energyprune.pruning.oneshot import select  # noqa: E402

FAMILIES = ("depth", "width", "mixed")
WIDTH_KINDS = ("neuron", "head", "hidden")
SCHEMA = "energyprune.front-benchmark/1"

Batches = list[dict[str, Any]]


class Flops:
    """FLOPs ratios against the original on one probe of 1 x 128 tokens."""

    def __init__(self, model: torch.nn.Module, probe: dict[str, Any]) -> None:
        self.probe = probe
        self.base = count_flops(model, probe)

    def ratio(self, model: torch.nn.Module) -> float:
        return count_flops(model, self.probe) / self.base


def block_scores(model: torch.nn.Module, calibration: Batches) -> dict[Any, float]:
    units = units_for(model, "block", calibration)
    return dict(get_criterion("cosine-block", unit_kind="block").score(model, units, calibration))


def remove_blocks(model: torch.nn.Module, scores: dict[Any, float], count: int, calibration: Batches) -> torch.nn.Module:
    pruned, _ = remove_units(model, select(scores, count, "block"), calibration=calibration)
    return pruned


def depth_cut(model: torch.nn.Module, calibration: Batches, flops: Flops,
              goal: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The fewest blocks, lowest cosine-block score first, whose removal reaches `goal`."""
    scores = block_scores(model, calibration)
    for count in range(1, len(scores)):
        pruned = remove_blocks(model, scores, count, calibration)
        ratio = flops.ratio(pruned)
        if ratio <= goal:
            return pruned, {"blocks": count}
    raise SystemExit(f"no number of blocks reaches a FLOPs ratio of {goal}")


def width_scores(model: torch.nn.Module, calibration: Batches) -> dict[str, dict[Any, float]]:
    scores = {}
    for kind in WIDTH_KINDS:
        units = units_for(model, kind, calibration)
        scores[kind] = dict(get_criterion("taylor", unit_kind=kind).score(model, units, calibration))
    return scores


def remove_width(model: torch.nn.Module, scores: dict[str, dict[Any, float]], fraction: float,
                 calibration: Batches) -> torch.nn.Module:
    """The same fraction of each width kind, ranked globally. Each kind's surgery changes only its
    own dimension (heads: attention width, neurons: MLP width, hidden: the residual stream), so
    units chosen on `model` stay valid after the other kinds are removed."""
    pruned = model
    for kind in WIDTH_KINDS:
        chosen = select(scores[kind], fraction, kind)
        if chosen:
            pruned, _ = remove_units(pruned, chosen, calibration=calibration)
    return pruned


def width_cut(model: torch.nn.Module, calibration: Batches, flops: Flops,
              goal: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The smallest fraction (to 1/256) of every width kind whose removal reaches `goal`."""
    scores = width_scores(model, calibration)
    low, high = 0.0, 0.6
    best = remove_width(model, scores, high, calibration)
    if flops.ratio(best) > goal:
        raise SystemExit(f"removing 60% of every width kind does not reach a FLOPs ratio of {goal}")
    while high - low > 1 / 256:
        middle = (low + high) / 2
        candidate = remove_width(model, scores, middle, calibration)
        if flops.ratio(candidate) <= goal:
            high, best = middle, candidate
        else:
            low = middle
    return best, {"width_fraction": round(high, 4)}


def mixed_cut(model: torch.nn.Module, calibration: Batches, flops: Flops,
              goal: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Blocks until half the cut, then width on the block-pruned model for the rest."""
    scores = block_scores(model, calibration)
    halfway = 1 - (1 - goal) / 2
    count, shallow = 0, model
    while flops.ratio(shallow) > halfway and count + 1 < len(scores):
        count += 1
        shallow = remove_blocks(model, scores, count, calibration)
    if flops.ratio(shallow) <= goal:
        return shallow, {"blocks": count, "width_fraction": 0.0}
    pruned, width = width_cut(shallow, calibration, flops, goal)
    return pruned, {"blocks": count, **width}


CUTTERS: dict[str, Callable[..., tuple[torch.nn.Module, dict[str, Any]]]] = {
    "depth": depth_cut, "width": width_cut, "mixed": mixed_cut}


def row_key(row: dict[str, Any]) -> tuple[str, int, int]:
    return (row["family"], row["cut_percent"], row["steps"])


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Fidelity-energy front: SmolLM2-135M ({doc['device']['device_name']})", "",
             f"Made {doc['date']} with `{doc['command']}` (commit {doc['commit']}).", "",
             "Families: depth = whole blocks by cosine-block; width = KV groups, MLP neurons and hidden "
             "channels, the same fraction of each, ranked across layers by Taylor importance; mixed = "
             "blocks to half the cut, then width. Each row prunes to the smallest amount whose FLOPs "
             "ratio (1 x 128 tokens) is at or below 1 - cut.", "",
             f"Distillation: {doc['recovery']}. Data: {doc['data']}.", "",
             f"Original: held-out perplexity {doc['original']['perplexity']:.2f}.", ""]
    energy_note = any("energy" in row for row in doc["rows"])
    header = "| family | cut | removed | FLOPs ratio |" + (" energy ratio |" if energy_note else "") + \
             " distillation steps | held-out exp(-KL) | top-1 agreement | ppl ratio | seconds |"
    lines += [header, "| --- | ---: | --- | ---: |" + (" ---: |" if energy_note else "") + " ---: | ---: | ---: | ---: | ---: |"]
    for row in sorted(doc["rows"], key=row_key):
        f = row["figures"]
        removed = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row["removed"].items())
        energy = ""
        if energy_note:
            e = row.get("energy")
            energy = (f" {e['ratio']:.3f} [{e['ratio_ci95'][0]:.3f}, {e['ratio_ci95'][1]:.3f}]"
                      f"{' ESTIMATED' if e['provenance'] == 'estimated' else ''} |") if e else " n/a |"
        lines.append(f"| {row['family']} | -{row['cut_percent']}% | {removed} | {row['flops_ratio']:.3f} |{energy} "
                     f"{row['steps']} | {f['exp_neg_kl']:.3f} | {f['top1_agreement']:.3f} | "
                     f"{f['perplexity_ratio']:.2f} | {row['seconds']:.0f} |")
    if energy_note:
        lines += ["", "ESTIMATED energy comes from a CPU power model (this process's CPU time), not a counter; "
                  "read the FLOPs ratio beside it."]
    lines += ["", "Goal (issue 12, at -30% energy): exp(-KL) >= 0.8 and perplexity <= 1.5x the original's.", ""]
    if not doc.get("complete"):
        lines += [f"**Incomplete run**: {len(doc['rows'])} row(s) written so far.", ""]
    lines += [f"![front](front-smollm2.png)", "", "## Answers (greedy)", ""]
    answered = [r for r in sorted(doc["rows"], key=row_key) if r.get("answers")]
    if answered:
        lines += ["| question | original | " + " | ".join(f"{r['family']} -{r['cut_percent']}% {r['steps']} st."
                                                       for r in answered) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in answered) + " |"]
        for i, question in enumerate(QUESTIONS):
            cells = [doc["original_answers"][i]] + [r["answers"][i] for r in answered]
            lines.append(f"| {question} | " + " | ".join(c.replace("|", "/").replace("\n", " ")[:60] for c in cells)
                         + " |")
    lines += ["", "Reproduce: `python benchmarks/front_benchmark.py`"]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"depth": "tab:blue", "width": "tab:orange", "mixed": "tab:green"}
    for family in FAMILIES:
        for steps, marker, style in ((0, "o", "-"),) + tuple(
                (s, "^", "--") for s in sorted({r["steps"] for r in doc["rows"]} - {0})):
            rows = sorted((r for r in doc["rows"] if r["family"] == family and r["steps"] == steps),
                          key=lambda r: r["flops_ratio"])
            if not rows:
                continue
            label = f"{family}" + (f", {steps} distillation steps" if steps else "")
            x = [r["flops_ratio"] for r in rows]
            axes[0].plot(x, [r["figures"]["exp_neg_kl"] for r in rows], marker=marker, linestyle=style,
                         color=colours[family], label=label, alpha=1.0 if steps == 0 else 0.6)
            axes[1].plot(x, [r["figures"]["perplexity_ratio"] for r in rows], marker=marker, linestyle=style,
                         color=colours[family], label=label, alpha=1.0 if steps == 0 else 0.6)
    axes[0].axhline(0.8, color="grey", linewidth=0.8, linestyle=":")
    axes[1].axhline(1.5, color="grey", linewidth=0.8, linestyle=":")
    axes[0].set(xlabel="FLOPs ratio (cost proxy)", ylabel="held-out exp(-KL)", ylim=(0, 1))
    axes[1].set(xlabel="FLOPs ratio (cost proxy)", ylabel="held-out perplexity ratio", yscale="log")
    axes[0].legend(fontsize=7)
    figure.suptitle("SmolLM2-135M: fidelity against cost (goal: dotted lines at -30%)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_only(text: str | None) -> set[tuple[str, int]] | None:
    if not text:
        return None
    wanted = set()
    for item in text.split(","):
        family, _, cut = item.partition(":")
        if family not in FAMILIES or not cut.isdigit():
            raise SystemExit(f"--only takes family:cut items such as depth:30, got {item!r}")
        wanted.add((family, int(cut)))
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--cuts", default="10,20,30,40", help="FLOPs cuts in percent")
    parser.add_argument("--recover-at", default="30", help="cuts (percent) at which to distil")
    parser.add_argument("--recover-steps", default="0,100,400", help="cumulative distillation step counts")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--energy", action="store_true", help="compare each pruned model's energy with the original")
    parser.add_argument("--only", default=None, help="family:cut items to (re)run; other rows of the JSON are kept")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown families {unknown}: choose from {', '.join(FAMILIES)}")
    cuts = [int(c) for c in args.cuts.split(",")]
    recover_at = {int(c) for c in args.recover_at.split(",") if c}
    recover_steps = sorted({int(s) for s in args.recover_steps.split(",")} | {0})
    only = parse_only(args.only)

    torch.manual_seed(0)
    device = torch.device("cpu")
    model, tokenizer = zoo.load_smollm2()
    docs = zoo.text_corpus("lee_background")
    half = len(docs) // 2
    train = zoo.calibration_batches(tokenizer, docs[:half], seq_len=128, batch_size=4, n_batches=64)
    for batch in train:
        batch["use_cache"] = False
    calibration = train[:4]
    heldout = zoo.calibration_batches(tokenizer, docs[half:], seq_len=256, batch_size=8, n_batches=1)
    heldout[0]["use_cache"] = False
    reference = NextTokenReference(model, heldout)
    original = reference(model)
    probe = {"input_ids": heldout[0]["input_ids"][:1, :128], "use_cache": False}
    flops = Flops(model, probe)

    out_dir = args.out_dir or results_dir(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "front-smollm2.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc: dict[str, Any] = {
        "schema": SCHEMA, "device": device_record(device), "date": datetime.date.today().isoformat(),
        "commit": commit or "unknown",
        "command": "python benchmarks/front_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "recovery": f"AdamW lr {args.lr:g}, KL at T=1, all weights, batches of 4 x 128 tokens",
        "data": f"calibration and distillation: lee_background documents 0-{half - 1}; held-out: documents "
                f"{half}-{len(docs) - 1}, 8 x 256 tokens",
        "original": original, "original_answers": None, "rows": [], "complete": False,
    }
    if only is not None and path.exists():
        previous = load_json(path)
        doc["rows"] = [r for r in previous.get("rows", []) if (r["family"], r["cut_percent"]) not in only]
        doc["original_answers"] = previous.get("original_answers")
    if doc["original_answers"] is None:
        doc["original_answers"] = answers(model, tokenizer, 24)

    for cut in cuts:
        for family in families:
            if only is not None and (family, cut) not in only:
                continue
            t0 = time.perf_counter()
            pruned, removed = CUTTERS[family](model, calibration, flops, 1 - cut / 100)
            ratio = flops.ratio(pruned)
            energy = None
            if args.energy:
                from energyprune.measure.api import compare
                from energyprune.measure.meter import MeterConfig

                comparison = compare(model, pruned, probe, config=MeterConfig(window_s=1.0, repeats=6, precision=0.0))
                energy = {"ratio": comparison.ratio, "ratio_ci95": list(comparison.ratio_ci95),
                          "provenance": comparison.to_dict()["provenance"]}
            print(f"{family} -{cut}%: {removed}, FLOPs ratio {ratio:.3f}", flush=True)
            done = 0
            for steps in (recover_steps if cut in recover_at else [0]):
                if steps > done:
                    Distillation(teacher=model, batches=train[done % len(train):] + train[: done % len(train)],
                                 steps=steps - done, lr=args.lr)(pruned)
                    done = steps
                figures = reference(pruned)
                figures["perplexity_ratio"] = figures["perplexity"] / original["perplexity"]
                row = {"family": family, "cut_percent": cut, "steps": steps, "removed": removed,
                       "flops_ratio": ratio, "figures": figures,
                       "answers": answers(pruned, tokenizer, 24) if cut in recover_at else None,
                       "seconds": time.perf_counter() - t0}
                if energy is not None:
                    row["energy"] = energy
                doc["rows"] = [r for r in doc["rows"] if row_key(r) != row_key(row)] + [row]
                print(f"  {steps} steps: exp(-KL) {figures['exp_neg_kl']:.3f}, ppl ratio "
                      f"{figures['perplexity_ratio']:.2f} ({row['seconds']:.0f} s)", flush=True)
                save(path, doc, markdown(doc))
                plot(doc, path.with_suffix(".png"))
                t0 = time.perf_counter()
            del pruned
    doc["complete"] = True
    save(path, doc, markdown(doc))
    plot(doc, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
