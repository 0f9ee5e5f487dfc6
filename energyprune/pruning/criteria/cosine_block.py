"""ShortGPT Block Influence (Men et al., arXiv 2403.03853), and its attention-only variant
(LLM-Drop, He et al., arXiv 2406.15786).

    BI_i = 1 − mean over tokens of cos(x_in, x_out)

x_in is the hidden state entering block i and x_out the one leaving it (for `unit_kind=
"attention"`: the state right after the attention sub-block, see `pruning.calibration`). A block
that barely turns its input has BI ≈ 0 and is removed first (lowest score first). The mean runs
over every non-padding token of the calibration data, not a sample. For a feature map the
tokens are the spatial positions and the vectors their channels (`pruning.calibration`); a block
that changes the shape of the map (strided or widening) has no Block Influence and scores +inf.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Unit
from energyprune.pruning.observe.calibration import BlockStates, collect_block_states
from energyprune.pruning.criteria.units import (
    BLOCK_KINDS,
    check_block_indices,
    check_protect,
    check_units,
    require_stack,
    resolve_protected,
)

logger = logging.getLogger(__name__)


class CosineBlockCriterion:
    """Scores blocks (or attention sub-blocks) by Block Influence; lowest removed first.

    unit_kind: "block" or "attention".
    protect: block indices scored +inf (never removed); negatives count from the end. ShortGPT
      protects none, so the default is ().
    max_batches: use at most this many calibration batches.
    feature_axis: the axis of a hidden state that holds its features (default: the channels of a
      4-D/5-D map, else the last axis; give -1 for channels-last maps such as (B, H, W, C)).
    """

    name = "cosine-block"

    def __init__(self, unit_kind: str = "block", *, protect: Sequence[int] = (), max_batches: int | None = None,
                 feature_axis: int | None = None) -> None:
        if unit_kind not in BLOCK_KINDS:
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(BLOCK_KINDS)}, got {unit_kind!r}")
        self.unit_kind = unit_kind
        self.protect = check_protect(protect, self.name)
        self.max_batches = max_batches
        self.feature_axis = feature_axis
        self.last_states: BlockStates | None = None

    def __repr__(self) -> str:
        return f"CosineBlockCriterion(unit_kind={self.unit_kind!r}, protect={self.protect})"

    def influence(self, model: torch.nn.Module, calibration: Calibration) -> tuple[float | None, ...]:
        """Block Influence of every block (or attention sub-block; None for a block without one),
        in depth order."""
        stack = require_stack(model, self.name)
        states = collect_block_states(
            model, calibration, stack, max_tokens=0, attention=self.unit_kind == "attention",
            max_batches=self.max_batches, feature_axis=self.feature_axis)
        self.last_states = states
        if self.unit_kind == "attention":
            assert states.attention_influence is not None
            return states.attention_influence
        return states.block_influence

    def score(self, model: torch.nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        influence = self.influence(model, calibration)
        check_block_indices(units, len(influence), self.name)
        protected = resolve_protected(self.protect, len(influence))
        scores = {}
        states = self.last_states
        for unit in units:
            value = influence[unit.index]
            if states is not None and not states.preserves_shape(unit.index):
                # A strided / widening block (CNN stages): its output cannot replace its input.
                logger.info("%s: %s changes the shape of the hidden state, so it cannot be removed: scored +inf",
                            self.name, unit.path)
                value = math.inf
            elif value is None or math.isnan(value):
                logger.warning("%s: no Block Influence for %s (no attention module, or no tokens): scored +inf",
                               self.name, unit.path)
                value = math.inf
            scores[unit] = math.inf if unit.index in protected else float(value)
        return scores
