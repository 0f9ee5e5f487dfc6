"""Block pruning of real pretrained models: criteria against the oracle, fidelity against measured energy.

Writes benchmarks/results/<device>/prune.json (the source of truth), prune.md and prune_<model>.png.

For each model (SmolLM2-135M-Instruct, 30 blocks; all-MiniLM-L6-v2, 6 blocks) and each block
criterion of `energyprune.pruning.criteria.CRITERIA` that scores whole blocks (entropy-block with
the knn and the bucket estimator, each with stage "all" and with the default "increase" rule;
cosine-block; magnitude; random with three seeds; any criterion registered since that takes
`unit_kind="block"`), plus the greedy ORACLE:

* the criterion scores the blocks ONCE, on the original model and the calibration data (one-shot);
  the pruned model with k blocks removed drops the k lowest finite scores, k = 1..K, all from the
  original model (cumulative by the one ranking, never re-scored). A score of +inf (protected, or
  outside the criterion's rule) is never removed, so a criterion may stop before K: recorded.
* the oracle removes, step by step, the block whose removal (on top of those already removed)
  keeps fidelity highest on the calibration data (greedy; the search skips blocks in place, checked
  once against the real surgery). It is scored on the same held-out data as every criterion.
* every pruned model: parameters, FLOPs of one inference (FlopCounterMode), held-out fidelity,
  latency, and energy per inference against the original by `energyprune.api.compare`
  (interleaved windows, backend "auto": where no counter is readable that is the ESTIMATED
  backend, and every row says so).

Held-out data is disjoint from calibration data: SmolLM2 calibrates on the first half of gensim's
lee_background corpus and is evaluated on its second half; MiniLM calibrates on lee_background
documents and is evaluated on the 50 lee.cor documents (embedding cosine against the original, and
the Pearson correlation with the human similarity scores of those documents).

    python benchmarks/prune_benchmark.py            # the full run (~20 min on 2 shared vCPUs)
    python benchmarks/prune_benchmark.py --quick    # MiniLM only, k <= 2, few batches (~1 min)
    python benchmarks/prune_report.py benchmarks/results/<device>/prune.json   # re-render only

EfficientNet-Lite0 is not benchmarked: see `EFFICIENTNET_NOTE`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_slug, results_dir  # noqa: E402
from prune_report import render  # noqa: E402

from energyprune import zoo  # noqa: E402
from energyprune.api import compare, measure  # noqa: E402
from energyprune.errors import EnergyPruneError  # noqa: E402
from energyprune.meter import MeterConfig  # noqa: E402
from energyprune.metrics import fidelity  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.pruning import CRITERIA, Unit, get_criterion, remove_units, select, units_for  # noqa: E402
from energyprune.pruning.discovery import find_block_stack  # noqa: E402
from energyprune.pruning.slicing import count_parameters  # noqa: E402

logger = logging.getLogger("prune_benchmark")

EFFICIENTNET_NOTE = (
    "EfficientNet-Lite0 is not benchmarked. Removing blocks is possible only for its shape-preserving "
    "MBConv blocks (input = output filters, stride 1), but (1) `units_for(model, 'block')` offers every "
    "block of `_blocks`, so the benchmark would have to filter units itself and every criterion would "
    "have to accept a partial unit list; (2) entropy-block and cosine-block cannot score it at all: "
    "`pruning.calibration` takes the LAST axis as the feature axis (the image width for NCHW maps, not "
    "the channels) and refuses a stack whose blocks change the number of 'token' rows (the strided "
    "blocks do). Library changes needed: a `feature_dim` (channel axis) option in "
    "`collect_block_states`, per-boundary token counts, and a `block_units(..., shape_preserving=True)` "
    "filter that `prune` and the criteria share. Magnitude, random and the oracle alone would not "
    "answer the question this benchmark asks (entropy vs cosine)."
)


# ---- the models -------------------------------------------------------------------------------
@dataclass
class Bench:
    """One model with its data, its evaluations and what a report needs to know about it."""

    key: str
    title: str
    model: nn.Module
    k_max: int
    calibration: list[Any]  # batches for the criteria
    oracle_batches: list[Any]  # the part of the calibration data the oracle's search evaluates on
    evaluate: Callable[[nn.Module], dict[str, float]]  # held-out measures of a pruned model
    objective: Callable[[nn.Module], float]  # the oracle's target on `oracle_batches` (higher = better)
    measure_inputs: dict[str, Any]  # one inference for FLOPs and energy
    measures: list[dict[str, Any]]  # columns: key, label, higher_is_better, primary
    data: dict[str, Any] = field(default_factory=dict)  # what the data are, for the report

    @property
    def n_blocks(self) -> int:
        stack = find_block_stack(self.model)
        assert stack is not None
        return len(stack)


class NextTokenReference:
    """Held-out next-token fidelity and perplexity of a causal LM, against the original's cached
    log-probabilities (one forward of the pruned model per batch, not two). Same definitions as
    `energyprune.metrics.fidelity.next_token_fidelity` and `perplexity` (checked once per run):
    exp(−KL) with KL averaged over the unmasked positions, top-1 agreement, exp of the mean NLL."""

    def __init__(self, original: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        self.batches = list(batches)
        with fidelity.evaluating(original):
            self.reference = [F.log_softmax(original(**b).logits.float(), dim=-1) for b in self.batches]

    def __call__(self, model: nn.Module, *, kl_only: bool = False) -> dict[str, float]:
        kl_sum = agree = n = 0.0
        nll_sum = n_nll = 0.0
        with fidelity.evaluating(model):
            for batch, log_p in zip(self.batches, self.reference):
                log_q = F.log_softmax(model(**batch).logits.float(), dim=-1)
                mask = batch["attention_mask"].bool()
                p = log_p.exp()
                kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1).clamp_min(0.0)
                kl_sum += float(kl[mask].double().sum())
                n += int(mask.sum())
                if kl_only:
                    continue
                agree += int((log_p.argmax(-1) == log_q.argmax(-1))[mask].sum())
                targets = batch["input_ids"][:, 1:]
                counted = mask[:, 1:] & mask[:, :-1]
                nll = -log_q[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                nll_sum += float(nll[counted].double().sum())
                n_nll += int(counted.sum())
        out = {"exp_neg_kl": math.exp(-kl_sum / n), "kl_nats": kl_sum / n}
        if not kl_only:
            out.update(top1_agreement=agree / n, perplexity=math.exp(nll_sum / n_nll), positions=int(n))
        return out


class EmbeddingReference:
    """Held-out embedding cosine against the original (mean pooling, clipped to [0, 1], as
    `fidelity.embedding_fidelity`), and optionally the Pearson correlation of the documents'
    pairwise cosines with human similarity scores (Lee et al. 2005: 50 documents, 1225 pairs)."""

    def __init__(self, original: nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                 human: torch.Tensor | None = None) -> None:
        self.batches = list(batches)
        self.human = human
        self.reference = self._embed(original)

    def _embed(self, model: nn.Module) -> torch.Tensor:
        out = []
        with fidelity.evaluating(model):
            for batch in self.batches:
                hidden = model(**batch).last_hidden_state
                out.append(F.normalize(fidelity.mean_pool(hidden, batch["attention_mask"]).double(), dim=-1))
        return torch.cat(out)

    def __call__(self, model: nn.Module, *, cosine_only: bool = False) -> dict[str, float]:
        emb = self._embed(model)
        out = {"embedding_cosine": float((emb * self.reference).sum(-1).clamp(0.0, 1.0).mean())}
        if self.human is not None and not cosine_only:
            out["lee_pearson"] = lee_pearson(emb, self.human)
        return out


def lee_pearson(embeddings: torch.Tensor, human: torch.Tensor) -> float:
    """Pearson r between the upper-triangle pairwise cosines and the human scores."""
    sims = embeddings @ embeddings.T
    i, j = torch.triu_indices(len(human), len(human), offset=1)
    a, b = sims[i, j].double(), human[i, j].double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def lee_human_scores() -> torch.Tensor:
    """The 50×50 human similarity matrix of lee.cor (upper triangle filled; gensim test data, latin-1)."""
    from gensim.test.utils import datapath

    rows = [[float(v) for v in line.split()] for line in
            Path(datapath("similarities0-1.txt")).read_bytes().decode("latin-1").splitlines() if line.strip()]
    return torch.tensor(rows, dtype=torch.float64)


def smollm2_bench(args: argparse.Namespace) -> Bench:
    model, tokenizer = zoo.load_smollm2()
    docs = zoo.text_corpus("lee_background")
    half = len(docs) // 2
    calibration = zoo.calibration_batches(tokenizer, docs[:half], seq_len=128, batch_size=4,
                                          n_batches=args.calibration_batches)
    for batch in calibration:
        batch["use_cache"] = False
    heldout = zoo.calibration_batches(tokenizer, docs[half:], seq_len=256, batch_size=args.eval_seqs, n_batches=1)
    heldout[0]["use_cache"] = False
    # The oracle searches on the first calibration rows only (k × blocks forwards).
    first = calibration[0]
    oracle = [{"input_ids": first["input_ids"][: args.oracle_seqs],
               "attention_mask": first["attention_mask"][: args.oracle_seqs], "use_cache": False}]
    reference = NextTokenReference(model, heldout)
    oracle_reference = NextTokenReference(model, oracle)
    ids = heldout[0]["input_ids"][:1, :128]
    return Bench(
        key="smollm2",
        title="SmolLM2-135M-Instruct",
        model=model,
        k_max=args.k_smollm2,
        calibration=calibration,
        oracle_batches=oracle,
        evaluate=reference,
        objective=lambda m: oracle_reference(m, kl_only=True)["exp_neg_kl"],
        measure_inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False},
        measures=[
            {"key": "exp_neg_kl", "label": "exp(−KL)", "higher_is_better": True, "primary": True},
            {"key": "top1_agreement", "label": "top-1 agreement", "higher_is_better": True},
            {"key": "perplexity", "label": "perplexity", "higher_is_better": False, "log": True},
        ],
        data={
            "calibration": f"lee_background documents 0-{half - 1}, packed: {len(calibration)} batches of "
                           f"4×128 tokens ({sum(b['input_ids'].numel() for b in calibration)} tokens)",
            "oracle_search": f"the first {args.oracle_seqs}×128 tokens of the calibration data; objective exp(−KL)",
            "heldout": f"lee_background documents {half}-{len(docs) - 1}, packed: "
                       f"{args.eval_seqs}×256 tokens",
            "measure_inputs": "1×128 held-out tokens, use_cache=False",
        },
    )


def minilm_bench(args: argparse.Namespace) -> Bench:
    model, tokenizer = zoo.load_minilm()
    background = zoo.text_corpus("lee_background")
    lee = zoo.text_corpus("lee")
    human = lee_human_scores()
    if len(lee) != len(human):
        raise RuntimeError(f"lee.cor has {len(lee)} documents but the similarity matrix {len(human)}")
    n_cal = args.calibration_batches * 16
    calibration = zoo.calibration_batches(tokenizer, background[:n_cal], seq_len=128, batch_size=16, pack=False)
    heldout = zoo.calibration_batches(tokenizer, lee, seq_len=256, batch_size=25, pack=False)
    oracle = calibration  # 6 blocks: the whole search is 6 + 5 + 4 + 3 forwards of the calibration set
    reference = EmbeddingReference(model, heldout, human)
    oracle_reference = EmbeddingReference(model, oracle)
    measure_batch = zoo.calibration_batches(tokenizer, lee[:8], seq_len=128, batch_size=8, pack=False)[0]
    return Bench(
        key="minilm",
        title="all-MiniLM-L6-v2",
        model=model,
        k_max=args.k_minilm,
        calibration=calibration,
        oracle_batches=oracle,
        evaluate=reference,
        objective=lambda m: oracle_reference(m, cosine_only=True)["embedding_cosine"],
        measure_inputs=dict(measure_batch),
        measures=[
            {"key": "embedding_cosine", "label": "embedding cosine", "higher_is_better": True, "primary": True},
            {"key": "lee_pearson", "label": "Lee Pearson r", "higher_is_better": True},
        ],
        data={
            "calibration": f"lee_background documents 0-{n_cal - 1}, one per row, truncated to 128 tokens "
                           f"({len(calibration)} batches of 16)",
            "oracle_search": "the whole calibration set; objective embedding cosine",
            "heldout": "the 50 lee.cor documents (disjoint from lee_background), truncated to 256 tokens; "
                       "Lee Pearson r against the human scores of their 1225 pairs",
            "measure_inputs": "8 lee.cor documents truncated to 128 tokens (one padded batch)",
        },
    )


BENCHES: dict[str, Callable[[argparse.Namespace], Bench]] = {"smollm2": smollm2_bench, "minilm": minilm_bench}


# ---- criteria ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CriterionSpec:
    label: str  # row name in the report
    name: str  # registry name
    options: dict[str, Any]
    family: str  # groups seeds of one criterion ("random")


def criterion_specs(seeds: Sequence[int]) -> tuple[list[CriterionSpec], list[dict[str, str]]]:
    """The block criteria to run: the known ones with their variants, then anything else the
    registry holds that accepts unit_kind="block". Returns (specs, skipped with the reason)."""
    specs: list[CriterionSpec] = []
    skipped: list[dict[str, str]] = []
    if "entropy-block" in CRITERIA:
        for estimator in ("knn", "bucket"):
            for stage in ("all", "increase"):
                specs.append(CriterionSpec(f"entropy-{estimator} ({stage})", "entropy-block",
                                           {"estimator": estimator, "stage": stage, "unit_kind": "block"},
                                           f"entropy-{estimator} ({stage})"))
    if "cosine-block" in CRITERIA:
        specs.append(CriterionSpec("cosine-block", "cosine-block", {"unit_kind": "block"}, "cosine-block"))
    if "magnitude" in CRITERIA:
        specs.append(CriterionSpec("magnitude", "magnitude", {"unit_kind": "block"}, "magnitude"))
    if "random" in CRITERIA:
        for seed in seeds:
            specs.append(CriterionSpec(f"random (seed {seed})", "random", {"unit_kind": "block", "seed": seed}, "random"))
    for name in sorted(CRITERIA):
        if name in ("entropy-block", "cosine-block", "magnitude", "random"):
            continue
        try:
            criterion = get_criterion(name, unit_kind="block")
        except (EnergyPruneError, TypeError, ValueError) as error:
            skipped.append({"criterion": name, "reason": f"does not score whole blocks: {error}"})
            continue
        if getattr(criterion, "unit_kind", None) != "block":
            skipped.append({"criterion": name, "reason": f"scores {getattr(criterion, 'unit_kind', '?')} units"})
            continue
        specs.append(CriterionSpec(name, name, {"unit_kind": "block"}, name))
    return specs, skipped


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def measuring_options(name: str, bench: Bench, config: MeterConfig, backend: str) -> dict[str, Any]:
    """Runtime options for a criterion that measures energy itself (energy-aware): the benchmark's
    short meter config and backend, and the oracle's objective as its quality measure."""
    parameters = inspect.signature(CRITERIA[name].__init__).parameters
    options: dict[str, Any] = {}
    if "config" in parameters:
        options["config"] = config
    if "backend" in parameters:
        options["backend"] = backend
    if "evaluate" in parameters:
        options["evaluate"] = bench.objective
    return options


