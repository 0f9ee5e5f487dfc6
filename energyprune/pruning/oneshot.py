"""`prune(model, criterion, amount)`: score the units a criterion knows, remove the lowest.

The one-shot counterpart of the energy-budgeted loop: it scores once, removes `amount` units with
the surgery matching their kind, and returns the pruned copy with its record and the scores.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Criterion, Unit
from energyprune.pruning.criteria import get_criterion
from energyprune.pruning.kinds import KINDS, remove_units, units_for
from energyprune.pruning.ranking import check_scope, default_scope, ranking_scores
from energyprune.pruning.surgery.hidden import output_width_warning
from energyprune.pruning.surgery.record import PruneRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneOutcome:
    """A pruned copy, what was removed and why. Unpacks as `(model, record)`."""

    model: nn.Module
    record: PruneRecord
    scores: Mapping[Unit, float]
    removed: tuple[Unit, ...]

    def __iter__(self):  # `pruned, record = prune(...)`
        return iter((self.model, self.record))


def _removable(score: float) -> bool:
    """-inf means "remove first" (thermodynamic's inert units); +inf and NaN are never removed."""
    return score != math.inf and not math.isnan(score)


def select(scores: Mapping[Unit, float], amount: int | float, kind: str, *, scope: str = "global") -> list[Unit]:
    """The units to remove: the `amount` lowest scores, +inf (protected) and NaN excluded, within
    what the surgery lets go (one unit of each MLP / attention / layer stays). A float in (0, 1)
    is a fraction of all units; with `scope="per-layer"`, of each group's units. Grouped kinds are
    ranked on `normalised` scores with `scope="global"`, as they are with "global-raw"
    (`pruning.ranking`; `prune` picks the criterion's own)."""
    check_scope(scope)
    finite = sorted((s, u) for u, s in scores.items() if _removable(s))
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
        raise UsageError(f"amount must be a positive count or a fraction in (0, 1), got {amount!r}")
    if isinstance(amount, float) and amount >= 1:
        raise UsageError(f"a fractional amount must lie in (0, 1), got {amount}")
    grouped = kind in KINDS and KINDS[kind].grouped
    if grouped and isinstance(amount, float) and scope == "per-layer":
        per_path: dict[str, list[tuple[float, Unit]]] = defaultdict(list)
        sizes: dict[str, int] = defaultdict(int)
        for unit, score in scores.items():
            sizes[unit.path] += 1
            if _removable(score):
                per_path[unit.path].append((score, unit))
        chosen = []
        for path, size in sizes.items():
            count = int(round(amount * size))
            ranked = sorted(per_path[path])
            if count > len(ranked):
                raise UsageError(f"{path}: {count} {kind} units asked but only {len(ranked)} are candidates")
            count = min(count, size - 1)  # a layer never loses its last unit
            chosen += [u for _, u in ranked[:count]]
        return chosen
    count = amount if isinstance(amount, int) else int(round(amount * len(scores)))
    if count < 1:
        raise UsageError(f"amount {amount} of {len(scores)} units removes nothing")
    if grouped and scope == "global":
        finite = sorted((s, u) for u, s in ranking_scores(scores, kind, scope).items() if _removable(s))
    ranked = [u for _, u in finite]
    candidates = KINDS[kind].eligible(ranked, list(scores)) if grouped else ranked
    if count > len(candidates):
        protected = len(scores) - len(finite)
        kept = len(finite) - len(candidates)
        raise UsageError(
            f"{count} {kind} units asked, but only {len(candidates)} of {len(scores)} are candidates "
            f"({protected} are protected or outside the criterion's rule"
            + (f", {kept} must stay so that no group is emptied" if kept else "") + f"): ask for at most {len(candidates)}"
        )
    return candidates[:count]


def prune(
    model: nn.Module,
    criterion: str | Criterion,
    amount: int | float,
    calibration: Calibration = (),
    *,
    unit_kind: str | None = None,
    scope: str | None = None,
    inplace: bool = False,
    bridge: bool = False,
    **criterion_options: Any,
) -> PruneOutcome:
    """Remove the `amount` least important units by `criterion` and return the pruned copy.

    `criterion` is a name (`energyprune.pruning.criteria.CRITERIA`) or a Criterion; `unit_kind`
    overrides the criterion's default kind when it is given by name. `calibration` is an iterable
    of batches (re-iterable: a list), needed by the data-driven criteria. A fractional `amount`
    of neurons, heads or channels ranks all of the model's units together or takes that fraction of
    every MLP / attention / layer (`scope="per-layer"`, equal widths); the default ranks globally,
    raw where the criterion's scores compare across layers (Taylor), normalised per layer otherwise
    (`pruning.ranking.default_scope`; "global" / "global-raw" choose). The
    user's model is untouched unless `inplace=True`. `bridge=True` (blocks only) replaces each run
    of removed blocks by a least-squares linear map fitted on `calibration` and folded into the
    block before it (`pruning.surgery.bridge`): same shapes and cost, less damage."""
    if isinstance(criterion, str):
        options = dict(criterion_options)
        if unit_kind is not None:
            options["unit_kind"] = unit_kind
        criterion = get_criterion(criterion, **options)
    elif criterion_options or unit_kind is not None:
        raise UsageError("options and unit_kind go with a criterion given by name")
    calibration = list(calibration)
    if criterion.unit_kind == "hidden" and (note := output_width_warning(model)):
        logger.warning("%s", note)
    units = units_for(model, criterion.unit_kind, calibration)
    scores = criterion.score(model, units, calibration)
    chosen = select(scores, amount, criterion.unit_kind, scope=scope or default_scope(criterion))
    pruned, record = remove_units(model, chosen, inplace=inplace, calibration=calibration, bridge=bridge)
    return PruneOutcome(pruned, record, dict(scores), tuple(sorted(chosen)))
