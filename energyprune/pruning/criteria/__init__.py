"""Pruning criteria: each one scores units, the lowest score is removed first (`base.Criterion`).

| name | module | unit kinds | needs data |
| --- | --- | --- | --- |
| `entropy-block` | `entropy_block` (EntroDrop ΔH) | block, attention | yes |
| `cosine-block` | `cosine_block` (ShortGPT Block Influence) | block, attention | yes |
| `magnitude` | `magnitude` (L1 / L2 of the weights) | block, attention, neuron, head, hidden, channel | no |
| `random` | `random_criterion` (seeded control) | any | no |
| `activation` | `activation` (Minitron: mean absolute activation on calibration data) | neuron, head, hidden | yes |
| `taylor` | `taylor` (first-order Taylor, abs(w · ∂L/∂w), LM loss or output norm; per-kind scorers) | neuron, head, hidden | yes |
| `nepenthe` | `nepenthe` (ON/OFF entropy of rectifier units; `dead_neurons`) | activation, neuron | yes |
| `mipp` | `mipp` (information-preserving backward elimination against a null unit) | neuron | yes |
| `thermodynamic` | `thermodynamic` (gradient temperature, free energy E − T·S) | neuron, channel | yes (≥ 2 batches) |
| `taylor` | `taylor_channels` (first-order Taylor: absolute w x g on calibration data, pseudo-labels from the model's own top-1) | channel | yes |
| `energy-aware` | `energy_aware` (damage per measured joule saved) | block, attention | yes, and the meter |

    criterion = get_criterion("entropy-block", estimator="bucket", unit_kind="block")
    scores = criterion.score(model, block_units(model), calibration_batches)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from energyprune.errors import UsageError
from energyprune.pruning.base import Criterion
from energyprune.pruning.criterion_spec import CriterionSpec
from energyprune.pruning.criteria.activation import ActivationCriterion
from energyprune.pruning.criteria.cosine_block import CosineBlockCriterion
from energyprune.pruning.criteria.energy_aware import EnergyAwareCriterion, EnergyAwareDetail
from energyprune.pruning.criteria.entropy_block import EntropyBlockCriterion, EntropyProfile
from energyprune.pruning.criteria.magnitude import MagnitudeCriterion
from energyprune.pruning.criteria.mipp import MippCriterion, MippResult
from energyprune.pruning.criteria.nepenthe import NepentheCriterion, OnOffStats, activation_units, dead_neurons
from energyprune.pruning.criteria.random_criterion import RandomCriterion
from energyprune.pruning.criteria.taylor import TAYLOR_SCORERS, TaylorCriterion
from energyprune.pruning.criteria.taylor_channels import channel_taylor_scores
from energyprune.pruning.criteria.thermodynamic import ThermodynamicCriterion
from energyprune.pruning.criteria.units import block_units, neuron_units

#: Criteria by name.
CRITERIA: dict[str, type] = {
    "entropy-block": EntropyBlockCriterion,
    "cosine-block": CosineBlockCriterion,
    "magnitude": MagnitudeCriterion,
    "random": RandomCriterion,
    "nepenthe": NepentheCriterion,
    "mipp": MippCriterion,
    "thermodynamic": ThermodynamicCriterion,
    "energy-aware": EnergyAwareCriterion,
    "activation": ActivationCriterion,
    "taylor": TaylorCriterion,  # neurons, heads and hidden channels here; CNN channels in taylor_channels
}


def get_criterion(name: str, **options: Any) -> Criterion:
    """A criterion by its name (`CRITERIA`), built with `options`; a UsageError naming the known
    criteria for an unknown name, or the accepted options for an unknown option."""
    key = str(name).strip().lower().replace("_", "-")
    cls = CRITERIA.get(key)
    if cls is None:
        raise UsageError(f"unknown criterion {name!r}: choose one of {', '.join(sorted(CRITERIA))}")
    signature = inspect.signature(cls.__init__)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    accepted = [p for p in signature.parameters if p != "self"
                and signature.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise UsageError(f"criterion {key!r} takes no option {', '.join(unknown)}; its options are {', '.join(accepted)}")
    return cls(**options)


def specs_for_kind(kind: str, known: Mapping[str, Sequence[CriterionSpec]]) -> tuple[list[CriterionSpec], list[dict[str, str]]]:
    """The criteria that score units of `kind`: the `known` variants (by registry name) first, then
    every other criterion of the registry that accepts `unit_kind=kind`. Returns (specs, the
    criteria left out with the reason)."""
    specs: list[CriterionSpec] = []
    skipped: list[dict[str, str]] = []
    for name, variants in known.items():
        if name in CRITERIA:
            specs += list(variants)
    for name in sorted(CRITERIA):
        if name in known:
            continue
        try:
            criterion = get_criterion(name, unit_kind=kind)
        except (UsageError, TypeError, ValueError) as error:
            skipped.append({"criterion": name, "reason": f"does not score {kind} units: {error}"})
            continue
        if getattr(criterion, "unit_kind", None) != kind:
            skipped.append({"criterion": name, "reason": f"scores {getattr(criterion, 'unit_kind', '?')} units"})
            continue
        specs.append(CriterionSpec(name, {"unit_kind": kind}, row=name))
    return specs, skipped


__all__ = [
    "ActivationCriterion",
    "CRITERIA",
    "TAYLOR_SCORERS",
    "TaylorCriterion",
    "channel_taylor_scores",
    "CriterionSpec",
    "CosineBlockCriterion",
    "EnergyAwareCriterion",
    "EnergyAwareDetail",
    "EntropyBlockCriterion",
    "EntropyProfile",
    "MagnitudeCriterion",
    "MippCriterion",
    "MippResult",
    "NepentheCriterion",
    "OnOffStats",
    "RandomCriterion",
    "ThermodynamicCriterion",
    "activation_units",
    "block_units",
    "channel_taylor_scores",
    "dead_neurons",
    "get_criterion",
    "neuron_units",
    "specs_for_kind",
]
