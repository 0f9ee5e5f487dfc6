"""Neuron pruning of real pretrained models: every neuron criterion against random, fidelity against measured energy.

Writes benchmarks/results/<device>/prune_neurons.json (the source of truth), prune_neurons.md and
prune_neurons_<model>.png (rendering: `prune_neurons_report.py`).

For each model (SmolLM2-135M-Instruct: 30 gated SiLU MLPs of 1536 neurons; all-MiniLM-L6-v2: 6
BERT GELU MLPs of 1536 neurons) and each criterion of `energyprune.pruning.criteria.CRITERIA`
that scores neurons (magnitude; random with three seeds; mipp; thermodynamic; nepenthe with
unit_kind "neuron"; any criterion registered since that takes `unit_kind="neuron"`):

* the criterion scores every neuron ONCE, on the original model and the calibration data
  (one-shot); the pruned model at fraction f removes, in EVERY MLP, the round(f · width) neurons of
  lowest finite score there (`energyprune.pruning.select(scores, f, "neuron")`: every MLP keeps
  the same width, so at equal f every criterion's model has the same parameters and FLOPs);
  f = 10%, 20%, 30%, 40%, 50%, all from the original model's scores (never re-scored);
* every pruned model: parameters, FLOPs of one inference (FlopCounterMode), held-out fidelity
  (the block benchmark's measures on its held-out data), latency, and energy per inference against
  the original by `energyprune.measure.api.compare` (interleaved windows, backend "auto": where no counter
  is readable that is the ESTIMATED backend, and every row says so).

NEPENTHE's own unit kind, "activation" (fold a layer's MLP into one linear map: activation
replaced by the identity), is run where the model has foldable MLPs (MiniLM's Linear-GELU-Linear),
k = 1..K layers folded in the order of the criterion's scores, against random folding orders. It
does not apply to SmolLM2 (gated MLPs: `fold_activation` refuses them; recorded).

No oracle at neuron level: a greedy search would evaluate every remaining neuron at every step
(30 × 1536 = 46,080 candidates for SmolLM2, 9,216 for MiniLM, each a forward pass on the
calibration data, thousands of steps), and the registry holds no cheap data-driven neuron
baseline (no activation-norm criterion) to stand in for it. energy-aware scores blocks and
attention only (one measured comparison per candidate: per neuron that would be 46,080
comparisons); it is listed as not run, with the registry's own refusal.

Data: the block benchmark's (`prune_benchmark.smollm2_bench` / `minilm_bench`), with more
calibration batches by default (MIPP's regression needs several tokens per neuron; the
thermodynamic temperature is a variance across batches). Held-out data are identical.

    python benchmarks/prune_neurons_benchmark.py            # the full run (~25 min on a quiet 2-vCPU machine; --quick prints an estimate)
    python benchmarks/prune_neurons_benchmark.py --quick    # MiniLM only, 2 fractions, short windows, to /tmp
    python benchmarks/prune_neurons_benchmark.py --plan --device cuda            # estimate only
    python benchmarks/prune_neurons_benchmark.py --device cuda --models minilm --resume --budget-min 8
    python benchmarks/prune_neurons_report.py benchmarks/results/<device>/prune_neurons.json   # re-render only

`--device cuda` (or cuda:N): the models and every batch on that GPU, `compare` with backend "auto"
(the GPU's NVML counter), results under benchmarks/results/<GPU slug>/, windows of 2 s by default
(`common.METER_DEFAULTS`), `--threads` left alone. With `--resume` the JSON is rewritten after every
row and every criterion's scores are kept beside it (prune_neurons.scores.pt), so that a later run
with the same options continues where a time budget stopped this one (benchmarks/gpu_prune_session.sh).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prune_benchmark import ENERGY_METHOD, BENCHES, Bench, compare_seconds, energy_record  # noqa: E402

from energyprune.bench.session import (  # noqa: E402
    METER_DEFAULTS,
    Session,
    add_session_options,
    apply_meter_defaults,
    load_json,
    prepare_run,
    resolve_device,
    results_root,
)
from energyprune.pruning.criteria import specs_for_kind  # noqa: E402
from energyprune.pruning.criterion_spec import CriterionSpec  # noqa: E402
from prune_neurons_report import render  # noqa: E402

from energyprune.measure.api import compare, measure  # noqa: E402
from energyprune.errors import EnergyPruneError  # noqa: E402
from energyprune.measure.meter import MeterConfig  # noqa: E402
from energyprune.metrics import fidelity  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.pruning import CRITERIA, Unit, get_criterion, remove_units, select, units_for  # noqa: E402
from energyprune.pruning.surgery.neurons import find_mlps  # noqa: E402
from energyprune.pruning.surgery.slicing import count_parameters  # noqa: E402

logger = logging.getLogger("prune_neurons_benchmark")

ORACLE_NOTE = (
    "No oracle at neuron level. The block benchmark's greedy oracle tries every remaining unit at every "
    "step; for neurons that is 46,080 candidates (SmolLM2: 30 MLPs x 1536) or 9,216 (MiniLM: 6 x 1536) per "
    "step, each a forward pass on the calibration data, and 10-50% pruning takes thousands of steps - "
    "months of CPU time. The registry holds no cheap data-driven neuron baseline (no activation-norm "
    "criterion) to stand in for it, so none is run; the random control is the floor every criterion is "
    "read against."
)


# ---- criteria ---------------------------------------------------------------------------------
def neuron_specs(seeds: Sequence[int], args: argparse.Namespace) -> tuple[list[CriterionSpec], list[dict[str, str]]]:
    """The neuron criteria to run: the known ones, then anything else the registry holds that accepts
    unit_kind="neuron". Returns (specs, not run with the reason)."""
    known = {
        "magnitude": [CriterionSpec("magnitude", {"unit_kind": "neuron", "p": 1}, row="magnitude")],
        "random": [CriterionSpec("random", {"unit_kind": "neuron", "seed": s}, row=f"random (seed {s})")
                   for s in seeds],
        "mipp": [CriterionSpec("mipp", {"unit_kind": "neuron", "max_tokens": args.mipp_tokens}, row="mipp")],
        "thermodynamic": [CriterionSpec("thermodynamic", {"unit_kind": "neuron"}, row="thermodynamic")],
        "nepenthe": [CriterionSpec("nepenthe", {"unit_kind": "neuron"}, row="nepenthe (neuron)",
                                   group="nepenthe (neuron)")],
    }
    return specs_for_kind("neuron", known)


def fold_specs(seeds: Sequence[int]) -> list[CriterionSpec]:
    """NEPENTHE's layer folding and its random control (random folding orders)."""
    specs = []
    if "nepenthe" in CRITERIA:
        specs.append(CriterionSpec("nepenthe", {"unit_kind": "activation"}, row="nepenthe (activation)",
                                   group="nepenthe (activation)"))
    if "random" in CRITERIA:
        specs += [CriterionSpec("random", {"unit_kind": "activation", "seed": s}, row=f"random fold (seed {s})",
                                group="random fold") for s in seeds]
    return specs


