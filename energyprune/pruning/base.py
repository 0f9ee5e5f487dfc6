"""Shared vocabulary of the pruning half: what a unit is, what a criterion returns.

Scoring is kept apart from surgery (Torch-Pruning's split): a criterion only scores units, the
surgery modules remove them, and the energy-budgeted loop is a plain function over both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True, order=True)
class Unit:
    """A removable part of a model.

    kind: "block" (a whole transformer layer), "attention" (its attention sub-block), "neuron"
    (one hidden unit of an MLP), "channel" (one output channel of a conv/linear), "activation"
    (a nonlinearity that NEPENTHE can fold away). `path` is the module path in the model being
    scored — the *current* model, since every removal renumbers what follows it (a
    `PruneRecord.map_path` translates original paths) — e.g. "model.layers.3" or
    "model.layers.3.mlp"; `index` is the current block index for blocks and attention, the
    neuron/channel index for those, 0 for activations.
    """

    kind: str
    path: str
    index: int


#: Calibration data: batches ready to call the model with (a tensor, a tuple of positional
#: tensors, or a mapping of keyword tensors such as a tokenizer's output).
Batch = torch.Tensor | tuple[Any, ...] | Mapping[str, Any]
Calibration = Iterable[Batch]


@runtime_checkable
class Criterion(Protocol):
    """Scores units. Convention: the LOWEST score is removed first (least important).

    Optional: a class attribute `scores_compare_across_groups = True` says the scores are in the
    same units in every layer (Taylor's loss change), so a global ranking of neurons, heads or
    channels takes them raw; without it they are normalised per layer (`pruning.ranking`)."""

    name: str
    unit_kind: str

    def score(
        self, model: torch.nn.Module, units: Sequence[Unit], calibration: Calibration
    ) -> dict[Unit, float]:
        ...
