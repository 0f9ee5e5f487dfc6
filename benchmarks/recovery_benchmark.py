"""Does distillation win back what pruning took? SmolLM2-135M pruned to a FLOPs cut, then distilled
toward the original on a training split of real text and evaluated on a held-out split.

    python benchmarks/recovery_benchmark.py                                   # blocks, cosine-block, -30% FLOPs
    python benchmarks/recovery_benchmark.py --unit neuron --criterion magnitude --steps 0,100,400
    python benchmarks/recovery_benchmark.py --lora-rank 8 --lr 1e-3          # LoRA, merged back

Text: gensim's Lee corpus (`lee_background`), documents split in halves: distillation batches
(4 x 128 tokens, packed) come from the first half, every figure from the second (8 x 256 tokens).
Figures at each step count: held-out exp(-KL) of next-token distributions and top-1 agreement
against the original, perplexity and its ratio to the original's, and greedy answers to ten fixed
questions (chat template, 24 new tokens). The cost figure is the FLOPs ratio at 1 x 128 tokens
(FlopCounterMode); `--energy` adds an interleaved comparison with the original (ESTIMATED on a
machine without counters, and labelled so). Distillation changes weights, never shapes: the FLOPs
ratio is the same at every step count. Results: benchmarks/results/<device>/recovery-<unit>.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from energyprune.bench.session import device_record, results_dir, save  # noqa: E402
from energyprune.budget.recovery import Distillation  # noqa: E402
from energyprune.metrics.fidelity import NextTokenReference  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.models import zoo  # noqa: E402
from energyprune.pruning import units_for  # noqa: E402
from energyprune.pruning.criteria import get_criterion  # noqa: E402
from energyprune.pruning.oneshot import prune  # noqa: E402

QUESTIONS = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What colour is the sky on a clear day?",
    "What is two plus three?",
    "Which planet do we live on?",
    "What do bees make?",
    "What is the opposite of hot?",
    "How many legs does a spider have?",
    "What language is spoken in Spain?",
    "What do plants need from the sun?",
)


def answers(model: torch.nn.Module, tokenizer: Any, max_new_tokens: int) -> list[str]:
    out = []
    model.eval()
    for question in QUESTIONS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt").to(next(model.parameters()).device)
        with torch.inference_mode():
            generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def cut_to_flops(model: torch.nn.Module, criterion: Any, kind: str, calibration: list[Any], goal_ratio: float,
                 probe: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, Any, float, Any]:
    """The smallest amount of `kind` units, lowest-scored first, whose removal brings the FLOPs ratio
    to `goal_ratio` or below (blocks: whole counts; others: fractions in steps of 2.5%)."""
    base = count_flops(model, probe)
    amounts = list(range(1, len(units_for(model, kind)))) if kind == "block" else [i / 40 for i in range(1, 40)]
    for amount in amounts:
        pruned, record = prune(model, criterion, amount, calibration=calibration)
        ratio = count_flops(pruned, probe) / base
        if ratio <= goal_ratio:
            return pruned, record, ratio, amount
    raise SystemExit(f"no amount of {kind} units reaches a FLOPs ratio of {goal_ratio}")


def evaluate(model: torch.nn.Module, reference: NextTokenReference, original_ppl: float) -> dict[str, float]:
    figures = reference(model)
    figures["perplexity_ratio"] = figures["perplexity"] / original_ppl
    return figures


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Recovery by distillation: SmolLM2-135M, {doc['unit']} pruned by {doc['criterion']} "
             f"({doc['device']['device_name']})", "",
             f"Made {doc['date']} with `{doc['command']}` (commit {doc['commit']}).", "",
             f"Pruned: {doc['amount']} {doc['unit']} unit(s) by {doc['criterion']}, FLOPs ratio "
             f"{doc['flops_ratio']:.3f} at 1 x 128 tokens (the cost proxy; distillation keeps it). "
             f"Distillation: {doc['recovery']}. Data: {doc['data']}.", ""]
    if doc.get("energy"):
        e = doc["energy"]
        lines += [f"Energy ratio to the original{' (ESTIMATED)' if e['provenance'] == 'estimated' else ''}: "
                  f"{e['ratio']:.3f} (95% {e['ratio_ci95'][0]:.3f} .. {e['ratio_ci95'][1]:.3f}).", ""]
    original = doc["original"]
    lines += [f"Original: held-out perplexity {original['perplexity']:.2f}.", "",
              "| distillation steps | held-out exp(-KL) | top-1 agreement | perplexity | ppl ratio | seconds |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in doc["rows"]:
        f = row["figures"]
        lines.append(f"| {row['steps']} | {f['exp_neg_kl']:.3f} | {f['top1_agreement']:.3f} | {f['perplexity']:.1f} | "
                     f"{f['perplexity_ratio']:.2f} | {row['seconds']:.0f} |")
    lines += ["", "Goal (issue 12, at -30% energy): exp(-KL) >= 0.8 and perplexity <= 1.5x the original's.", "",
              "## Answers (greedy)", "", "| question | original | " +
              " | ".join(f"{r['steps']} steps" for r in doc["rows"]) + " |",
              "| --- | --- | " + " | ".join("---" for _ in doc["rows"]) + " |"]
    for i, question in enumerate(QUESTIONS):
        cells = [doc["original_answers"][i]] + [r["answers"][i] for r in doc["rows"]]
        lines.append(f"| {question} | " + " | ".join(c.replace("|", "/").replace("\n", " ")[:80] for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", default="block")
    parser.add_argument("--criterion", default="cosine-block")
    parser.add_argument("--flops-ratio", type=float, default=0.70, help="prune until FLOPs <= this x the original")
    parser.add_argument("--amount", type=float, default=None,
                        help="remove this many units (blocks) or this fraction instead of searching for --flops-ratio")
    parser.add_argument("--steps", default="0,100,400", help="distillation step counts to evaluate at (cumulative)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--hidden-weight", type=float, default=0.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--energy", action="store_true", help="also compare the pruned model's energy (interleaved)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    model, tokenizer = zoo.load_smollm2()
    docs = zoo.text_corpus("lee_background")
    half = len(docs) // 2
    train = zoo.calibration_batches(tokenizer, docs[:half], seq_len=128, batch_size=4, n_batches=64)
    for batch in train:
        batch["use_cache"] = False
    heldout = zoo.calibration_batches(tokenizer, docs[half:], seq_len=256, batch_size=8, n_batches=1)
    heldout[0]["use_cache"] = False
    reference = NextTokenReference(model, heldout)
    original = reference(model)
    probe = {"input_ids": heldout[0]["input_ids"][:1, :128], "use_cache": False}
    criterion = get_criterion(args.criterion, unit_kind=args.unit)
    if args.amount is not None:
        amount = int(args.amount) if args.amount >= 1 else args.amount
        pruned, record = prune(model, criterion, amount, calibration=train[:4])
        flops_ratio = count_flops(pruned, probe) / count_flops(model, probe)
    else:
        pruned, record, flops_ratio, amount = cut_to_flops(model, criterion, args.unit, train[:4], args.flops_ratio,
                                                           probe)
    print(f"pruned {amount} {args.unit} unit(s): FLOPs ratio {flops_ratio:.3f}", flush=True)
    import datetime
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc: dict[str, Any] = {
        "schema": "energyprune.recovery-benchmark/1", "device": device_record(device),
        "date": datetime.date.today().isoformat(), "commit": commit or "unknown",
        "command": "python benchmarks/recovery_benchmark.py " + " ".join(argv or sys.argv[1:]),
        "unit": args.unit, "criterion": args.criterion, "amount": amount, "flops_ratio": flops_ratio,
        "removed": [u.path for u in record.original_units()] if hasattr(record, "original_units") else None,
        "recovery": (f"AdamW lr {args.lr:g}, KL at T={args.temperature:g}"
                     + (f" + {args.hidden_weight:g} x hidden MSE" if args.hidden_weight else "")
                     + (f", LoRA rank {args.lora_rank} merged back" if args.lora_rank else ", all weights")
                     + ", batches of 4 x 128 tokens"),
        "data": f"train: lee_background documents 0-{half - 1} ({len(train)} packed batches of 4 x 128 tokens); "
                f"held-out: documents {half}-{len(docs) - 1}, 8 x 256 tokens",
        "original": original, "original_answers": answers(model, tokenizer, args.max_new_tokens), "rows": [],
    }
    out_dir = args.out_dir or results_dir(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"recovery-{args.unit}{'-lora' if args.lora_rank else ''}.json"
    if args.energy:
        from energyprune.measure.api import compare
        from energyprune.measure.meter import MeterConfig

        comparison = compare(model, pruned, probe, config=MeterConfig(window_s=1.0, repeats=6, precision=0.0))
        doc["energy"] = {"ratio": comparison.ratio, "ratio_ci95": list(comparison.ratio_ci95),
                         "provenance": comparison.to_dict()["provenance"]}
    done = 0
    for target in sorted({int(s) for s in args.steps.split(",")}):
        t0 = time.perf_counter()
        if target > done:
            Distillation(teacher=model, batches=train[done % len(train):] + train[: done % len(train)],
                         steps=target - done, lr=args.lr, temperature=args.temperature,
                         hidden_weight=args.hidden_weight, lora_rank=args.lora_rank)(pruned)
            done = target
        row = {"steps": target, "figures": evaluate(pruned, reference, original["perplexity"]),
               "answers": answers(pruned, tokenizer, args.max_new_tokens), "seconds": time.perf_counter() - t0}
        doc["rows"].append(row)
        print(f"{target} steps: exp(-KL) {row['figures']['exp_neg_kl']:.3f}, ppl ratio "
              f"{row['figures']['perplexity_ratio']:.2f} ({row['seconds']:.0f} s)", flush=True)
        save(path, doc, markdown(doc))
    print(f"wrote {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