def _score_summary(scores: dict[Unit, float]) -> dict[str, Any]:
    values = list(scores.values())
    finite = [v for v in values if math.isfinite(v)]
    out: dict[str, Any] = {
        "units": len(values),
        "finite": len(finite),
        "pos_inf": sum(1 for v in values if v == math.inf),
        "neg_inf": sum(1 for v in values if v == -math.inf),
        "nan": sum(1 for v in values if math.isnan(v)),
    }
    if finite:
        lowest = min(finite)
        out.update(min=lowest, median=statistics.median(finite), max=max(finite),
                   ties_at_min=sum(1 for v in finite if v == lowest))
    if out["neg_inf"]:
        out["neg_inf_note"] = ("-inf means 'remove first' to the criterion, but energyprune.pruning.select keeps "
                               "only finite scores: these units are never removed (see the report)")
    return out


def criterion_details(criterion: Any, spec: CriterionSpec) -> dict[str, Any]:
    """What the criterion says about its own scores (per MLP), for the report."""
    out: dict[str, Any] = {}
    results = getattr(criterion, "last_results", None)
    if spec.name == "mipp" and results:
        prunable = {path: len(r.prunable) for path, r in results.items()}
        widths = {path: r.width for path, r in results.items()}
        out["prunable_per_mlp"] = prunable
        out["prunable_fraction"] = {p: prunable[p] / widths[p] for p in prunable}
        out["tokens"] = sorted({r.tokens for r in results.values()})
        out["information_nats"] = {p: r.information_nats for p, r in results.items()}
        out["steps"] = sorted({r.steps for r in results.values()})
    layers = getattr(criterion, "last_layers", None)
    if spec.name == "thermodynamic" and layers:
        out["inert_per_mlp"] = {p: len(layer.inert) for p, layer in layers.items()}
        out["batches"] = sorted({layer.batches for layer in layers.values()})
        out["t_anneal"] = criterion.t_anneal
    stats = getattr(criterion, "last_stats", None)
    if spec.name == "nepenthe" and stats:
        out["tokens"] = sorted({s.tokens for s in stats.values()})
        out["dead_per_mlp"] = {p: int((s.on_counts == 0).sum()) for p, s in stats.items()}
        out["always_on_per_mlp"] = {p: int((s.on_counts == s.tokens).sum()) for p, s in stats.items()}
        out["mean_entropy_bits"] = {p: s.mean_entropy(False) for p, s in stats.items()}
        out["mean_entropy_bits_live"] = {p: s.mean_entropy(True) for p, s in stats.items()}
        out["mean_p_on"] = {p: float(s.p.mean()) for p, s in stats.items()}
        out["producer"] = {p: s.producer for p, s in stats.items()}
        out["gated"] = any(s.gated for s in stats.values())
    return out


THERMO_LOSS = {
    "smollm2": "next-token cross entropy (the library's default for a language model)",
    "minilm": "mean square of last_hidden_state (the library's stand-in where the model has no task loss)",
}


def score(bench: Bench, spec: CriterionSpec, units: list[Unit]) -> tuple[dict[Unit, float], dict[str, Any]]:
    criterion = get_criterion(spec.name, **spec.options)
    start = time.perf_counter()
    with warnings_logged() as seen:
        scores = criterion.score(bench.model, units, bench.calibration)
    info = {
        "criterion": spec.name,
        "options": spec.options,
        "family": spec.family,
        "repr": repr(criterion),
        "score_s": time.perf_counter() - start,
        "scores": _score_summary(scores),
        "details": criterion_details(criterion, spec),
        "warnings": seen,
    }
    if spec.name == "thermodynamic":
        info["details"]["loss"] = THERMO_LOSS.get(bench.key, "the library's default loss")
    return scores, info


class warnings_logged:
    """Collects the library's WARNING log lines during a block (criteria warn, e.g. MIPP on few tokens)."""

    def __enter__(self) -> list[str]:
        self.seen: list[str] = []
        seen = self.seen

        class Catch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record.getMessage())

        self.handler = Catch(level=logging.WARNING)
        logging.getLogger("energyprune.pruning").addHandler(self.handler)
        return self.seen

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("energyprune.pruning").removeHandler(self.handler)
        # Keep each message once (MIPP would repeat one per MLP).
        unique = list(dict.fromkeys(self.seen))
        self.seen[:] = unique


