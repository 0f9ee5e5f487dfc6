"""EntroDrop (Yang et al., arXiv 2504.03794): remove the blocks that add the least entropy.

For each block i, with H an entropy estimator (`pruning.estimators`) applied to the sampled token
vectors (the same tokens at every boundary, see `pruning.calibration`):

    ΔH_i = H(state leaving block i) − H(state entering block i)

(`unit_kind="attention"`: H(state after the attention sub-block) − H(state entering the block)).
The score is ΔH: the smallest increase is removed first. Two rules then set some scores to +inf:

**Entropy-increase stage** (`stage`). The entropy profile is H_0 … H_L, the entropy at each
boundary (H_0 entering block 0, H_{i+1} leaving block i). What this module implements:

* `"increase"` (default): the stage is the prefix of blocks up to the profile's peak. Let b* be
  the **last** boundary at which the profile attains its maximum; block i is a candidate iff
  i < b* (block i leads from boundary i to i+1 ≤ b*). Within the stage a block may have a
  ΔH ≤ 0 - a block that changes nothing (ΔH = 0) before the peak stays a candidate, and a small
  estimator dip does not end the stage - but no block after the peak is one. Taking the last
  maximum keeps a do-nothing block at the peak (H_i = H_{i+1} = max) a candidate.
* `"positive"`: block i is a candidate iff ΔH_i ≥ 0 (each block on its own; no prefix).
* `"all"`: every block is a candidate (the plain ΔH ranking).

**Shape**: a block whose output has another shape than its input (a strided or widening CNN
block, see `pruning.calibration`) has ΔH = NaN and is never a candidate. On such stacks the
entropies along depth are of different dimensions, so the "increase" rule says little (a warning
says so); `stage="all"` ranks the removable blocks by ΔH alone.
**Protection** (`protect`, default `(0, 1, -1)`): the first two and the last block are never
candidates, as in EntroDrop's code.

For `unit_kind="attention"` the score is the attention ΔH, and the stage and protection are
those of the block the attention belongs to (the stage is read from the block-level profile).

Non-candidates score +inf. When no block is a candidate - the profile peaks in a protected
block, as DESIGN.md's MiniLM pilot found (entropy rising only in layer 0) - every score is +inf
and a warning says so: the criterion has nothing to offer on that model, and we say it rather
than fall back to another rule silently. `profile()` returns the whole picture for reports.

Data: the entropies are estimated on one pooled sample of at most `max_tokens` token vectors
drawn from all calibration tokens (the same tokens at every boundary), not per sequence or per
batch and then averaged as EntroDrop's code does; pooling gives the O(n²) estimators their
sample at a bounded cost and makes ΔH independent of the batch size.

Estimators and their options: `knn` (k, normalise, max_samples, seed), `bucket` (bins), `renyi`
(alpha, kernel_width, normalise, max_samples, seed), `gaussian` (ridge). ΔH is in nats for all of them, but
only differences of one estimator are comparable.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
from energyprune.metrics.entropy import ESTIMATORS, get_estimator

logger = logging.getLogger(__name__)

STAGE_RULES = ("increase", "positive", "all")


@dataclass(frozen=True)
class EntropyProfile:
    """The entropy of the hidden state across depth, and what the stage rule made of it.

    entropies: H at the L + 1 boundaries (entering block 0, then leaving each block), nats.
    delta: ΔH per block. attention_delta: ΔH per attention sub-block (None where not computed).
    peak: the boundary the "increase" rule stops at (last maximum of `entropies`).
    candidates: blocks eligible under the stage rule and not protected, in depth order.
    """

    estimator: str
    options: dict[str, Any]
    unit_kind: str
    stage: str
    entropies: tuple[float, ...]
    delta: tuple[float, ...]
    attention_entropies: tuple[float | None, ...] | None
    attention_delta: tuple[float | None, ...] | None
    peak: int
    in_stage: tuple[int, ...]
    protected: tuple[int, ...]
    candidates: tuple[int, ...]
    tokens_seen: int
    tokens_used: int

    @property
    def scores(self) -> tuple[float, ...]:
        """The score of each block (or attention sub-block) in depth order: ΔH, or +inf."""
        values = self.attention_delta if self.unit_kind == "attention" else self.delta
        assert values is not None
        chosen = set(self.candidates)
        return tuple(float(v) if i in chosen and v is not None and not math.isnan(v) else math.inf
                     for i, v in enumerate(values))


def stage_candidates(entropies: Sequence[float], delta: Sequence[float], stage: str) -> tuple[int, tuple[int, ...]]:
    """(peak boundary, blocks in the stage) for a profile of L + 1 entropies and L deltas."""
    if stage not in STAGE_RULES:
        raise UsageError(f"entropy-block: stage must be one of {', '.join(STAGE_RULES)}, got {stage!r}")
    top = max(entropies)
    peak = max(b for b, h in enumerate(entropies) if h == top)
    n = len(delta)
    if stage == "increase":
        return peak, tuple(i for i in range(n) if i < peak)
    if stage == "positive":
        return peak, tuple(i for i in range(n) if delta[i] >= 0)
    return peak, tuple(range(n))


class EntropyBlockCriterion:
    """EntroDrop's ΔH criterion (see the module note for the rules).

    estimator: "knn" (default, k=25), "bucket", "renyi" or "gaussian"; `estimator_options` go to
      it (e.g. k=25, normalise=True, bins=20, alpha=2).
    unit_kind: "block" or "attention".
    stage: "increase" (default), "positive" or "all".
    protect: block indices never removed, negatives from the end; default first two and last.
    max_tokens: token vectors sampled per boundary (memory bound of the calibration pass).
    max_batches: use at most this many calibration batches. seed: seeds the token sample.
    feature_axis: the axis of a hidden state that holds its features (default: the channels of a
      4-D/5-D map, else the last axis; give -1 for channels-last maps such as (B, H, W, C)).
    """

    name = "entropy-block"

    def __init__(
        self,
        estimator: str = "knn",
        unit_kind: str = "block",
        *,
        stage: str = "increase",
        protect: Sequence[int] = (0, 1, -1),
        max_tokens: int = 2048,
        max_batches: int | None = None,
        seed: int = 0,
        feature_axis: int | None = None,
        **estimator_options: Any,
    ) -> None:
        self._estimate = get_estimator(estimator)
        _check_options(estimator, estimator_options)
        if unit_kind not in BLOCK_KINDS:
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(BLOCK_KINDS)}, got {unit_kind!r}")
        if stage not in STAGE_RULES:
            raise UsageError(f"{self.name}: stage must be one of {', '.join(STAGE_RULES)}, got {stage!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
            raise UsageError(f"{self.name}: max_tokens must be an integer >= 2, got {max_tokens!r}")
        self.estimator = estimator
        self.estimator_options = dict(estimator_options)
        self.unit_kind = unit_kind
        self.stage = stage
        self.protect = check_protect(protect, self.name)
        self.max_tokens = max_tokens
        self.max_batches = max_batches
        self.seed = seed
        self.feature_axis = feature_axis
        self.last_profile: EntropyProfile | None = None

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.estimator_options.items())
        return (f"EntropyBlockCriterion(estimator={self.estimator!r}{options}, unit_kind={self.unit_kind!r}, "
                f"stage={self.stage!r}, protect={self.protect})")

    def _entropy(self, X: torch.Tensor) -> float:
        return float(self._estimate(X, **self.estimator_options))

    def profile_from_states(self, states: BlockStates) -> EntropyProfile:
        """The entropy profile of already collected states (no model run)."""
        if states.tokens_kept < 2:
            raise UsageError(f"{self.name}: the calibration data gave {states.tokens_kept} token(s); need at least 2")
        cache: dict[int, float] = {}

        def entropy(X: torch.Tensor) -> float:
            key = id(X)  # inputs[i+1] is often the very tensor outputs[i]: estimate it once
            if key not in cache:
                cache[key] = self._entropy(X)
            return cache[key]

        entropies = tuple(entropy(X) for X in states.boundaries())
        # A block that changes the shape of the state (a strided CNN block) cannot be removed; its
        # ΔH would also compare entropies of different dimensions. NaN: never a candidate.
        delta = tuple(entropy(states.outputs[i]) - entropy(states.inputs[i]) if states.preserves_shape(i)
                      else math.nan for i in range(states.n_blocks))
        widths = {X.shape[1] for X in states.boundaries()}
        if len(widths) > 1 and self.stage == "increase":
            logger.warning(
                "%s: the hidden state changes width along depth (%s): the 'increase' stage rule compares "
                "entropies of different dimensions, which says little; stage='all' ranks by ΔH alone",
                self.name, ", ".join(str(w) for w in sorted(widths)))
        attention_entropies = attention_delta = None
        if self.unit_kind == "attention":
            assert states.attention is not None
            attention_entropies = tuple(None if X is None else entropy(X) for X in states.attention)
            attention_delta = tuple(None if h is None else h - entropy(states.inputs[i])
                                    for i, h in enumerate(attention_entropies))
        peak, in_stage = stage_candidates(entropies, delta, self.stage)
        in_stage = tuple(i for i in in_stage if not math.isnan(delta[i]))
        protected = resolve_protected(self.protect, states.n_blocks)
        candidates = tuple(i for i in in_stage if i not in protected)
        profile = EntropyProfile(
            estimator=self.estimator,
            options=dict(self.estimator_options),
            unit_kind=self.unit_kind,
            stage=self.stage,
            entropies=entropies,
            delta=delta,
            attention_entropies=attention_entropies,
            attention_delta=attention_delta,
            peak=peak,
            in_stage=in_stage,
            protected=tuple(sorted(protected)),
            candidates=candidates,
            tokens_seen=states.tokens_seen,
            tokens_used=states.tokens_kept,
        )
        if not candidates:
            logger.warning(
                "%s: no block is a candidate (stage %r: entropy peaks at boundary %d of %d; protected %s): "
                "every block scores +inf. Entropy profile (nats): %s. Try stage='all' or another criterion.",
                self.name, self.stage, peak, states.n_blocks, sorted(protected),
                ", ".join(f"{h:.3g}" for h in entropies))
        self.last_profile = profile
        return profile

    def profile(self, model: torch.nn.Module, calibration: Calibration) -> EntropyProfile:
        """Run the calibration data once and return the entropy profile (also kept as `last_profile`)."""
        stack = require_stack(model, self.name)
        states = collect_block_states(
            model, calibration, stack, max_tokens=self.max_tokens, attention=self.unit_kind == "attention",
            max_batches=self.max_batches, seed=self.seed, feature_axis=self.feature_axis)
        return self.profile_from_states(states)

    def score(self, model: torch.nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        profile = self.profile(model, calibration)
        check_block_indices(units, len(profile.delta), self.name)
        scores = profile.scores
        return {unit: scores[unit.index] for unit in units}


def _check_options(estimator: str, options: dict[str, Any]) -> None:
    """A UsageError naming the accepted options when `options` do not fit the estimator."""
    function = ESTIMATORS[estimator]
    parameters = [p for p in inspect.signature(function).parameters if p != "X"]
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise UsageError(
            f"entropy-block: the {estimator!r} estimator takes no option {', '.join(unknown)}; "
            f"its options are {', '.join(parameters)} (the criterion's own: estimator, unit_kind, stage, "
            "protect, max_tokens, max_batches, seed, feature_axis)")
