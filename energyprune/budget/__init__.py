"""The energy-budgeted pruning loop: prune a copy of a model, measuring every step, to a target.

    from energyprune.budget import prune_to_energy
    result = prune_to_energy(model, "-30%", "cosine-block", inputs=batch, quality_floor=0.9)
    result.reached, result.final.energy_ratio, result.message
    pruned = result.model                      # the caller's model is untouched

Parts: `target` (what a target string means), `judge` (who measures: the real meter by default),
`loop` (the loop and its step-size schedule), `result` (PruneResult/PruneStep and their JSON),
`checkpoint` (resume after Ctrl-C), `saved` (a pruned model on disk, loadable by `load_model`),
`recovery` (a short distillation toward the original between steps).
"""

from __future__ import annotations

from energyprune.budget.checkpoint import Checkpoint, Checkpointer, fingerprint
from energyprune.budget.judge import ComparisonLike, EnergyJudge, MeasurementLike, MeterJudge
from energyprune.budget.loop import PruneInterrupted, next_step_size, prune_to_energy
from energyprune.budget.recovery import Distillation
from energyprune.budget.result import FinalFigures, OriginalFigures, PruneResult, PruneStep
from energyprune.models.pruned import is_pruned_dir, load_pruned, save_pruned
from energyprune.budget.target import EnergyTarget, parse_target

__all__ = [
    "Checkpoint",
    "Checkpointer",
    "ComparisonLike",
    "Distillation",
    "EnergyJudge",
    "EnergyTarget",
    "FinalFigures",
    "MeasurementLike",
    "MeterJudge",
    "OriginalFigures",
    "PruneInterrupted",
    "PruneResult",
    "PruneStep",
    "fingerprint",
    "is_pruned_dir",
    "load_pruned",
    "next_step_size",
    "parse_target",
    "prune_to_energy",
    "save_pruned",
]