# ---- evaluation -------------------------------------------------------------------------------
def _selection_hash(units: Sequence[Unit]) -> str:
    text = "\n".join(f"{u.kind}|{u.path}|{u.index}" for u in sorted(units))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class Evaluator:
    """Builds, measures and evaluates pruned models; one evaluation per distinct set of removed units."""

    def __init__(self, bench: Bench, config: MeterConfig, backend: str) -> None:
        self.bench = bench
        self.config = config
        self.backend = backend
        self.cache: dict[str, dict[str, Any]] = {}

    def seed(self, row: dict[str, Any]) -> None:
        """Take a row measured by an earlier run (`--resume`) as the evaluation of its selection."""
        if row.get("selection") and row["selection"] not in self.cache:
            self.cache[row["selection"]] = {k: v for k, v in row.items()
                                            if k not in ("fraction", "removed", "k", "folded", "shared_with_earlier_row")}

    def __call__(self, units: Sequence[Unit], label: str) -> dict[str, Any]:
        key = _selection_hash(units)
        if key in self.cache:
            return {**self.cache[key], "shared_with_earlier_row": True}
        start = time.perf_counter()
        pruned, record = remove_units(self.bench.model, list(units))
        widths = {spec.path: spec.hidden_size for spec in find_mlps(pruned)}
        row: dict[str, Any] = {
            "selection": key,
            "params": count_parameters(pruned),
            "flops": count_flops(pruned, self.bench.measure_inputs),
            "mlp_widths": sorted(set(widths.values())),
            "fidelity": self.bench.evaluate(pruned),
        }
        row["fidelity_s"] = time.perf_counter() - start
        load_before = os.getloadavg()[0]
        start_energy = time.perf_counter()
        comparison = compare(self.bench.model, pruned, self.bench.measure_inputs, backend=self.backend,
                             config=self.config, labels=("original", label))
        row["energy"] = energy_record(comparison, load_before)
        row["energy_s"] = time.perf_counter() - start_energy
        row["eval_s"] = time.perf_counter() - start
        del pruned, record, comparison
        gc.collect()
        self.cache[key] = row
        return row


def check_metrics(bench: Bench, units: Sequence[Unit]) -> float:
    """Max relative difference between the benchmark's cached-reference measures and
    `energyprune.metrics.fidelity` on one neuron-pruned model."""
    pruned, _ = remove_units(bench.model, list(units))
    mine = bench.evaluate(pruned)
    batches = bench.evaluate.batches  # type: ignore[attr-defined]
    if bench.key == "smollm2":
        lib = fidelity.next_token_fidelity(bench.model, pruned, batches)
        theirs = {"exp_neg_kl": lib.exp_neg_kl, "top1_agreement": lib.top1_agreement,
                  "perplexity": fidelity.perplexity(pruned, batches)}
    else:
        theirs = {"embedding_cosine": fidelity.embedding_fidelity(bench.model, pruned, batches)}
    diff = max(abs(mine[k] - v) / max(1.0, abs(v)) for k, v in theirs.items())
    if diff > 1e-4:
        raise RuntimeError(f"the benchmark's cached-reference metrics disagree with energyprune.metrics: {mine} vs {theirs}")
    return diff


def overlaps(selections: dict[str, list[Unit]]) -> dict[str, dict[str, float]]:
    """Shared fraction of removed neurons between every two criteria at one fraction (the same count
    is removed by each, so |A ∩ B| / |A|; two independent random choices share f on average)."""
    sets = {label: set(units) for label, units in selections.items()}
    out: dict[str, dict[str, float]] = {}
    for a, sa in sets.items():
        out[a] = {b: (len(sa & sb) / len(sa) if sa else math.nan) for b, sb in sets.items() if b != a}
    return out


def original_record(bench: Bench, args: argparse.Namespace, config: MeterConfig) -> dict[str, Any]:
    m = measure(bench.model, bench.measure_inputs, backend=args.backend, config=config, label=bench.key)
    return {
        "params": count_parameters(bench.model),
        "flops": count_flops(bench.model, bench.measure_inputs),
        "fidelity": bench.evaluate(bench.model),
        "mlp_widths": sorted({s.hidden_size for s in find_mlps(bench.model)}),
        "n_mlps": len(find_mlps(bench.model)),
        "energy": {"provenance": m.provenance.value, "backends": list(m.backends),
                   "per_inference_j": m.per_inference_j, "ci95_j": list(m.ci95_j),
                   "estimate_band_j": list(m.estimate_band_j) if m.estimate_band_j else None,
                   "latency_s": m.latency_s["median"], "warnings": list(m.warnings)},
    }


def _primary(bench: Bench) -> str:
    return next(m["key"] for m in bench.measures if m.get("primary"))


def _log_row(bench: Bench, label: str, what: str, row: dict[str, Any], started: float) -> None:
    e = row["energy"]
    key = _primary(bench)
    print(f"  {label} {what}: {key} {row['fidelity'][key]:.4f}, energy ratio {e['ratio']:.3f} "
          f"[{e['ratio_ci95'][0]:.3f}, {e['ratio_ci95'][1]:.3f}] [{time.perf_counter() - started:.0f} s]",
          file=sys.stderr)