def rank_blocks(bench: Bench, spec: CriterionSpec, config: MeterConfig, backend: str) -> dict[str, Any]:
    """Score the original model's blocks once; the ranking is the finite scores, lowest first.
    A criterion that measures energy per candidate (it takes a meter `config`) gets the short
    config, the oracle's objective and the oracle's batches (its measurement batch is the first)."""
    runtime = measuring_options(spec.name, bench, config, backend)
    criterion = get_criterion(spec.name, **spec.options, **runtime)
    units = units_for(bench.model, criterion.unit_kind)
    calibration = bench.oracle_batches if "config" in runtime else bench.calibration
    start = time.perf_counter()
    scores = criterion.score(bench.model, units, calibration)
    score_s = time.perf_counter() - start
    finite = [u for u in units if math.isfinite(scores[u])]
    ranking = [u.index for u in select(scores, len(finite), "block")] if finite else []
    out: dict[str, Any] = {
        "criterion": spec.name,
        "options": {**spec.options, **{k: (v if k == "backend" else type(v).__name__) for k, v in runtime.items()}},
        "repr": repr(criterion),
        "family": spec.family,
        "scores": [_finite_or_none(scores[u]) for u in units],  # null: +inf, never removed
        "ranking": ranking,
        "candidates": len(finite),
        "score_s": score_s,
    }
    details = getattr(criterion, "last_details", None)
    if details:
        out["details"] = {str(u.index): d.to_dict() for u, d in details.items() if hasattr(d, "to_dict")}
    profile = getattr(criterion, "last_profile", None)
    if profile is not None:
        out["entropy_profile"] = {
            "entropies_nats": list(profile.entropies),
            "delta_nats": list(profile.delta),
            "peak_boundary": profile.peak,
            "in_stage": list(profile.in_stage),
            "protected": list(profile.protected),
            "tokens_used": profile.tokens_used,
        }
    return out


