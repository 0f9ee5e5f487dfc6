"""How the units of a grouped kind (neurons of MLPs, heads of attentions, channels of layers) are
ranked against each other: one rule for the one-shot `prune` and for every step of the budget loop.

| scope | ranks |
| --- | --- |
| "global" | every unit of the model together, after dividing each group's scores by the group's mean \\|score\\| (Torch-Pruning's "mean" normaliser), so a layer whose activations are small overall is not emptied for it |
| "global-raw" | every unit of the model together, on the scores as they are |
| "per-layer" | the same share of each group (every MLP keeps the same width, so a Hugging Face config can still describe the model; `select` only) |

Which of the first two is right depends on what a score means, so the criterion says it: a
criterion whose scores are in the same units in every layer sets `scores_compare_across_groups =
True` and is ranked raw; any other is normalised. Taylor is the first kind: its score estimates the
change of the loss when the unit goes, in nats wherever the unit sits, and normalising throws that
scale away. Activation is the second: raw mean |a| differs in scale across depth. Measured on
SmolLM2 (benchmarks/width_benchmark.py, held-out exp(-KL) at 25% of the MLP neurons): activation
0.444 normalised against 0.010 raw (one MLP emptied to 37 neurons); Taylor-FO 0.424 normalised
against 0.571 raw, and raw at least as good for Taylor at 10%, 25% and 40%.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from energyprune.errors import UsageError
from energyprune.pruning.base import Unit
from energyprune.pruning.kinds import KINDS

SCOPES = ("global", "global-raw", "per-layer")


def compares_across_groups(criterion: Any) -> bool:
    """Whether `criterion`'s scores are in the same units in every group (module note)."""
    return bool(getattr(criterion, "scores_compare_across_groups", False))


def default_scope(criterion: Any) -> str:
    """The scope a global ranking of `criterion`'s scores takes: "global-raw" where its scores
    compare across groups, else "global" (normalised)."""
    return "global-raw" if compares_across_groups(criterion) else "global"


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise UsageError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def normalised(scores: Mapping[Unit, float]) -> dict[Unit, float]:
    """Each unit's score divided by the mean |score| of the finite scores of its group (its path):
    order within a group unchanged, groups of different scale made comparable. Infinite and NaN
    scores, and groups whose mean is 0, are left as they are."""
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for unit, score in scores.items():
        if math.isfinite(score):
            totals[unit.path] += abs(score)
            counts[unit.path] += 1
    out = {}
    for unit, score in scores.items():
        mean = totals[unit.path] / counts[unit.path] if counts[unit.path] else 0.0
        out[unit] = score / mean if math.isfinite(score) and mean > 0 else score
    return out


def ranking_scores(scores: Mapping[Unit, float], kind: str, scope: str) -> Mapping[Unit, float]:
    """The scores a global ranking of `kind` sorts: normalised for a grouped kind under "global",
    as they are otherwise."""
    check_scope(scope)
    grouped = kind in KINDS and KINDS[kind].grouped
    return normalised(scores) if grouped and scope == "global" else scores
