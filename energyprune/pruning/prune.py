"""`prune(model, criterion, amount)`: score the units a criterion knows, remove the lowest.

The one-shot counterpart of the energy-budgeted loop: it scores once, removes `amount` units with
the surgery matching their kind, and returns the pruned copy with its record and the scores.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Criterion, Unit
from energyprune.pruning.calibration import shape_changing_blocks
from energyprune.pruning.criteria import get_criterion
from energyprune.pruning.criteria.nepenthe import activation_units
from energyprune.pruning.criteria.units import block_units, neuron_units
from energyprune.pruning.record import PruneRecord
from energyprune.pruning.surgery import fold_activation, prune_mlp_neurons, remove_attention, remove_blocks

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


def units_for(model: nn.Module, kind: str, calibration: Calibration | None = None) -> list[Unit]:
    """Every unit of `kind` the model offers.

    Blocks: given calibration data (re-iterable: a list of batches, since the criterion reads it
    again), the first batch is run once and the blocks that change the shape of the hidden state
    (strided or widening CNN blocks, which no model survives losing) are left out; without data
    every block of the stack is offered."""
    if calibration is not None and iter(calibration) is calibration:
        raise UsageError("calibration must be re-iterable (a list of batches), not a one-shot iterator: "
                         "reading its first batch here would take it from the criterion")
    if kind in ("block", "attention"):
        units = block_units(model, kind)
        first = next(iter(calibration), None) if calibration is not None else None
        if kind == "block" and first is not None:
            changing = set(shape_changing_blocks(model, first))
            if changing:
                logger.info("blocks %s change the shape of the hidden state: not offered for removal", sorted(changing))
                units = [u for u in units if u.index not in changing]
                if not units:
                    raise UsageError("every block of the model changes the shape of its input: none can be removed; "
                                     "prune neurons or channels instead")
        return units
    if kind == "neuron":
        units = neuron_units(model)
        if not units:
            raise UsageError("no MLP of a known layout was found in the model: neurons cannot be pruned")
        return units
    if kind == "activation":
        units = activation_units(model)
        if not units:
            raise UsageError("no foldable MLP (Linear-activation-Linear, not gated) was found in the model")
        return units
    raise UsageError(f"cannot enumerate units of kind {kind!r}: use block, attention, neuron or activation")


def _removable(score: float) -> bool:
    """-inf means "remove first" (thermodynamic's inert units); +inf and NaN are never removed."""
    return score != math.inf and not math.isnan(score)


def select(scores: Mapping[Unit, float], amount: int | float, kind: str) -> list[Unit]:
    """The units to remove: the `amount` lowest scores, +inf (protected) and NaN excluded. A float
    in (0, 1) is a fraction — of all units, or for neurons of each MLP, so that every MLP keeps the
    same width."""
    finite = sorted((s, u) for u, s in scores.items() if _removable(s))
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
        raise UsageError(f"amount must be a positive count or a fraction in (0, 1), got {amount!r}")
    if isinstance(amount, float) and amount >= 1:
        raise UsageError(f"a fractional amount must lie in (0, 1), got {amount}")
    if kind == "neuron" and isinstance(amount, float):
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
                raise UsageError(f"{path}: {count} neurons asked but only {len(ranked)} are candidates")
            chosen += [u for _, u in ranked[:count]]
        return chosen
    count = amount if isinstance(amount, int) else int(round(amount * len(scores)))
    if count < 1:
        raise UsageError(f"amount {amount} of {len(scores)} units removes nothing")
    if count > len(finite):
        protected = len(scores) - len(finite)
        raise UsageError(
            f"{count} {kind} units asked, but only {len(finite)} of {len(scores)} are candidates "
            f"({protected} are protected or outside the criterion's rule): ask for at most {len(finite)}"
        )
    return [u for _, u in finite[:count]]


def remove_units(model: nn.Module, units: Sequence[Unit], *, inplace: bool = False) -> tuple[nn.Module, PruneRecord]:
    """Apply the surgery for `units` (all of one kind, paths and indices of `model`)."""
    kinds = {u.kind for u in units}
    if len(kinds) != 1:
        raise UsageError(f"remove_units takes units of one kind, got {sorted(kinds)}")
    (kind,) = kinds
    if kind == "block":
        return remove_blocks(model, sorted(u.index for u in units), inplace=inplace)
    if kind == "attention":
        return remove_attention(model, sorted(u.index for u in units), inplace=inplace)
    if kind == "neuron":
        by_path: dict[str, list[int]] = defaultdict(list)
        for unit in units:
            by_path[unit.path].append(unit.index)
        return prune_mlp_neurons(model, {p: sorted(i) for p, i in by_path.items()}, inplace=inplace)
    if kind == "activation":
        record = PruneRecord()
        current = model
        for n, unit in enumerate(sorted(units)):
            current, step = fold_activation(current, unit.path, inplace=inplace or n > 0)
            record = record + step
        return current, record
    raise UsageError(f"no surgery for units of kind {kind!r}")


def prune(
    model: nn.Module,
    criterion: str | Criterion,
    amount: int | float,
    calibration: Calibration = (),
    *,
    unit_kind: str | None = None,
    inplace: bool = False,
    **criterion_options: Any,
) -> PruneOutcome:
    """Remove the `amount` least important units by `criterion` and return the pruned copy.

    `criterion` is a name (`energyprune.pruning.criteria.CRITERIA`) or a Criterion; `unit_kind`
    overrides the criterion's default kind when it is given by name. `calibration` is an iterable
    of batches (re-iterable: a list), needed by the data-driven criteria. The user's model is
    untouched unless `inplace=True`."""
    if isinstance(criterion, str):
        options = dict(criterion_options)
        if unit_kind is not None:
            options["unit_kind"] = unit_kind
        criterion = get_criterion(criterion, **options)
    elif criterion_options or unit_kind is not None:
        raise UsageError("options and unit_kind go with a criterion given by name")
    calibration = list(calibration)
    units = units_for(model, criterion.unit_kind, calibration)
    scores = criterion.score(model, units, calibration)
    chosen = select(scores, amount, criterion.unit_kind)
    pruned, record = remove_units(model, chosen, inplace=inplace)
    return PruneOutcome(pruned, record, dict(scores), tuple(sorted(chosen)))
