"""Pruning: criteria score units, surgery removes them, `prune` does both once.

    from energyprune.pruning import prune
    pruned, record = prune(model, "cosine-block", amount=2, calibration=batches)
"""

from __future__ import annotations

from energyprune.pruning.base import Unit
from energyprune.pruning.criteria import CRITERIA, get_criterion
from energyprune.pruning.kinds import KIND_NAMES, remove_units, units_for
from energyprune.pruning.prune import PruneOutcome, prune, select
from energyprune.pruning.surgery.record import PruneRecord
from energyprune.pruning.surgery.replay import apply_record

__all__ = [
    "CRITERIA",
    "KIND_NAMES",
    "PruneOutcome",
    "PruneRecord",
    "Unit",
    "apply_record",
    "get_criterion",
    "prune",
    "remove_units",
    "select",
    "units_for",
]
