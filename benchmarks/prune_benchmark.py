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
  latency, and energy per inference against the original by `energyprune.measure.api.compare`
  (interleaved windows, backend "auto": where no counter is readable that is the ESTIMATED
  backend, and every row says so).

Held-out data is disjoint from calibration data: SmolLM2 calibrates on the first half of gensim's
lee_background corpus and is evaluated on its second half; MiniLM calibrates on lee_background
documents and is evaluated on the 50 lee.cor documents (embedding cosine against the original, and
the Pearson correlation with the human similarity scores of those documents).

    python benchmarks/prune_benchmark.py            # the full run (~25 min on 2 shared vCPUs)
    python benchmarks/prune_benchmark.py --quick    # MiniLM only, k <= 2, few batches (~2-4 min with energy-aware)
    python benchmarks/prune_benchmark.py --plan --device cuda --models smollm2   # estimate only
    python benchmarks/prune_benchmark.py --device cuda --models minilm --resume --budget-min 8
    python benchmarks/prune_report.py benchmarks/results/<device>/prune.json   # re-render only

`--device cuda` (or cuda:N) runs everything on that GPU: the models, every batch (calibration,
held-out, the energy inputs), and `compare` with backend "auto", which then reads the GPU's NVML
counter; results go to benchmarks/results/<GPU slug>/, windows default to 2 s (`common.METER_DEFAULTS`)
and `--threads` is left alone. Rows run k-major (k = 1 for every criterion, then k = 2, ...), so a
time budget cuts the largest k of every criterion alike; with `--resume` the JSON is rewritten after
every row and a later run with the same options continues it (split a model over several 10-minute
GPU calls: benchmarks/gpu_prune_session.sh).

EfficientNet-Lite0: see `EFFICIENTNET_NOTE` (it has its own script).
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

from prune_report import render  # noqa: E402

from energyprune.bench.session import (  # noqa: E402
    Session,
    add_session_options,
    apply_meter_defaults,
    prepare_run,
    resolve_device,
    load_json,
    results_root,
)
from energyprune.metrics.hardware_floor import device_slug  # noqa: E402
from energyprune.pruning.criteria import specs_for_kind  # noqa: E402
from energyprune.pruning.criterion_spec import CriterionSpec  # noqa: E402
from energyprune.torch_io import to_device  # noqa: E402

from energyprune.models import zoo  # noqa: E402
from energyprune.measure.api import compare, measure  # noqa: E402
from energyprune.errors import EnergyPruneError  # noqa: E402
from energyprune.measure.meter import MeterConfig  # noqa: E402
from energyprune.metrics import fidelity  # noqa: E402
from energyprune.metrics.flops import count_flops  # noqa: E402
from energyprune.pruning import CRITERIA, Unit, get_criterion, remove_units, select, units_for  # noqa: E402
from energyprune.pruning.surgery.discovery import find_block_stack  # noqa: E402
from energyprune.pruning.surgery.slicing import count_parameters  # noqa: E402

logger = logging.getLogger("prune_benchmark")