# ---- the oracle -------------------------------------------------------------------------------
@contextlib.contextmanager
def blocks_skipped(model: nn.Module, drop: Sequence[int]) -> Iterator[None]:
    """The model with the blocks at `drop` taken out of its stack for the duration of the block
    (no copy: the oracle's search tries hundreds of removals). `config.num_hidden_layers` follows,
    `layer_idx` is not renumbered: valid for forwards without a KV cache only. The real surgery is
    `remove_blocks`; `check_skip_matches_surgery` compares the two once per run."""
    stack = find_block_stack(model)
    assert stack is not None
    blocks = stack.blocks
    saved = list(blocks)
    config = getattr(model, "config", None)
    depth = getattr(config, "num_hidden_layers", None)
    try:
        for index in sorted(set(drop), reverse=True):
            del blocks[index]
        if depth == len(saved):
            config.num_hidden_layers = len(blocks)
        yield
    finally:
        del blocks[:]
        blocks.extend(saved)
        if depth is not None:
            config.num_hidden_layers = depth


def check_skip_matches_surgery(bench: Bench, drop: Sequence[int]) -> float:
    """Max |difference| of the held-out measures between `blocks_skipped` and `remove_units`."""
    stack = find_block_stack(bench.model)
    assert stack is not None
    with blocks_skipped(bench.model, drop):
        skipped = bench.evaluate(bench.model)
    pruned, _ = remove_units(bench.model, [Unit("block", stack.block_path(i), i) for i in drop])
    real = bench.evaluate(pruned)
    diff = max(abs(skipped[k] - real[k]) / max(1.0, abs(real[k])) for k in real)
    if diff > 1e-4:
        raise RuntimeError(f"skipping blocks {list(drop)} in place disagrees with remove_blocks by {diff:g}: "
                           f"{skipped} vs {real}")
    return diff