class ScoreStore:
    """Every criterion's neuron scores beside the JSON (`--resume`): a later run selects the same
    neurons without scoring again (MIPP on SmolLM2 takes minutes). One float64 tensor per criterion,
    in the order of `units_for(model, "neuron")`, which is stored with them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path is not None and path.exists():
            self.data = torch.load(path, weights_only=True)

    def scores(self, key: str, units: Sequence[Unit], label: str) -> dict[Unit, float] | None:
        entry = self.data.get(key)
        if not entry or entry["units"] != [(u.path, u.index) for u in units] or label not in entry["scores"]:
            return None
        return dict(zip(units, entry["scores"][label].tolist()))

    def put(self, key: str, units: Sequence[Unit], label: str, scores: dict[Unit, float]) -> None:
        if self.path is None:
            return
        names = [(u.path, u.index) for u in units]
        entry = self.data.get(key)
        if not entry or entry["units"] != names:
            entry = self.data[key] = {"units": names, "scores": {}}
        entry["scores"][label] = torch.tensor([scores[u] for u in units], dtype=torch.float64)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(self.data, tmp)
        os.replace(tmp, self.path)


def run_bench(bench: Bench, specs: list[CriterionSpec], folds: list[CriterionSpec], args: argparse.Namespace,
              config: MeterConfig, deadline: float, prior: dict[str, Any] | None = None,
              checkpoint: Callable[[dict[str, Any]], None] | None = None,
              store: ScoreStore | None = None) -> dict[str, Any]:
    """One model: the original, the scores, the rows fraction-major, the folding. `prior` is this
    model's entry of an earlier run's JSON (`--resume`): what it holds is kept (rows only where this
    run selects the same neurons), and only what is missing is computed; `checkpoint(out)` is
    called after every step."""
    started = time.perf_counter()
    model = bench.model
    prior = prior or {}
    store = store or ScoreStore(None)
    neuron_list = units_for(model, "neuron")
    specs_mlp = find_mlps(model)
    data = {k: v for k, v in bench.data.items() if k != "oracle_search"}
    if prior and prior.get("data") != data:
        raise SystemExit(f"--resume: the earlier {bench.key} run used other data ({prior.get('data')}): "
                         "give the same options")
    print(f"[{bench.key}] {bench.title}: {len(specs_mlp)} MLPs, {len(neuron_list)} neurons on {args.torch_device}"
          + (" (resuming)" if prior else ""), file=sys.stderr)
    fractions = sorted(set(prior.get("fractions", [])) | set(args.fractions))
    out: dict[str, Any] = {
        "title": bench.title, "n_mlps": len(specs_mlp), "n_neurons": len(neuron_list),
        "gated": any(s.gated for s in specs_mlp), "fractions": fractions,
        "data": data, "measures": bench.measures, "runs": dict(prior.get("runs", {})),
        "folding": prior.get("folding", {}), "criteria_failed": prior.get("criteria_failed", []),
        "timing": {**prior.get("timing", {}), "setup_s": args.setup_s.get(bench.key)},
    }
    for key in ("checks", "original", "calibration_tokens"):
        if key in prior:
            out[key] = prior[key]
    wall_before = float(prior.get("wall_s", 0.0))

    def progress() -> None:
        out["wall_s"] = wall_before + time.perf_counter() - started
        if checkpoint is not None:
            checkpoint(out)

    # The original: its own measures, FLOPs, and an absolute energy figure.
    if "original" not in out:
        t0 = time.perf_counter()
        out["original"] = original_record(bench, args, config)
        out["timing"]["original_s"] = time.perf_counter() - t0
    o = out["original"]
    print(f"  original: {o['fidelity']}  {o['energy']['per_inference_j']:.4g} J/inference "
          f"({o['energy']['provenance']}, {', '.join(o['energy']['backends'])})"
          + (" (from the earlier run)" if prior.get("original") else ""), file=sys.stderr)
    progress()

    # Score once per criterion on the original model (or take the earlier run's scores).
    all_scores: dict[str, dict[Unit, float]] = {}
    for spec in specs:
        earlier = out["runs"].get(spec.label)
        kept = store.scores(bench.key, neuron_list, spec.label)
        if earlier and not earlier.get("error") and kept is not None:
            all_scores[spec.label] = kept
            print(f"  {spec.label}: scores from the earlier run ({len(earlier.get('rows', []))} rows done)",
                  file=sys.stderr)
            continue
        try:
            scores, info = score(bench, spec, neuron_list)
        except (EnergyPruneError, TypeError, ValueError, RuntimeError) as error:
            out["runs"][spec.label] = {"criterion": spec.name, "options": spec.options, "family": spec.family,
                                       "error": f"{type(error).__name__}: {error}", "rows": []}
            print(f"  {spec.label}: FAILED to score ({error})", file=sys.stderr)
            progress()
            continue
        all_scores[spec.label] = scores
        store.put(bench.key, neuron_list, spec.label, scores)
        # Rows of an earlier run stay only where these scores select the same neurons (checked below).
        out["runs"][spec.label] = {**info, "rows": (earlier or {}).get("rows", [])}
        s = info["scores"]
        print(f"  {spec.label}: scored {s['units']} neurons in {info['score_s']:.1f} s "
              f"({s['pos_inf']} +inf, {s['neg_inf']} -inf)" + (f"; warnings: {info['warnings']}" if info["warnings"] else ""),
              file=sys.stderr)
        progress()

    # The selections, all from the original model's scores.
    selections: dict[float, dict[str, list[Unit]]] = defaultdict(dict)
    for label, scores in all_scores.items():
        for fraction in fractions:
            try:
                selections[fraction][label] = select(scores, fraction, "neuron")
            except EnergyPruneError as error:
                out["runs"][label].setdefault("select_errors", {})[str(fraction)] = f"{type(error).__name__}: {error}"
    out["overlap"] = {str(f): overlaps(sel) for f, sel in selections.items()}
    for label in all_scores:
        run = out["runs"][label]
        run["rows"] = [r for r in run.get("rows", []) if r["fraction"] in selections
                       and label in selections[r["fraction"]]
                       and r.get("selection") == _selection_hash(selections[r["fraction"]][label])]

    # A check of the benchmark's cached-reference metrics against the library, once per model.
    first = next(iter(selections.get(args.fractions[0], {}).values()), None)
    if first and not out.get("checks"):
        out["checks"] = {"metrics_vs_library_max_rel_diff": check_metrics(bench, first)}

    evaluator = Evaluator(bench, config, args.backend)
    for run in list(out["runs"].values()) + list(out["folding"].get("runs", {}).values()):
        for row in run.get("rows", []):
            evaluator.seed(row)
    pending = {_selection_hash(selections[f][label]) for f in args.fractions for label in all_scores
               if label in selections[f]} - set(evaluator.cache)
    row_s = compare_seconds(config) + ROW_OVERHEAD_S[(args.torch_device.type, bench.key)]
    left = deadline - time.perf_counter()
    print(f"  plan: {len(pending)} pruned models to measure (folding not counted), ~{row_s:.0f} s each = "
          f"~{len(pending) * row_s / 60:.1f} min; time budget left {left / 60:.1f} min"
          + (" (expect a cut: continue with --resume)" if len(pending) * row_s > left else ""), file=sys.stderr)

    # Evaluate: fraction-major, so a time budget cuts the large fractions of every criterion alike
    # and slow drifts of the shared machine fall on every criterion alike.
    cut = None
    for fraction in args.fractions:
        for label in all_scores:
            chosen = selections[fraction].get(label)
            if chosen is None or any(r["fraction"] == fraction for r in out["runs"][label]["rows"]):
                continue
            if time.perf_counter() > deadline:
                cut = fraction
                break
            row = {"fraction": fraction, "removed": len(chosen), **evaluator(chosen, f"-{fraction:.0%} neurons")}
            out["runs"][label]["rows"].append(row)
            out["runs"][label]["rows"].sort(key=lambda r: r["fraction"])
            _log_row(bench, label, f"{fraction:.0%}", row, started)
            progress()
        if cut is not None:
            print(f"  time budget spent: stopping at fraction {cut}", file=sys.stderr)
            break
    missing = [f for f in fractions for label in all_scores
               if label in selections[f] and not any(r["fraction"] == f for r in out["runs"][label]["rows"])]
    if missing:
        out["cut_by_time_budget_at_fraction"] = min(missing)
    else:
        out.pop("cut_by_time_budget_at_fraction", None)

    # NEPENTHE's own unit: folding whole MLP activations.
    try:
        fold_units = units_for(model, "activation")
    except EnergyPruneError as error:
        out["folding"] = {"applies": False, "reason": (
            f"{error}: every MLP of {bench.title} is gated (down(act(gate x) * up x)); with the activation "
            "replaced by the identity it is still a product of two linear maps, so fold_activation refuses it")}
        print(f"  folding: does not apply ({error})", file=sys.stderr)
    else:
        earlier_fold = out["folding"] if out["folding"].get("applies") else {}
        # This run's K, or the earlier run's where it was larger (or where this run folds nothing).
        k_max = max(args.fold_k, earlier_fold.get("k_max", 0)) if folds else earlier_fold.get("k_max", args.fold_k)
        k_max = min(k_max, len(fold_units))
        out["folding"] = {"applies": True, "units": len(fold_units), "k_max": k_max,
                          "runs": dict(earlier_fold.get("runs", {}))}
        for key in ("cut_by_time_budget_at_k",):
            if key in earlier_fold:
                out["folding"][key] = earlier_fold[key]
        for spec in folds:
            earlier = out["folding"]["runs"].get(spec.label)
            if earlier and not earlier.get("error") and earlier.get("order") is not None:
                print(f"  {spec.label}: folding order from the earlier run", file=sys.stderr)
                continue
            try:
                criterion = get_criterion(spec.name, **spec.options)
                t0 = time.perf_counter()
                scores = criterion.score(model, fold_units, bench.calibration)
                score_s = time.perf_counter() - t0
            except (EnergyPruneError, TypeError, ValueError, RuntimeError) as error:
                out["folding"]["runs"][spec.label] = {"criterion": spec.name, "family": spec.family,
                                                      "error": f"{type(error).__name__}: {error}", "rows": []}
                continue
            n_finite = sum(1 for v in scores.values() if math.isfinite(v))
            order = select(scores, n_finite, "activation") if n_finite else []  # lowest score first
            paths = [u.path for u in order]
            out["folding"]["runs"][spec.label] = {
                "criterion": spec.name, "options": spec.options, "family": spec.family, "repr": repr(criterion),
                "score_s": score_s, "scores": {u.path: (scores[u] if math.isfinite(scores[u]) else None) for u in fold_units},
                "order": paths,
                "rows": [r for r in (earlier or {}).get("rows", []) if r.get("folded") == paths[: r["k"]]]}
            stats = getattr(criterion, "last_stats", None)
            if stats:  # P(ON): a low-entropy layer may be mostly ON (foldable) or mostly OFF (not)
                out["folding"]["runs"][spec.label]["mean_p_on"] = {p: float(st.p.mean()) for p, st in stats.items()}
            print(f"  {spec.label}: folding order {paths}", file=sys.stderr)
            progress()
        fold_labels = [spec.label for spec in folds]
        fold_cut = None
        for k in range(1, out["folding"]["k_max"] + 1):
            for label in fold_labels:
                run = out["folding"]["runs"].get(label, {})
                if len(run.get("order", [])) < k or any(r["k"] == k for r in run["rows"]):
                    continue
                if time.perf_counter() > deadline:
                    fold_cut = k
                    break
                chosen = [u for u in fold_units if u.path in run["order"][:k]]
                row = {"k": k, "folded": run["order"][:k], **evaluator(chosen, f"{k} MLPs folded")}
                run["rows"].append(row)
                run["rows"].sort(key=lambda r: r["k"])
                _log_row(bench, label, f"k={k} folded", row, started)
                progress()
            if fold_cut is not None:
                break
        fold_missing = [k for run in out["folding"]["runs"].values() if run.get("order") is not None
                        for k in range(1, min(out["folding"]["k_max"], len(run["order"])) + 1)
                        if not any(r["k"] == k for r in run.get("rows", []))]
        if fold_missing:
            out["folding"]["cut_by_time_budget_at_k"] = min(fold_missing)
        else:
            out["folding"].pop("cut_by_time_budget_at_k", None)

    # Every row of this run's criteria and folding is there (gpu_prune_session.sh skips the model then).
    out["complete"] = not out.get("cut_by_time_budget_at_fraction") and not out["folding"].get("cut_by_time_budget_at_k")
    out["timing"]["rows"] = len(evaluator.cache)
    rows = [r for r in evaluator.cache.values() if "fidelity_s" in r]
    if rows:
        out["timing"]["row_fidelity_s_mean"] = statistics.fmean(r["fidelity_s"] for r in rows)
        out["timing"]["row_energy_s_mean"] = statistics.fmean(r["energy_s"] for r in rows)
    out["timing"]["score_s"] = {label: run.get("score_s") for label, run in out["runs"].items()}
    progress()
    return out


# ---- duration estimate ------------------------------------------------------------------------
#: The full run's defaults that the estimate scales to (kept equal to the argparse defaults; the
#: meter's window and repeats are the CPU's here, the device's own in `estimate_full`).
FULL_DEFAULTS = {"window_s": METER_DEFAULTS["cpu"]["window_s"], "repeats": int(METER_DEFAULTS["cpu"]["repeats"]),
                 "calibration_batches": 8, "fractions": [0.1, 0.2, 0.3, 0.4, 0.5], "fold_k": 4, "seeds": 3}
#: Scoring time of SmolLM2 over MiniLM's, per criterion, both with 8 calibration batches and 4096 MIPP
#: tokens, measured once on this machine (1 thread, load average 1-2): MiniLM mipp 33 s, thermodynamic
#: 10 s, nepenthe 6 s; SmolLM2 300 s, 44 s, 18 s. Other criteria (magnitude, random): < 1 s.
SMOLLM2_SCORING_FACTOR = {"mipp": 9.1, "thermodynamic": 4.2, "nepenthe": 3.1}
#: Criteria whose scoring time grows with the calibration data (MIPP's is dominated by the
#: elimination, whose cost depends on the widths only: not scaled).
DATA_BOUND = ("thermodynamic", "nepenthe")


def estimate_full(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Expected duration of the full run (defaults `FULL_DEFAULTS`), from this quick run's timings:

    * a row = building + held-out fidelity (this run's mean) + one `compare`, whose windows are
      rescaled: + (2 r + 1) w of the full config − the same of this run's (A B ... A: r + 1 A and
      r B windows; idle and warm-up unchanged). SmolLM2 rows: the block benchmark's recorded
      per-row times on this machine (prune.json: same held-out data, same meter config) when
      present, else MiniLM's × 1.6 (their ratio there).
    * scoring = this run's per-criterion times, × the calibration-batch ratio for `DATA_BOUND`
      criteria; SmolLM2's = MiniLM's × `SMOLLM2_SCORING_FACTOR` (measured once).
    """
    device_type = torch.device(data.get("torch_device", "cpu")).type
    defaults = {**FULL_DEFAULTS, "window_s": METER_DEFAULTS[device_type]["window_s"],
                "repeats": int(METER_DEFAULTS[device_type]["repeats"])}
    out: dict[str, Any] = {"models": {}, "assumptions": []}
    mini = data["models"].get("minilm")
    if mini is None or not mini["timing"].get("rows"):
        return {"error": "the estimate needs a MiniLM run with rows"}
    t = mini["timing"]
    cfg = data["meter_config"]
    extra_windows = ((2 * defaults["repeats"] + 1) * defaults["window_s"]
                     - (2 * cfg["repeats"] + 1) * cfg["window_s"])
    row_minilm = t["row_fidelity_s_mean"] + t["row_energy_s_mean"] + extra_windows
    batch_scale = defaults["calibration_batches"] / data["calibration_batches"]
    scoring: dict[str, float] = {}  # per registry name, MiniLM at the full calibration
    for label, run in mini["runs"].items():
        if run.get("score_s") is None or run.get("family") == "random":
            continue
        scale = batch_scale if run["criterion"] in DATA_BOUND else 1.0
        scoring[run["criterion"]] = scoring.get(run["criterion"], 0.0) + run["score_s"] * scale
    fold_scoring = sum(r.get("score_s", 0.0) for r in mini.get("folding", {}).get("runs", {}).values()
                       if r.get("family") != "random fold") * batch_scale
    # Rows: every non-random criterion this run scored, plus the full run's random seeds.
    n_specs = sum(1 for r in mini["runs"].values() if r.get("family") != "random") + defaults["seeds"]
    n_fold = (1 + defaults["seeds"]) * defaults["fold_k"] if mini.get("folding", {}).get("applies") else 0
    rows_minilm = n_specs * len(defaults["fractions"]) + n_fold
    setup_minilm = (t.get("setup_s") or 0.0) + (t.get("original_s") or 0.0) + extra_windows
    scoring_minilm = sum(scoring.values()) + fold_scoring
    out["models"]["minilm"] = {"rows": rows_minilm, "row_s": row_minilm, "scoring_s": scoring_minilm,
                               "setup_s": setup_minilm,
                               "total_s": setup_minilm + scoring_minilm + rows_minilm * row_minilm}
    out["assumptions"].append(f"MiniLM per-row time {row_minilm:.1f} s (this run's, windows rescaled)")
    row_smollm2 = None
    block = results_root() / data["device"] / "prune.json"
    if block.exists():
        try:
            blocks = load_json(block)
            rows = [r["eval_s"] for run in blocks["models"]["smollm2"]["runs"].values() for r in run.get("rows", [])
                    if "eval_s" in r and not r.get("shared_with_earlier_row")]
            if rows and blocks["meter_config"]["window_s"] == defaults["window_s"] \
                    and blocks["meter_config"]["repeats"] == defaults["repeats"]:
                row_smollm2 = statistics.median(rows)
                out["assumptions"].append(f"SmolLM2 per-row time {row_smollm2:.1f} s (median of {len(rows)} rows of "
                                          f"the block benchmark's {block.name})")
        except (KeyError, ValueError, OSError):
            row_smollm2 = None
    if row_smollm2 is None:
        row_smollm2 = 1.6 * row_minilm
        out["assumptions"].append("SmolLM2 per-row time 1.6 x MiniLM's (no block benchmark result to read)")
    rows_smollm2 = n_specs * len(defaults["fractions"])
    scoring_smollm2 = sum(v * SMOLLM2_SCORING_FACTOR.get(name, 8.0) for name, v in scoring.items())
    out["assumptions"].append("SmolLM2 scoring = MiniLM's x " + ", ".join(
        f"{k} {v}" for k, v in SMOLLM2_SCORING_FACTOR.items()) + " (measured once on the 2-vCPU CPU machine)")
    setup_smollm2 = 30.0 + row_smollm2  # loading, held-out references, and the original's measurement
    out["models"]["smollm2"] = {"rows": rows_smollm2, "row_s": row_smollm2, "scoring_s": scoring_smollm2,
                                "setup_s": setup_smollm2,
                                "total_s": setup_smollm2 + scoring_smollm2 + rows_smollm2 * row_smollm2}
    out["total_min"] = sum(m["total_s"] for m in out["models"].values()) / 60
    return out


