"""`energyprune score`: per-unit scores of a criterion and the entropy profile across depth."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from torch import nn

from energyprune.models import LoadedModel, build_inputs
from energyprune.pruning.base import Batch
from energyprune.pruning.criteria import get_criterion
from energyprune.pruning.criteria.entropy_block import EntropyBlockCriterion
from energyprune.pruning.discovery import find_block_stack
from energyprune.pruning.prune import units_for

logger = logging.getLogger(__name__)


def calibration_for(loaded: LoadedModel, model: nn.Module, batch_size: int, seq_len: int | None,
                    n_batches: int, source: str, device: Any) -> tuple[list[Batch], str]:
    """Calibration batches and a description of where they came from.

    source "text": real text (gensim's Lee news corpus) through the model's own tokenizer, for a
    Hugging Face folder that ships one; "random": random inputs of the right shape; "auto": text
    where possible, else random — and the description says which."""
    if source in ("auto", "text") and loaded.kind == "huggingface":
        try:
            from transformers import AutoTokenizer

            from energyprune.zoo import calibration_batches, text_corpus

            tokenizer = AutoTokenizer.from_pretrained(Path(loaded.spec), local_files_only=True)
            texts = text_corpus("lee_background")
            batches = calibration_batches(tokenizer, texts, seq_len or 128, batch_size, n_batches)
            moved = [{k: v.to(device) for k, v in b.items()} for b in batches]
            return moved, f"text: gensim lee_background, {n_batches} x {batch_size} x {seq_len or 128} tokens"
        except Exception as error:  # no tokenizer in the folder, or gensim missing
            if source == "text":
                from energyprune.errors import UsageError

                raise UsageError(f"--calibration text needs a tokenizer in the model folder and gensim "
                                 f"(pip install gensim): {error}") from error
            logger.warning("no text calibration (%s): using random inputs", error)
    batches = [build_inputs(loaded, model, batch_size, seq_len, None, device, seed=i) for i in range(n_batches)]
    return batches, f"random inputs, {n_batches} batches of {batch_size}"


def score_model(model: nn.Module, criterion_name: str, calibration: list[Batch], unit_kind: str | None,
                estimator: str, **options: Any) -> dict[str, Any]:
    if unit_kind is not None:
        options["unit_kind"] = unit_kind
    if criterion_name == "entropy-block":
        options.setdefault("estimator", estimator)
    criterion = get_criterion(criterion_name, **options)
    units = units_for(model, criterion.unit_kind, calibration)
    scores = criterion.score(model, units, calibration)
    ranked = sorted((s, u) for u, s in scores.items() if math.isfinite(s))
    rank = {u: i + 1 for i, (_, u) in enumerate(ranked)}
    result: dict[str, Any] = {
        "schema": "energyprune.scores/1",
        "criterion": criterion_name,
        "criterion_repr": repr(criterion),
        "unit_kind": criterion.unit_kind,
        "convention": "the lowest score is removed first; inf = never (protected or outside the rule)",
        "scores": [
            {"kind": u.kind, "path": u.path, "index": u.index,
             "score": scores[u] if math.isfinite(scores[u]) else None, "removal_rank": rank.get(u)}
            for u in sorted(scores, key=lambda u: (u.path, u.index))
        ],
    }
    if find_block_stack(model) is not None:
        reuse = isinstance(criterion, EntropyBlockCriterion) and criterion.estimator == estimator
        if reuse and criterion.last_profile is not None:
            profile = criterion.last_profile  # the same calibration pass: do not run it twice
        else:
            profile = EntropyBlockCriterion(estimator=estimator).profile(model, calibration)
        result["entropy_profile"] = {
            "estimator": estimator,
            "unit": "nats",
            "entropies": list(profile.entropies),
            "delta": list(profile.delta),
            "peak_boundary": profile.peak,
            "increase_stage_blocks": list(profile.in_stage),
            "tokens_used": profile.tokens_used,
        }
    return result


def render_scores(result: dict[str, Any], limit: int = 40) -> str:
    lines = [f"criterion {result['criterion_repr']}: {result['convention']}", ""]
    rows = result["scores"]
    shown = rows if len(rows) <= limit else sorted(rows, key=lambda r: (r["removal_rank"] is None, r["removal_rank"] or 0))[:limit]
    lines.append(f"  {'unit':<34} {'score':>14} {'removed':>8}")
    for r in shown:
        score = "inf" if r["score"] is None else f"{r['score']:.6g}"
        order = "-" if r["removal_rank"] is None else f"#{r['removal_rank']}"
        name = f"{r['kind']} {r['path']}" + (f"[{r['index']}]" if r["kind"] == "neuron" else "")
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