def oracle_ranking(bench: Bench, k: int) -> dict[str, Any]:
    """Greedy: at each step remove the block whose removal keeps the calibration objective highest."""
    removed: list[int] = []
    steps = []
    start = time.perf_counter()
    for step in range(k):
        trials: dict[int, float] = {}
        for index in range(bench.n_blocks):
            if index in removed:
                continue
            with blocks_skipped(bench.model, removed + [index]):
                trials[index] = bench.objective(bench.model)
        best = max(trials, key=lambda i: (trials[i], -i))
        removed.append(best)
        steps.append({"step": step + 1, "removed": best, "calibration_objective": trials[best],
                      "trials": {str(i): v for i, v in trials.items()}})
        print(f"  oracle step {step + 1}: block {best} (calibration {trials[best]:.4f}) "
              f"[{time.perf_counter() - start:.0f} s]", file=sys.stderr)
    return {"criterion": "oracle", "options": {}, "family": "oracle", "ranking": removed, "candidates": bench.n_blocks,
            "score_s": time.perf_counter() - start, "steps": steps,
            "repr": "greedy oracle on the calibration objective"}


# ---- evaluation -------------------------------------------------------------------------------
def energy_record(comparison: Any, load_before: float) -> dict[str, Any]:
    a, b = comparison.a, comparison.b
    low, high = comparison.ratio_ci95
    return {
        "provenance": comparison.to_dict()["provenance"],
        "backends": list(b.backends),
        "ratio": comparison.ratio,
        "ratio_ci95": [low, high],
        "ratios": list(comparison.ratios),
        "original_j": a.per_inference_j,
        "pruned_j": b.per_inference_j,
        "pruned_ci95_j": list(b.ci95_j),
        "latency_original_s": a.latency_s["median"],
        "latency_s": b.latency_s["median"],
        "latency_ratio": b.latency_s["median"] / a.latency_s["median"],
        "windows": len(b.windows),
        # Other work on a shared machine shows here first: the 1-minute load average before and after.
        "loadavg_1min": [load_before, os.getloadavg()[0]],
        "stop_reason": comparison.stop_reason,
        "warnings": sorted(set(a.warnings) | set(b.warnings)),
    }