# ---- the plan ---------------------------------------------------------------------------------
#: Scoring seconds per criterion with 8 calibration batches, by (device type, model): CPU, the
#: committed 2-vCPU run (prune_neurons.json); CUDA, unknown until a GPU run: the CPU's figures are
#: used, marked as such (MIPP's elimination is many small float64 steps: not obviously faster there).
SCORING_S = {("cpu", "smollm2"): {"mipp": 291.0, "thermodynamic": 38.0, "nepenthe": 18.0},
             ("cpu", "minilm"): {"mipp": 45.0, "thermodynamic": 14.0, "nepenthe": 8.0}}
#: A row's seconds beyond the meter (copy, FLOPs, held-out fidelity) and a model's setup (loading,
#: references, the original's measurement), by (device type, model); CUDA figures are guesses.
ROW_OVERHEAD_S = {("cpu", "smollm2"): 8.8, ("cpu", "minilm"): 5.1, ("cuda", "smollm2"): 1.5, ("cuda", "minilm"): 1.0}
SETUP_S = {("cpu", "smollm2"): 20.0, ("cpu", "minilm"): 15.0, ("cuda", "smollm2"): 60.0, ("cuda", "minilm"): 25.0}


def plan(models: Sequence[str], specs: Sequence[CriterionSpec], folds: Sequence[CriterionSpec],
         args: argparse.Namespace, config: MeterConfig) -> float:
    """Print the expected duration of this run per model; returns the total in seconds."""
    device_type = args.torch_device.type
    total = 0.0
    for key in models:
        row_s = compare_seconds(config) + ROW_OVERHEAD_S[(device_type, key)]
        rows = len(specs) * len(args.fractions)
        if key == "minilm" and folds:  # SmolLM2's MLPs are gated: no folding
            rows += sum(1 for s in folds) * args.fold_k
        known = SCORING_S.get((device_type, key)) or SCORING_S[("cpu", key)]
        scale = args.calibration_batches / 8
        scoring = sum(known.get(s.name, 1.0) * (scale if s.name != "mipp" else 1.0) for s in specs)
        scoring += sum(known.get("nepenthe", 1.0) * scale for s in folds if s.name == "nepenthe")
        setup = SETUP_S[(device_type, key)] + compare_seconds(config) / 2
        seconds = setup + scoring + rows * row_s
        total += seconds
        note = "" if (device_type, key) in SCORING_S else " (the CPU's scoring times: unknown on CUDA)"
        print(f"estimate [{key}] on {device_type}: setup ~{setup / 60:.1f} min + scoring ~{scoring / 60:.1f} min{note} "
              f"+ {rows} rows x ~{row_s:.0f} s = ~{seconds / 60:.1f} min", file=sys.stderr)
    print(f"estimate: ~{total / 60:.1f} min in all; time budget {args.budget_min:.1f} min"
          + (" (the rest needs more runs with --resume)" if total > args.budget_min * 60 else ""), file=sys.stderr)
    return total


