"""Width pruning of SmolLM2-135M: 25% of the MLP neurons by every neuron criterion, on held-out text.

Writes benchmarks/results/<device>/width.json (the source of truth) and width.md.

SmolLM2-135M-Instruct (30 gated SiLU MLPs of 1536 neurons, 46,080 in all). Each criterion scores
every neuron ONCE on the calibration data (lee_background documents of the first half, packed
4×128-token batches); the model then loses 25% of its neurons (11,520), chosen

* **global**: the lowest scores of the whole model after dividing each MLP's scores by their mean
  (`select(..., scope="global")`, the default), one neuron of each MLP always kept; widths differ;
* **global-raw**: the same on the scores as they are (`scope="global-raw"`);
* **per-layer**: the lowest 25% of every MLP (`scope="per-layer"`, every MLP 1152 wide).

Both give the same number of parameters and FLOPs. Rows: random (seed 0), magnitude (L1),
mipp (its default sample: max(2048, 4·1537) tokens, here all the calibration tokens it gets),
activation (Minitron, mean |a|), taylor abs (first-order Σ|w·∂L/∂w|, LM loss; "taylor" in older files), taylor fo-squared
(Molchanov's Taylor-FO: per batch the signed Σ a·∂L/∂a of each neuron, squared, averaged), and Torch-Pruning's own
`GroupTaylorImportance` on the same calibration gradients (a peer row: its DependencyGraph finds
the gate/up/down coupling, its scores feed our surgery), where torch-pruning is installed.

Fidelity on held-out text (lee_background documents of the second half, packed 256-token
sequences; the original's log-probabilities cached): exp(−KL) of the next-token distributions,
top-1 agreement, perplexity. No energy is measured here: at equal parameter count every row has
the same FLOPs (listed), and the budget loop measures energy where it matters.

    python benchmarks/width_benchmark.py                     # ~10 min on the shared 2-core CPU
    python benchmarks/width_benchmark.py --quick             # 2 MLP criteria, fewer tokens, to /tmp
    python benchmarks/width_benchmark.py --kind head --only 'taylor abs,taylor fo-squared' --out <dir>

`--kind head` (KV groups: a KV head with its query group) or `--kind hidden` (residual-stream
channels, one group: the scopes coincide, one row per criterion) ranks another width unit the same
way; the Torch-Pruning peer row is for neurons only.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from energyprune.bench.session import device_record, results_dir  # noqa: E402
from energyprune.files import to_json, write_atomic  # noqa: E402
from energyprune.metrics.fidelity import NextTokenReference  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.models import zoo  # noqa: E402
from energyprune.pruning import select  # noqa: E402
from energyprune.pruning.criteria import get_criterion  # noqa: E402
from energyprune.pruning.kinds import get_kind, remove_units, units_for  # noqa: E402
from energyprune.pruning.base import Unit  # noqa: E402
from energyprune.version import __version__  # noqa: E402

SCHEMA = "energyprune.width-benchmark/1"
SCOPES = ("global", "global-raw", "per-layer")
#: What the title and the counts call a unit of each kind.
KIND_NOUNS = {"neuron": "MLP neurons", "head": "KV groups", "hidden": "hidden channels"}
# "taylor" is the name of the abs rows in files made before fo-squared became taylor's default.
ROW_ORDER = ("random", "magnitude", "mipp", "activation", "taylor", "taylor abs", "taylor fo-squared",
             "torch-pruning GroupTaylor")
# Row name -> criterion options; a row name's first word is the criterion.
CRITERIA = (("random", {"seed": 0}), ("magnitude", {}), ("mipp", {}), ("activation", {}), ("taylor abs", {"estimator": "abs"}),
            ("taylor fo-squared", {"estimator": "fo-squared"}))


def torch_pruning_taylor(model: torch.nn.Module, calibration: list[dict[str, Any]], units: list[Unit]
                         ) -> dict[Unit, float]:
    """Torch-Pruning's GroupTaylorImportance per MLP neuron: gradients of the LM loss over the
    calibration batches, the group of each MLP's gate_proj outputs from its DependencyGraph."""
    import torch_pruning as tp

    from energyprune.pruning.criteria.taylor import calibration_loss, gradients_on

    example = {"input_ids": calibration[0]["input_ids"][:1, :16]}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                  output_transform=lambda out: out.logits)  # HF returns a ModelOutput
    importance = tp.importance.GroupTaylorImportance()  # TP's defaults: group_reduction "mean", normalizer "mean"
    scores: dict[Unit, float] = {}
    paths = sorted({u.path for u in units}, key=lambda p: int(p.split(".")[2]))
    with gradients_on(model):
        for batch in calibration:
            calibration_loss(model, batch).backward()
        for path in paths:
            mlp = model.get_submodule(path)
            group = graph.get_pruning_group(mlp.gate_proj, tp.prune_linear_out_channels,
                                            idxs=list(range(mlp.gate_proj.out_features)))
            values = importance(group)
            for j, value in enumerate(values.tolist()):
                scores[Unit("neuron", path, j)] = float(value)
    return scores