class Evaluator:
    """Builds, measures and evaluates pruned models; one evaluation per distinct set of removed blocks."""

    def __init__(self, bench: Bench, config: MeterConfig, backend: str) -> None:
        self.bench = bench
        self.config = config
        self.backend = backend
        self.cache: dict[frozenset[int], dict[str, Any]] = {}
        stack = find_block_stack(bench.model)
        assert stack is not None
        self.stack = stack

    def __call__(self, removed: Sequence[int]) -> dict[str, Any]:
        key = frozenset(removed)
        if key in self.cache:
            return {**self.cache[key], "shared_with_earlier_row": True}
        start = time.perf_counter()
        units = [Unit("block", self.stack.block_path(i), i) for i in sorted(removed)]
        pruned, record = remove_units(self.bench.model, units)
        row: dict[str, Any] = {
            "removed": sorted(removed),
            "params": count_parameters(pruned),
            "flops": count_flops(pruned, self.bench.measure_inputs),
            "fidelity": self.bench.evaluate(pruned),
        }
        load_before = os.getloadavg()[0]
        comparison = compare(self.bench.model, pruned, self.bench.measure_inputs, backend=self.backend,
                             config=self.config, labels=("original", f"-{len(removed)} blocks"))
        row["energy"] = energy_record(comparison, load_before)
        row["eval_s"] = time.perf_counter() - start
        del pruned, record, comparison
        gc.collect()
        self.cache[key] = row
        return row