EFFICIENTNET_NOTE = (
    "EfficientNet-Lite0 has its own benchmark, benchmarks/prune_efficientnet_benchmark.py "
    "(prune_efficientnet.md): only its 9 shape-preserving MBConv blocks can be removed, its data are images, "
    "and its neurons are the expansion channels of the MBConv blocks."
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


class EmbeddingReference(fidelity.EmbeddingReference):
    """`metrics.fidelity.EmbeddingReference` (held-out embedding cosine against the original), and
    optionally the Pearson correlation of the documents' pairwise cosines with human similarity
    scores (Lee et al. 2005: 50 documents, 1225 pairs)."""

    def __init__(self, original: nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                 human: torch.Tensor | None = None) -> None:
        self.human = human
        super().__init__(original, batches)

    def __call__(self, model: nn.Module, *, cosine_only: bool = False) -> dict[str, float]:
        emb = self.embed(model)
        out = {"embedding_cosine": float((emb * self.reference).sum(-1).clamp(0.0, 1.0).mean())}
        if self.human is not None and not cosine_only:
            out["lee_pearson"] = lee_pearson(emb, self.human)
        return out


NextTokenReference = fidelity.NextTokenReference


def lee_pearson(embeddings: torch.Tensor, human: torch.Tensor) -> float:
    """Pearson r between the upper-triangle pairwise cosines and the human scores."""
    sims = embeddings @ embeddings.T
    i, j = torch.triu_indices(len(human), len(human), offset=1)
    a, b = sims[i, j].double(), human[i, j].double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def lee_human_scores() -> torch.Tensor:
    """The 50×50 human similarity matrix of lee.cor (upper triangle filled; gensim test data, latin-1).

    Read from gensim/test/test_data like `zoo.text_corpus`, located without importing gensim (whose
    import needs scipy and smart_open: the GPU machine gets gensim's files, not its needs)."""
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Lee similarity scores ship with gensim's test data: pip install gensim")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / "similarities0-1.txt"
    rows = [[float(v) for v in line.split()] for line in
            path.read_bytes().decode("latin-1").splitlines() if line.strip()]
    return torch.tensor(rows, dtype=torch.float64)


def smollm2_bench(args: argparse.Namespace) -> Bench:
    device = args.torch_device
    model, tokenizer = zoo.load_smollm2()
    model = model.to(device)
    docs = zoo.text_corpus("lee_background")
    half = len(docs) // 2
    calibration = to_device(zoo.calibration_batches(tokenizer, docs[:half], seq_len=128, batch_size=4,
                                                    n_batches=args.calibration_batches), device)
    for batch in calibration:
        batch["use_cache"] = False
    heldout = to_device(zoo.calibration_batches(tokenizer, docs[half:], seq_len=256, batch_size=args.eval_seqs,
                                                n_batches=1), device)
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
    device = args.torch_device
    model, tokenizer = zoo.load_minilm()
    model = model.to(device)
    background = zoo.text_corpus("lee_background")
    lee = zoo.text_corpus("lee")
    human = lee_human_scores()
    if len(lee) != len(human):
        raise RuntimeError(f"lee.cor has {len(lee)} documents but the similarity matrix {len(human)}")
    n_cal = args.calibration_batches * 16
    calibration = to_device(zoo.calibration_batches(tokenizer, background[:n_cal], seq_len=128, batch_size=16,
                                                    pack=False), device)
    heldout = to_device(zoo.calibration_batches(tokenizer, lee, seq_len=256, batch_size=25, pack=False), device)
    oracle = calibration  # 6 blocks: the whole search is 6 + 5 + 4 + 3 forwards of the calibration set
    reference = EmbeddingReference(model, heldout, human)
    oracle_reference = EmbeddingReference(model, oracle)
    measure_batch = to_device(zoo.calibration_batches(tokenizer, lee[:8], seq_len=128, batch_size=8, pack=False)[0],
                              device)
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


#: How every energy figure of the benchmarks is taken (the JSON says it beside the figures).
ENERGY_METHOD = ("energyprune.measure.api.compare(original, pruned): interleaved windows A B A B ... A; ratio = "
                 "median over B windows of B / mean of the A windows around it; interval: the order-statistic "
                 "95% interval of that median")

BENCHES: dict[str, Callable[[argparse.Namespace], Bench]] = {"smollm2": smollm2_bench, "minilm": minilm_bench}


# ---- criteria ---------------------------------------------------------------------------------
def criterion_specs(seeds: Sequence[int]) -> tuple[list[CriterionSpec], list[dict[str, str]]]:
    """The block criteria to run: the known ones with their variants, then anything else the
    registry holds that accepts unit_kind="block". Returns (specs, skipped with the reason)."""
    entropy = [CriterionSpec("entropy-block", {"estimator": e, "stage": st, "unit_kind": "block"},
                             row=f"entropy-{e} ({st})") for e in ("knn", "bucket") for st in ("all", "increase")]
    known = {
        "entropy-block": entropy,
        "cosine-block": [CriterionSpec("cosine-block", {"unit_kind": "block"}, row="cosine-block")],
        "magnitude": [CriterionSpec("magnitude", {"unit_kind": "block"}, row="magnitude")],
        "random": [CriterionSpec("random", {"unit_kind": "block", "seed": s}, row=f"random (seed {s})")
                   for s in seeds],
    }
    return specs_for_kind("block", known)


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
    calibration = bench.oracle_batches if "config" in runtime else bench.calibration
    units = units_for(bench.model, criterion.unit_kind, calibration)
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

    def seed(self, row: dict[str, Any]) -> None:
        """Take a row measured by an earlier run (`--resume`) as the evaluation of its blocks."""
        key = frozenset(row["removed"])
        if key not in self.cache:
            self.cache[key] = {k: v for k, v in row.items() if k not in ("k", "shared_with_earlier_row")}

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


def _rows_matching(rows: Sequence[dict[str, Any]], ranking: Sequence[int]) -> list[dict[str, Any]]:
    """The rows of an earlier run that a (re)computed ranking still produces: same k, same blocks."""
    return [r for r in rows if sorted(ranking[: r["k"]]) == sorted(r["removed"])]


def _reachable(bench: Bench, ranking: dict[str, Any]) -> int:
    return min(bench.k_max, len(ranking["ranking"]), bench.n_blocks - 1)


def run_bench(bench: Bench, specs: list[CriterionSpec], args: argparse.Namespace, config: MeterConfig,
              deadline: float, prior: dict[str, Any] | None = None,
              checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """One model: checks, the original, the rankings, then the rows k-major. `prior` is this
    model's entry of an earlier run's JSON (`--resume`): its checks, original, rankings and rows are
    kept, and only what is missing is computed; `checkpoint(out)` is called after every step."""
    started = time.perf_counter()
    model = bench.model
    prior = prior or {}
    if prior and (prior.get("data") != bench.data or prior.get("k_max", bench.k_max) > bench.k_max):
        raise SystemExit(f"--resume: the earlier {bench.key} run used other data or a larger k "
                         f"({prior.get('data')}, k <= {prior.get('k_max')}): give the same options")
    print(f"[{bench.key}] {bench.title}: {bench.n_blocks} blocks, k <= {bench.k_max} on {args.torch_device}"
          + (" (resuming)" if prior else ""), file=sys.stderr)
    out: dict[str, Any] = {"title": bench.title, "n_blocks": bench.n_blocks, "k_max": bench.k_max,
                           "data": bench.data, "measures": bench.measures,
                           "runs": {label: run for label, run in prior.get("runs", {}).items()}}
    wall_before = float(prior.get("wall_s", 0.0))

    def progress() -> None:
        out["wall_s"] = wall_before + time.perf_counter() - started
        if checkpoint is not None:
            checkpoint(out)

    # Checks of the benchmark's own shortcuts against the library, once per model.
    stack = find_block_stack(model)
    assert stack is not None
    if prior.get("checks"):
        out["checks"] = prior["checks"]
    else:
        drop = [bench.n_blocks // 2, bench.n_blocks // 2 + 1]
        checks: dict[str, Any] = {"skip_vs_surgery_max_rel_diff": check_skip_matches_surgery(bench, drop)}
        t0 = time.perf_counter()
        pruned, _ = remove_units(model, [Unit("block", stack.block_path(i), i) for i in drop])
        mine = bench.evaluate(pruned)
        checks["row_overhead_s"] = time.perf_counter() - t0  # a row's surgery + held-out fidelity, for the plan
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
    if prior.get("original"):
        out["original"] = prior["original"]
        print(f"  original: {out['original']['fidelity']} (from the earlier run)", file=sys.stderr)
    else:
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
        print(f"  original: {out['original']['fidelity']}  {m.per_inference_j:.4g} J/inference ({m.provenance.value}, "
              f"{', '.join(m.backends)})", file=sys.stderr)
    progress()

    evaluator = Evaluator(bench, config, args.backend)
    for run in out["runs"].values():
        for row in run.get("rows", []):
            evaluator.seed(row)
    rankings: list[tuple[str, dict[str, Any]]] = []
    skipped = {s["criterion"]: s for s in prior.get("criteria_skipped", [])}
    for spec in specs:
        measures_energy = "config" in inspect.signature(CRITERIA[spec.name].__init__).parameters
        if measures_energy and bench.n_blocks > args.max_measured_blocks:
            skipped[spec.label] = {
                "criterion": spec.label,
                "reason": f"it measures one interleaved comparison per block: {bench.n_blocks} comparisons, about "
                          f"{bench.n_blocks * compare_seconds(config) / 60:.0f} min with this meter config; run with "
                          f"--max-measured-blocks {bench.n_blocks} to include it"}
            print(f"  {spec.label}: skipped (one energy comparison per block, {bench.n_blocks} blocks)", file=sys.stderr)
            continue
        skipped.pop(spec.label, None)
        earlier = out["runs"].get(spec.label)
        if earlier and not earlier.get("error") and "ranking" in earlier:
            earlier.setdefault("rows", [])
            rankings.append((spec.label, earlier))
            print(f"  {spec.label}: ranking {earlier['ranking'][:bench.k_max]} (from the earlier run, "
                  f"{len(earlier['rows'])} rows done)", file=sys.stderr)
            continue
        try:
            ranking = rank_blocks(bench, spec, config, args.backend)
        except (EnergyPruneError, TypeError, ValueError, RuntimeError) as error:
            out["runs"][spec.label] = {"criterion": spec.name, "options": spec.options, "family": spec.family,
                                       "error": f"{type(error).__name__}: {error}", "rows": []}
            print(f"  {spec.label}: FAILED to score ({error})", file=sys.stderr)
            progress()
            continue
        ranking["rows"] = _rows_matching((earlier or {}).get("rows", []), ranking["ranking"])
        out["runs"][spec.label] = ranking
        rankings.append((spec.label, ranking))
        print(f"  {spec.label}: ranking {ranking['ranking'][:bench.k_max]} ({ranking['candidates']} candidates, "
              f"{ranking['score_s']:.1f} s)", file=sys.stderr)
        progress()
    out["criteria_skipped"] = list(skipped.values())
    if not args.no_oracle:
        earlier = out["runs"].get("oracle")
        if earlier and len(earlier.get("ranking", [])) >= min(bench.k_max, bench.n_blocks - 1):
            earlier.setdefault("rows", [])
            rankings.append(("oracle", earlier))
            print(f"  oracle: ranking {earlier['ranking']} (from the earlier run)", file=sys.stderr)
        else:
            oracle = oracle_ranking(bench, bench.k_max)
            oracle["rows"] = _rows_matching((earlier or {}).get("rows", []), oracle["ranking"])
            out["runs"]["oracle"] = oracle
            rankings.append(("oracle", oracle))
            progress()

    # The plan: distinct pruned models still to measure, and what they cost.
    pending = {frozenset(r["ranking"][:k]) for _, r in rankings for k in range(1, _reachable(bench, r) + 1)
               if not any(row["k"] == k for row in r["rows"])} - set(evaluator.cache)
    row_s = compare_seconds(config) + max(float(out["checks"].get("row_overhead_s", 0.0)),
                                          ROW_OVERHEAD_S[(args.torch_device.type, bench.key)])
    left = deadline - time.perf_counter()
    print(f"  plan: {len(pending)} pruned models to measure, ~{row_s:.0f} s each = ~{len(pending) * row_s / 60:.1f} min; "
          f"time budget left {left / 60:.1f} min" + (" (expect a cut: continue with --resume)"
                                                     if len(pending) * row_s > left else ""), file=sys.stderr)

    # Rows, k-major: every criterion at k = 1, then at k = 2, ... so that a time budget cuts the
    # largest k of every criterion alike, and slow drifts of the machine fall on all alike.
    primary = next(m["key"] for m in bench.measures if m.get("primary"))
    cut = None
    for k in range(1, bench.k_max + 1):
        for label, ranking in rankings:
            if k > _reachable(bench, ranking) or any(row["k"] == k for row in ranking["rows"]):
                continue
            if time.perf_counter() > deadline:
                cut = k
                break
            row = {"k": k, **evaluator(ranking["ranking"][:k])}
            ranking["rows"].append(row)
            ranking["rows"].sort(key=lambda r: r["k"])
            e = row["energy"]
            print(f"  {label} k={k} blocks {row['removed']}: {primary} {row['fidelity'][primary]:.4f}, "
                  f"energy ratio {e['ratio']:.3f} [{e['ratio_ci95'][0]:.3f}, {e['ratio_ci95'][1]:.3f}] "
                  f"[{time.perf_counter() - started:.0f} s]", file=sys.stderr)
            progress()
        if cut is not None:
            print(f"  time budget spent: stopping at k={cut}", file=sys.stderr)
            break
    out["complete"] = True  # every ranking of this run's criteria has its rows (gpu_prune_session.sh skips it then)
    for label, ranking in rankings:
        order = ranking["ranking"]
        done = {row["k"] for row in ranking["rows"]}
        missing = [k for k in range(1, _reachable(bench, ranking) + 1) if k not in done]
        if missing:
            ranking["cut_by_time_budget_at_k"] = missing[0]
            out["complete"] = False
        else:
            ranking.pop("cut_by_time_budget_at_k", None)
        ranking["stopped_early"] = len(order) < bench.k_max
        if ranking["stopped_early"]:
            ranking["stop_note"] = (f"only {len(order)} of {bench.n_blocks} blocks have a finite score "
                                    f"(the rest are protected or outside the rule): stops at k={len(order)}")
    progress()
    return out


# ---- the plan ---------------------------------------------------------------------------------
#: Seconds beyond the meter's windows, by (device type, model): a row's copy, FLOP count and held-out
#: fidelity; a model's setup (loading, references, checks); the scoring of the data-driven criteria
#: and the oracle (k=8 for SmolLM2, 4 for MiniLM). CPU: the committed 2-vCPU run (prune.json).
#: CUDA: guesses until a GPU run replaces them (the run itself prints the measured row overhead).
ROW_OVERHEAD_S = {("cpu", "smollm2"): 8.5, ("cpu", "minilm"): 3.5, ("cuda", "smollm2"): 1.5, ("cuda", "minilm"): 1.0}
SETUP_S = {("cpu", "smollm2"): 45.0, ("cpu", "minilm"): 20.0, ("cuda", "smollm2"): 60.0, ("cuda", "minilm"): 25.0}
SCORING_S = {("cpu", "smollm2"): 140.0, ("cpu", "minilm"): 25.0, ("cuda", "smollm2"): 20.0, ("cuda", "minilm"): 5.0}
BLOCKS = {"smollm2": 30, "minilm": 6}


def compare_seconds(config: MeterConfig) -> float:
    """One `compare`: idle, two warm-ups, 2r + 1 interleaved windows (each a little over window_s)."""
    return config.idle_s + 2 * (config.min_warmup_s + 0.1) + (2 * config.repeats + 1) * config.window_s * 1.03


def expected_rows(key: str, labels: Sequence[str], k_max: int, slug: str) -> tuple[int, str]:
    """Distinct pruned models a run will measure: counted from an earlier full run's rankings where
    there is one (this device's results, else the CPU's: the rankings barely depend on the device),
    else the upper bound (every criterion × k)."""
    for folder in [results_root() / slug] + sorted(p for p in results_root().glob("*") if p.name != slug):
        path = folder / "prune.json"
        if not path.exists():
            continue
        try:
            runs = load_json(path)["models"][key]["runs"]
        except (KeyError, ValueError, OSError):
            continue
        sets: set[frozenset[int]] = set()
        unknown = 0
        for label in labels:
            rows = {r["k"]: r for r in runs.get(label, {}).get("rows", [])}
            for k in range(1, k_max + 1):
                if k in rows:
                    sets.add(frozenset(rows[k]["removed"]))
                elif label not in runs or runs[label].get("cut_by_time_budget_at_k"):
                    unknown += 1
        return len(sets) + unknown, f"counted from {path.relative_to(results_root().parent)}"
    return len(labels) * k_max, "upper bound: every criterion x k"


def plan(models: Sequence[str], specs: Sequence[CriterionSpec], args: argparse.Namespace,
         config: MeterConfig, slug: str) -> float:
    """Print the expected duration of this run per model; returns the total in seconds."""
    device_type = args.torch_device.type
    total = 0.0
    for key in models:
        k_max = args.k_smollm2 if key == "smollm2" else args.k_minilm
        k_max = min(k_max, BLOCKS[key] - 1)
        labels = [s.label for s in specs if not ("config" in inspect.signature(CRITERIA[s.name].__init__).parameters
                                                 and BLOCKS[key] > args.max_measured_blocks)]
        measured = [s for s in specs if "config" in inspect.signature(CRITERIA[s.name].__init__).parameters
                    and BLOCKS[key] <= args.max_measured_blocks]
        if not args.no_oracle:
            labels.append("oracle")
        rows, source = expected_rows(key, labels, k_max, slug)
        row_s = compare_seconds(config) + ROW_OVERHEAD_S[(device_type, key)]
        scoring = SCORING_S[(device_type, key)] + len(measured) * (BLOCKS[key] + 0.5) * compare_seconds(config)
        setup = SETUP_S[(device_type, key)] + compare_seconds(config) / 2
        seconds = setup + scoring + rows * row_s
        total += seconds
        print(f"estimate [{key}] on {device_type}: setup ~{setup / 60:.1f} min + scoring ~{scoring / 60:.1f} min "
              f"+ {rows} rows ({source}) x ~{row_s:.0f} s = ~{seconds / 60:.1f} min", file=sys.stderr)
    print(f"estimate: ~{total / 60:.1f} min in all; time budget {args.budget_min:.1f} min"
          + (" (the rest needs more runs with --resume)" if total > args.budget_min * 60 else ""), file=sys.stderr)
    return total


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
    add_session_options(parser, budget_min=30.0, json_name="prune.json")
    args = parser.parse_args()
    if args.quick:
        args.models = args.models or ["minilm"]
        args.k_smollm2 = min(args.k_smollm2, 2)
        args.k_minilm = min(args.k_minilm, 2)
        args.calibration_batches = min(args.calibration_batches, 1)
        args.seeds = args.seeds[:1]
    models = args.models or list(BENCHES)
    device = args.torch_device = resolve_device(args.device) if not args.plan else torch.device(args.device)
    apply_meter_defaults(args, device)
    config = prepare_run(args, device)
    specs, skipped = criterion_specs(args.seeds)
    if args.criteria:
        specs = [s for s in specs if s.label in args.criteria or s.name in args.criteria or s.family in args.criteria]
    if args.plan:
        slug = device_slug(device) if device.type == "cpu" or torch.cuda.is_available() else "cuda"
        plan(models, specs, args, config, slug)
        return 0
    session = Session.open(args, device, config, schema="energyprune.prune-benchmark/1", json_name="prune.json",
                           quick_prefix="energyprune-prune-quick-", models=models, header={
        "method": {
            "pruning": "one-shot: each criterion scores the ORIGINAL model's blocks once; k blocks removed = "
                       "its k lowest finite scores, removed from the original (cumulative by one ranking); "
                       "+inf scores are never removed",
            "oracle": "greedy: step by step, the block whose removal keeps the calibration objective highest; "
                      "scored on held-out data like every criterion",
            "energy": ENERGY_METHOD,
            "flops": "torch.utils.flop_counter.FlopCounterMode on the measurement inputs (2 per MAC)",
        },
        "criteria_available": sorted(CRITERIA),
        "criteria_skipped": skipped,
        "efficientnet": EFFICIENTNET_NOTE,
    })
    plan(models, specs, args, config, session.data["device"])
    for key in models:
        bench = BENCHES[key](args)
        result = run_bench(bench, specs, args, config, session.deadline, prior=session.data["models"].get(key),
                           checkpoint=lambda out, key=key: session.checkpoint(key, out))
        session.checkpoint(key, result)
        del bench
        session.release()
    session.finish(render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
