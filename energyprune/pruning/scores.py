"""Per-unit scores of a criterion and the entropy profile across depth (`energyprune score`),
as a JSON-able dict of schema `energyprune.scores/1`."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from energyprune.pruning.base import Batch
from energyprune.pruning.criteria import get_criterion
from energyprune.pruning.criteria.entropy_block import EntropyBlockCriterion
from energyprune.pruning.surgery.discovery import find_block_stack
from energyprune.pruning.kinds import units_for


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