# ---- main -------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: MiniLM only, fractions 10%% and 50%%, one random seed, 2 calibration "
                             "batches, short windows, written to a temporary folder; prints the full run's estimate")
    parser.add_argument("--models", nargs="*", choices=sorted(BENCHES), help="default: all")
    parser.add_argument("--fractions", type=float, nargs="*", default=FULL_DEFAULTS["fractions"],
                        help="fractions of every MLP's neurons removed")
    parser.add_argument("--fold-k", type=int, default=FULL_DEFAULTS["fold_k"],
                        help="NEPENTHE folding (foldable MLPs only): fold 1..K layers")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the random control")
    parser.add_argument("--criteria", nargs="*", help="only these row labels or registry names (e.g. mipp magnitude)")
    parser.add_argument("--no-fold", action="store_true", help="skip NEPENTHE's folding")
    parser.add_argument("--calibration-batches", type=int, default=FULL_DEFAULTS["calibration_batches"],
                        help="SmolLM2: batches of 4x128 tokens; MiniLM: batches of 16 documents (<= 128 tokens each)")
    parser.add_argument("--mipp-tokens", type=int, default=4096,
                        help="MIPP's token sample (its regression wants several tokens per neuron: >= 2 x 1537)")
    parser.add_argument("--eval-seqs", type=int, default=2, help="SmolLM2 held-out sequences of 256 tokens")
    add_session_options(parser, budget_min=60.0, json_name="prune_neurons.json")
    args = parser.parse_args()
    device = args.torch_device = resolve_device(args.device) if not args.plan else torch.device(args.device)
    if args.quick:
        args.models = args.models or ["minilm"]
        if args.fractions == FULL_DEFAULTS["fractions"]:
            args.fractions = [0.1, 0.5]
        args.fold_k = min(args.fold_k, 1)
        args.calibration_batches = min(args.calibration_batches, 2)
        args.seeds = args.seeds[:1]
        # Short windows for a smoke test; on a GPU no shorter than 10 ticks of its 100 ms counter.
        quick_window = 0.25 if device.type == "cpu" else 1.0
        args.window_s = min(args.window_s if args.window_s is not None else quick_window, quick_window)
    apply_meter_defaults(args, device)
    if any(not 0 < f < 1 for f in args.fractions):
        parser.error("fractions must lie in (0, 1)")
    models = args.models or ["smollm2", "minilm"]
    # The block benchmark's data builders read these; the oracle is not used here.
    args.oracle_seqs = 1
    args.k_smollm2 = args.k_minilm = 1
    config = prepare_run(args, device)
    specs, skipped = neuron_specs(args.seeds, args)
    folds = [] if args.no_fold else fold_specs(args.seeds)
    if args.criteria:
        def wanted(s: CriterionSpec) -> bool:
            return s.label in args.criteria or s.name in args.criteria or s.family in args.criteria
        specs = [s for s in specs if wanted(s)]
        folds = [s for s in folds if wanted(s) or s.family == "random fold"]
    if args.plan:
        plan(models, specs, folds, args, config)
        return 0
    session = Session.open(args, device, config, schema="energyprune.prune-neurons-benchmark/1",
                           json_name="prune_neurons.json", quick_prefix="energyprune-prune-neurons-quick-",
                           models=models, header={
        "method": {
            "pruning": "one-shot: each criterion scores every neuron of the ORIGINAL model once; fraction f removes, "
                       "in every MLP, the round(f x width) neurons of lowest finite score there "
                       "(energyprune.pruning.select(scores, f, 'neuron')), from the original model; every MLP "
                       "keeps the same width, so at equal f all criteria's models have the same size",
            "folding": "NEPENTHE's unit 'activation' (foldable, non-gated MLPs only): the k layers of lowest mean "
                       "ON/OFF entropy are folded (activation -> identity, the two linear maps -> one); "
                       "control: random folding orders",
            "oracle": ORACLE_NOTE,
            "energy": ENERGY_METHOD,
            "flops": "torch.utils.flop_counter.FlopCounterMode on the measurement inputs (2 per MAC)",
            "overlap": "for each fraction, the share of one criterion's removed neurons that another also removes "
                       "(two independent random choices share f on average)",
        },
        "calibration_batches": args.calibration_batches,
        "criteria_available": sorted(CRITERIA),
        "criteria_skipped": skipped,
    })
    if session.prior and session.prior.get("calibration_batches") != args.calibration_batches:
        raise SystemExit(f"--resume: the earlier run used {session.prior.get('calibration_batches')} calibration "
                         f"batches, this one {args.calibration_batches}: give the same options")
    store = ScoreStore(session.out_dir / "prune_neurons.scores.pt" if args.resume else None)
    plan(models, specs, folds, args, config)
    args.setup_s = {}
    for key in models:
        t0 = time.perf_counter()
        bench = BENCHES[key](args)
        args.setup_s[key] = time.perf_counter() - t0
        result = run_bench(bench, specs, folds, args, config, session.deadline, prior=session.data["models"].get(key),
                           checkpoint=lambda out, key=key: session.checkpoint(key, out), store=store)
        result["calibration_tokens"] = sum(int(b["attention_mask"].sum()) for b in bench.calibration)
        session.checkpoint(key, result)
        del bench
        session.release()
    if args.quick:
        session.data["estimate_full"] = estimate_full(session.data, args)
    session.finish(render)
    if args.quick:
        est = session.data["estimate_full"]
        if "error" in est:
            print(f"no estimate of the full run: {est['error']}", file=sys.stderr)
        else:
            parts = "; ".join(f"{k}: {m['rows']} rows x {m['row_s']:.0f} s + scoring {m['scoring_s'] / 60:.1f} min "
                              f"+ setup {m['setup_s'] / 60:.1f} min = {m['total_s'] / 60:.0f} min"
                              for k, m in est["models"].items())
            print(f"estimated full run (python benchmarks/prune_neurons_benchmark.py --device {args.device}): "
                  f"~{est['total_min']:.0f} min ({parts}). Assumptions: {'; '.join(est['assumptions'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