def evaluate(pruned: torch.nn.Module, reference: NextTokenReference) -> dict[str, float]:
    out = reference(pruned)
    return {k: out[k] for k in ("exp_neg_kl", "top1_agreement", "perplexity")}


def render(data: dict[str, Any]) -> str:
    o = data["original"]
    lines = [
        f"# Width pruning: SmolLM2-135M, {data['fraction']:.0%} of the {KIND_NOUNS[data.get('kind', 'neuron')]}",
        "",
        f"energyprune {data['energyprune']}, {data['device']['device_name']}, {data['finished']}.",
        f"Calibration: {data['data']['calibration']}. Held-out: {data['data']['heldout']}.",
        f"Original: perplexity {o['perplexity']:.2f} on the held-out text; {o['params'] / 1e6:.1f} M parameters, "
        f"{o['gflops']:.2f} GFLOPs per 128-token inference.",
        f"Pruned ({data['removed']} of {data['units']} {KIND_NOUNS[data.get('kind', 'neuron')]}, "
        f"{data['removed'] / data['units']:.0%}): {data['pruned_params'] / 1e6:.1f} M parameters, "
        f"{data['pruned_gflops']:.2f} GFLOPs, "
        + ("the same for every row." if len({r["params"] for r in data["rows"] if "params" in r}) <= 1
           else "**rows differ in size**: see each row's `removed` and `params` in the JSON."),
        "",
        "| criterion | scope | exp(−KL) ↑ | top-1 agreement ↑ | perplexity ↓ (ratio) | scoring time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        if "error" in row:
            lines.append(f"| {row['criterion']} | {row['scope']} | not run: {row['error']} | | | |")
            continue
        lines.append(f"| {row['criterion']} | {row['scope']} | {row['exp_neg_kl']:.3f} | {row['top1_agreement']:.3f} | "
                     f"{row['perplexity']:.1f} ({row['perplexity'] / o['perplexity']:.2f}×) | {row['score_s']:.0f} s |")
    lines += ["", "Scoring times are wall-clock on a shared machine (other jobs running): an indication, not a benchmark.",
              "", "Reproduce: `" + data["command"] + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--kind", default="neuron", choices=sorted(KIND_NOUNS), help="the width unit (default neuron)")
    parser.add_argument("--calibration-batches", type=int, default=8, help="4×128-token batches (default 8)")
    parser.add_argument("--eval-seqs", type=int, default=8, help="held-out 256-token sequences (default 8)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="comma-separated row names to (re)run, e.g. 'torch-pruning GroupTaylor'; "
                                       "the other rows are kept from the existing width.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    criteria = CRITERIA if not args.quick else (("random", {"seed": 0}), ("activation", {}))
    if args.quick:
        args.calibration_batches, args.eval_seqs = 2, 2
    device = torch.device("cpu")
    out_dir = args.out or (Path("/tmp/width-quick") if args.quick else results_dir(device))
    out_dir.mkdir(parents=True, exist_ok=True)

    model, tokenizer = zoo.load_smollm2()
    docs = zoo.text_corpus("lee_background")
    half = len(docs) // 2
    calibration = zoo.calibration_batches(tokenizer, docs[:half], seq_len=128, batch_size=4,
                                          n_batches=args.calibration_batches)
    for batch in calibration:
        batch["use_cache"] = False
    heldout = zoo.calibration_batches(tokenizer, docs[half:], seq_len=256, batch_size=2,
                                      n_batches=max(1, args.eval_seqs // 2))
    for batch in heldout:
        batch["use_cache"] = False
    reference = NextTokenReference(model, heldout)
    original = reference(model)
    ids = heldout[0]["input_ids"][:1, :128]
    measure_inputs = {"input_ids": ids, "use_cache": False}
    units = units_for(model, args.kind)
    scopes = SCOPES if get_kind(args.kind).grouped else ("global",)
    data: dict[str, Any] = {
        "schema": SCHEMA, "energyprune": __version__, "device": device_record(device),
        "command": "python benchmarks/width_benchmark.py" + (" --quick" if args.quick else "")
                   + (f" --kind {args.kind}" if args.kind != "neuron" else ""),
        "kind": args.kind, "fraction": args.fraction, "units": len(units),
        "data": {
            "calibration": f"lee_background documents 0-{half - 1}, packed: {len(calibration)} batches of 4×128 "
                           f"tokens ({sum(int(b['input_ids'].numel()) for b in calibration)} tokens)",
            "heldout": f"lee_background documents {half}-{len(docs) - 1}, packed: {len(heldout)} batches of 2×256 tokens",
        },
        "original": {"perplexity": original["perplexity"], "params": sum(p.numel() for p in model.parameters()),
                     "gflops": count_flops(model, measure_inputs) / 1e9},
        "rows": [],
    }
    runs: list[tuple[str, Any]] = [(name, options) for name, options in criteria]
    if not args.quick and args.kind == "neuron":
        runs.append(("torch-pruning GroupTaylor", None))
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        unknown = sorted(wanted - {name for name, _ in runs})
        if unknown:
            raise SystemExit(f"--only: unknown rows {unknown}; the rows are {', '.join(name for name, _ in runs)}")
        runs = [r for r in runs if r[0] in wanted]
        previous_path = out_dir / "width.json"
        if previous_path.exists():  # the other rows of the same run are kept
            previous = json.loads(previous_path.read_text())
            if previous["fraction"] != args.fraction or previous.get("kind", "neuron") != args.kind:
                raise SystemExit(f"{previous_path} holds rows of {previous.get('kind', 'neuron')} at fraction "
                                 f"{previous['fraction']}, not {args.kind} at {args.fraction}: "
                                 "give another --out")
            data["rows"] = [r for r in previous["rows"] if r["criterion"] not in wanted]
            for key in ("removed", "pruned_params", "pruned_gflops"):
                data[key] = previous[key]
            data["command"] = previous["command"] + f"; rows {sorted(wanted)} rerun with --only"
        else:
            data["command"] += f" --fraction {args.fraction} --only '{args.only}'" + (f" --out {args.out}" if args.out else "")
    for name, options in runs:
        t0 = time.perf_counter()
        try:
            if options is None:
                scores = torch_pruning_taylor(model, calibration, units)
            else:
                criterion = get_criterion(name.split()[0], unit_kind=args.kind, **options)
                scores = criterion.score(model, units, calibration)
        except Exception as error:  # noqa: BLE001 - a peer library that cannot trace the model is a row, not a crash
            for scope in scopes:
                data["rows"].append({"criterion": name, "scope": scope, "error": f"{type(error).__name__}: {error}"[:200]})
            print(f"{name}: not run ({error})", file=sys.stderr)
            continue
        score_s = time.perf_counter() - t0
        # Every row removes as many units as per-layer does (round(fraction x group size) of each
        # group): with 3 KV groups an attention, 25% per layer is 1 of 3, so a global 25% of all 90
        # would be a smaller model.
        count = len(select(scores, args.fraction, args.kind, scope="per-layer"))
        for scope in scopes:
            chosen = select(scores, args.fraction if scope == "per-layer" else count, args.kind, scope=scope)
            pruned, record = remove_units(model, chosen)
            row = {"criterion": name, "scope": scope, "score_s": score_s, "removed": len(chosen),
                   "params": sum(p.numel() for p in pruned.parameters()), **evaluate(pruned, reference)}
            if "layer_sizes" in record.ops[0].detail:
                widths = sorted(record.ops[0].detail["layer_sizes"].values())
                where = "mlp" if args.kind == "neuron" else "attention"  # "mlp_..." is the key of earlier files
                row[f"{where}_widths_min_median_max"] = [widths[0], widths[len(widths) // 2], widths[-1]]
            data["rows"].append(row)
            data["rows"].sort(key=lambda r: ROW_ORDER.index(r["criterion"]) if r["criterion"] in ROW_ORDER else 99)
            data["removed"] = len(chosen)
            data["pruned_params"] = sum(p.numel() for p in pruned.parameters())
            data["pruned_gflops"] = count_flops(pruned, measure_inputs) / 1e9
            print(f"{name:>26} {scope:>9}: exp(-KL) {row['exp_neg_kl']:.3f}  ppl {row['perplexity']:.1f}  "
                  f"({score_s:.0f} s scoring)", file=sys.stderr)
            del pruned
            gc.collect()
    data["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_atomic(out_dir / "width.json", to_json(data))
    write_atomic(out_dir / "width.md", render(data))
    print(f"wrote {out_dir / 'width.json'} and width.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