def run_bench(bench: Bench, specs: list[CriterionSpec], args: argparse.Namespace, config: MeterConfig,
              deadline: float) -> dict[str, Any]:
    started = time.perf_counter()
    model = bench.model
    print(f"[{bench.key}] {bench.title}: {bench.n_blocks} blocks, k <= {bench.k_max}", file=sys.stderr)
    out: dict[str, Any] = {"title": bench.title, "n_blocks": bench.n_blocks, "k_max": bench.k_max,
                           "data": bench.data, "measures": bench.measures, "runs": {}}

    # Checks of the benchmark's own shortcuts against the library, once per model.
    stack = find_block_stack(model)
    assert stack is not None
    drop = [bench.n_blocks // 2, bench.n_blocks // 2 + 1]
    checks: dict[str, Any] = {"skip_vs_surgery_max_rel_diff": check_skip_matches_surgery(bench, drop)}
    pruned, _ = remove_units(model, [Unit("block", stack.block_path(i), i) for i in drop])
    mine = bench.evaluate(pruned)
    if bench.key == "smollm2":
        batches = bench.evaluate.batches  # type: ignore[attr-defined]
        lib = fidelity.next_token_fidelity(model, pruned, batches)
        theirs = {"exp_neg_kl": lib.exp_neg_kl, "top1_agreement": lib.top1_agreement,
                  "perplexity": fidelity.perplexity(pruned, batches)}
    else:
        theirs = {"embedding_cosine": fidelity.embedding_fidelity(model, pruned, bench.evaluate.batches)}  # type: ignore[attr-defined]
    checks["metrics_vs_library_max_rel_diff"] = max(abs(mine[k] - v) / max(1.0, abs(v)) for k, v in theirs.items())
    if checks["metrics_vs_library_max_rel_diff"] > 1e-4:
        raise RuntimeError(f"the benchmark's cached-reference metrics disagree with energyprune.metrics: {mine} vs {theirs}")
    del pruned
    out["checks"] = checks

    # The original: its own measures, FLOPs, and an absolute energy figure.
    m = measure(model, bench.measure_inputs, backend=args.backend, config=config, label=bench.key)
    out["original"] = {
        "params": count_parameters(model),
        "flops": count_flops(model, bench.measure_inputs),
        "fidelity": bench.evaluate(model),
        "energy": {"provenance": m.provenance.value, "backends": list(m.backends),
                   "per_inference_j": m.per_inference_j, "ci95_j": list(m.ci95_j),
                   "estimate_band_j": list(m.estimate_band_j) if m.estimate_band_j else None,
                   "latency_s": m.latency_s["median"], "warnings": list(m.warnings)},
    }
    print(f"  original: {out['original']['fidelity']}  {m.per_inference_j:.4g} J/inference ({m.provenance.value})",
          file=sys.stderr)

    evaluator = Evaluator(bench, config, args.backend)
    rankings: list[tuple[str, dict[str, Any]]] = []
    out["criteria_skipped"] = []
    for spec in specs:
        measures_energy = "config" in inspect.signature(CRITERIA[spec.name].__init__).parameters
        if measures_energy and bench.n_blocks > args.max_measured_blocks:
            out["criteria_skipped"].append({
                "criterion": spec.label,
                "reason": f"it measures one interleaved comparison per block: {bench.n_blocks} comparisons, about "
                          f"{bench.n_blocks * 12 / 60:.0f} min on this machine; run with --max-measured-blocks "
                          f"{bench.n_blocks} to include it"})
            print(f"  {spec.label}: skipped (one energy comparison per block, {bench.n_blocks} blocks)", file=sys.stderr)
            continue
        try:
            ranking = rank_blocks(bench, spec, config, args.backend)
        except (EnergyPruneError, TypeError, ValueError, RuntimeError) as error:
            out["runs"][spec.label] = {"criterion": spec.name, "options": spec.options, "family": spec.family,
                                       "error": f"{type(error).__name__}: {error}", "rows": []}
            print(f"  {spec.label}: FAILED to score ({error})", file=sys.stderr)
            continue
        rankings.append((spec.label, ranking))
        print(f"  {spec.label}: ranking {ranking['ranking'][:bench.k_max]} ({ranking['candidates']} candidates, "
              f"{ranking['score_s']:.1f} s)", file=sys.stderr)
    if not args.no_oracle:
        rankings.append(("oracle", oracle_ranking(bench, bench.k_max)))

    for label, ranking in rankings:
        rows = []
        order = ranking["ranking"]
        reachable = min(bench.k_max, len(order), bench.n_blocks - 1)
        for k in range(1, reachable + 1):
            if time.perf_counter() > deadline:
                ranking["cut_by_time_budget_at_k"] = k
                print(f"  {label}: time budget spent, stopping at k={k - 1}", file=sys.stderr)
                break
            row = {"k": k, **evaluator(order[:k])}
            rows.append(row)
            e = row["energy"]
            primary = next(m["key"] for m in bench.measures if m.get("primary"))
            print(f"  {label} k={k} blocks {row['removed']}: {primary} {row['fidelity'][primary]:.4f}, "
                  f"energy ratio {e['ratio']:.3f} [{e['ratio_ci95'][0]:.3f}, {e['ratio_ci95'][1]:.3f}] "
                  f"[{time.perf_counter() - started:.0f} s]", file=sys.stderr)
        ranking["rows"] = rows
        ranking["stopped_early"] = len(order) < bench.k_max
        if ranking["stopped_early"]:
            ranking["stop_note"] = (f"only {len(order)} of {bench.n_blocks} blocks have a finite score "
                                    f"(the rest are protected or outside the rule): stops at k={len(order)}")
        out["runs"][label] = ranking
    out["wall_s"] = time.perf_counter() - started
    return out


# ---- main -------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: MiniLM only, k <= 2, 2 calibration batches, written to a temporary folder")
    parser.add_argument("--models", nargs="*", choices=sorted(BENCHES), help="default: all")
    parser.add_argument("--k-smollm2", type=int, default=8)
    parser.add_argument("--k-minilm", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the random control")
    parser.add_argument("--criteria", nargs="*", help="only these row labels (e.g. cosine-block magnitude)")
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--max-measured-blocks", type=int, default=12,
                        help="run criteria that measure energy per block (energy-aware) only on models with at most this many blocks")
    parser.add_argument("--calibration-batches", type=int, default=2,
                        help="SmolLM2: batches of 4×128 tokens; MiniLM: batches of 16 documents")
    parser.add_argument("--oracle-seqs", type=int, default=1, help="SmolLM2: 128-token sequences the oracle searches on")
    parser.add_argument("--eval-seqs", type=int, default=2, help="SmolLM2 held-out sequences of 256 tokens")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--window-s", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=0.5)
    parser.add_argument("--min-warmup-s", type=float, default=0.2)
    parser.add_argument("--max-warmup-s", type=float, default=0.6)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared 2-vCPU machine two threads stall whenever the "
                             "other core is taken; measured 2x128-token forwards of 3.5-15 s with 2 threads against "
                             "1.2-2.7 s with 1 while another job ran)")
    parser.add_argument("--budget-min", type=float, default=30.0,
                        help="stop evaluating new rows after this many minutes (recorded in the JSON)")
    parser.add_argument("--out-dir", type=Path, help="default: benchmarks/results/<device>/ (quick: a temporary folder)")
    args = parser.parse_args()
    if args.quick:
        args.models = args.models or ["minilm"]
        args.k_smollm2 = min(args.k_smollm2, 2)
        args.k_minilm = min(args.k_minilm, 2)
        args.calibration_batches = min(args.calibration_batches, 1)
        args.seeds = args.seeds[:1]
    models = args.models or list(BENCHES)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The meter's "falling back to the ESTIMATED backend" note is kept in every row's warnings;
    # printing it for each of ~100 comparisons helps nobody.
    logging.getLogger("energyprune.api").setLevel(logging.ERROR)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    config = MeterConfig(window_s=args.window_s, repeats=args.repeats, precision=0.0, idle_s=args.idle_s,
                         min_warmup_s=args.min_warmup_s, max_warmup_s=args.max_warmup_s, keep_trace=False)
    specs, skipped = criterion_specs(args.seeds)
    if args.criteria:
        specs = [s for s in specs if s.label in args.criteria or s.name in args.criteria or s.family in args.criteria]
    started = time.perf_counter()
    deadline = started + args.budget_min * 60
    data: dict[str, Any] = {
        "schema": "energyprune.prune-benchmark/1",
        "device": device_slug("cpu"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(sys.argv),
        "quick": args.quick,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "meter_config": {"window_s": config.window_s, "repeats": config.repeats, "precision": config.precision,
                         "idle_s": config.idle_s, "min_warmup_s": config.min_warmup_s,
                         "max_warmup_s": config.max_warmup_s, "backend": args.backend},
        "method": {
            "pruning": "one-shot: each criterion scores the ORIGINAL model's blocks once; k blocks removed = "
                       "its k lowest finite scores, removed from the original (cumulative by one ranking); "
                       "+inf scores are never removed",
            "oracle": "greedy: step by step, the block whose removal keeps the calibration objective highest; "
                      "scored on held-out data like every criterion",
            "energy": "energyprune.api.compare(original, pruned): interleaved windows A B A B ... A; ratio = "
                      "median over B windows of B / mean of the A windows around it; interval: 95% Student t "
                      "of those ratios",
            "flops": "torch.utils.flop_counter.FlopCounterMode on the measurement inputs (2 per MAC)",
        },
        "criteria_available": sorted(CRITERIA),
        "criteria_skipped": skipped,
        "efficientnet": EFFICIENTNET_NOTE,
        "models": {},
    }
    for key in models:
        bench = BENCHES[key](args)
        data["models"][key] = run_bench(bench, specs, args, config, deadline)
        del bench
        gc.collect()
    data["wall_s"] = time.perf_counter() - started
    if args.out_dir:
        out_dir = args.out_dir
    elif args.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="energyprune-prune-quick-"))
    else:
        out_dir = results_dir("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = render(data, out_dir)
    print(f"wrote {', '.join(str(p) for p in paths)} in {data['wall_s'] / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
