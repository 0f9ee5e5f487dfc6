"""Pruning: criteria score units, surgery removes them, `prune` does both once.

    from energyprune.pruning import prune
    pruned, record = prune(model, "cosine-block", amount=2, calibration=batches)

The names below are loaded on first use (PEP 562), so that importing a torch-free part of this
package (`criterion_spec`) does not load the criteria and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Unit": "energyprune.pruning.base",
    "CRITERIA": "energyprune.pruning.criteria",
    "CriterionSpec": "energyprune.pruning.criterion_spec",
    "get_criterion": "energyprune.pruning.criteria",
    "KIND_NAMES": "energyprune.pruning.kinds",
    "remove_units": "energyprune.pruning.kinds",
    "units_for": "energyprune.pruning.kinds",
    "PruneOutcome": "energyprune.pruning.oneshot",
    "prune": "energyprune.pruning.oneshot",
    "select": "energyprune.pruning.oneshot",
    "PruneRecord": "energyprune.pruning.surgery.record",
    "apply_record": "energyprune.pruning.surgery.replay",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'energyprune.pruning' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
