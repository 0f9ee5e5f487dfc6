"""Energy-aware pruning (Yang, Chen, Sze, CVPR 2017; NetAdapt, Yang et al. ECCV 2018): damage per
joule saved, with the joules measured, not modelled.

For each candidate block (or attention sub-block) i of the current model:

    candidate_i  = the model with block i removed (`remove_blocks` / `remove_attention`, on a copy)
    damage_i     = evaluate(model) − evaluate(candidate_i)
    ratio_i      = energy per inference of candidate_i / of the model, from interleaved windows
                   (`energyprune.measure.api.compare`: A B A B ... A, each B over its bracketing A's)
    saved_i      = (1 − ratio_i) · E_model            (joules per inference)
    score_i      = damage_i / saved_i                 (lowest removed first)

E_model comes from one `energyprune.measure.api.measure` of the model per `score` call. "Per inference"
means one call of the model on the measurement batch: the first calibration batch (without a
`labels` key, so a Hugging Face model does not compute a loss).

`evaluate(model) -> float in [0, 1]` is the caller's quality measure (task accuracy, say). The
default is the semantic fidelity of the candidate against the model on all calibration batches
(`energyprune.metrics.fidelity`): exp(−KL) of the next-token distributions when the model returns
(batch, tokens, vocabulary) logits, top-1 agreement for (batch, classes) logits, the mean
embedding cosine otherwise. The model against itself scores exactly 1 there, so the damage is
1 − fidelity(candidate). A candidate that does better than the model has a negative damage and a
negative score (removed first).

A measured saving ≤ 0 (the candidate is not cheaper, or the measurement noise is larger than the
saving) scores +inf with a note: no joules are known to be saved. Blocks in `protect` score +inf
without being measured.

Provenance: every figure says where its joules came from. `last_provenance` is "estimated" if any
measurement behind the scores was (the `auto` backend falls back to the estimated CPU model where
no hardware counter is readable), else "measured"; `last_details[unit]` holds each candidate's
fidelity, damage, ratio and its 95% interval, joules, provenance and note; `last_measurement` the
measurement of the model.

Cost: one measurement plus one comparison per candidate, each as long as `config` asks
(`MeterConfig`: window_s × repeats per model, plus idle and warm-up): with the defaults about half
a minute per block. Use a short config for a quick look, the defaults for figures you report. Each
candidate is a deep copy of the model, made and dropped one at a time (memory: twice the model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from energyprune.backends.base import Backend
from energyprune.errors import UsageError
from energyprune.backends.base import Provenance
from energyprune.measure.results import Measurement
from energyprune.measure.meter import MeterConfig
from energyprune.pruning.base import Batch, Calibration, Unit
from energyprune.pruning.surgery.blocks import remove_attention, remove_blocks
from energyprune.metrics.fidelity import auto_fidelity
from energyprune.pruning.observe.hooks import batches_of, check_max_batches
from energyprune.torch_io import model_device, to_device
from energyprune.pruning.criteria.units import (
    BLOCK_KINDS,
    check_block_indices,
    check_protect,
    check_units,
    require_stack,
    resolve_protected,
)

logger = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], float]


@dataclass(frozen=True)
class EnergyAwareDetail:
    """How one candidate was scored. energy_*_j are joules per inference (one model call on the
    measurement batch); ratio is the candidate's energy over the model's, with its 95% interval."""

    unit: Unit
    quality: float  # evaluate(candidate)
    damage: float  # evaluate(model) − evaluate(candidate)
    ratio: float
    ratio_ci95: tuple[float, float]
    energy_original_j: float
    energy_saved_j: float
    score: float
    provenance: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": {"kind": self.unit.kind, "path": self.unit.path, "index": self.unit.index},
            "quality": self.quality, "damage": self.damage, "ratio": self.ratio,
            "ratio_ci95": list(self.ratio_ci95), "energy_original_j": self.energy_original_j,
            "energy_saved_j": self.energy_saved_j, "score": self.score, "provenance": self.provenance,
            "note": self.note,
        }


def damage_per_joule(damage: float, saved_j: float) -> tuple[float, str]:
    """(score, note): damage / saved joules, or +inf with the reason when nothing is known saved."""
    if not math.isfinite(saved_j) or saved_j <= 0:
        return math.inf, (f"measured saving {saved_j:.3g} J per inference is not positive (the candidate is not "
                          "cheaper, or the measurement noise exceeds the saving): scored +inf")
    return damage / saved_j, ""


def _measurement_inputs(batch: Batch, device: torch.device) -> Any:
    """The first calibration batch as `measure` takes it: a tensor, a tuple or a mapping."""
    batch = to_device(batch, device)
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != "labels"}
    if isinstance(batch, list):
        return tuple(batch)
    return batch


class EnergyAwareCriterion:
    """Damage per joule saved, joules measured by interleaved windows (see the module note).

    unit_kind: "block" (default) or "attention".
    backend: a backend spec ("auto", "nvml", "rapl", "estimated", "replay:PATH") or backend objects.
    config: the meter's `MeterConfig` for every measurement (default: `MeterConfig()`).
    evaluate: evaluate(model) -> quality in [0, 1]; default: fidelity against the model on the
      calibration batches.
    cpu_tdp_w: for the estimated backend. protect: block indices scored +inf (default none).
    max_batches: calibration batches kept (they are iterated once and held in memory).
    """

    name = "energy-aware"

    def __init__(
        self,
        unit_kind: str = "block",
        *,
        backend: str | Sequence[Backend] = "auto",
        config: MeterConfig | None = None,
        evaluate: Evaluate | None = None,
        cpu_tdp_w: float | None = None,
        protect: Sequence[int] = (),
        max_batches: int | None = None,
    ) -> None:
        if unit_kind not in BLOCK_KINDS:
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(BLOCK_KINDS)}, got {unit_kind!r}")
        if config is not None and not isinstance(config, MeterConfig):
            raise UsageError(f"{self.name}: config must be a MeterConfig, got {type(config).__name__}")
        if evaluate is not None and not callable(evaluate):
            raise UsageError(f"{self.name}: evaluate must be callable as evaluate(model) -> float in [0, 1]")
        if not isinstance(backend, str) and not (isinstance(backend, Sequence) and backend):
            raise UsageError(f"{self.name}: backend must be a spec such as 'auto' or a non-empty list of backends")
        self.unit_kind = unit_kind
        self.backend = backend
        self.config = config
        self.evaluate = evaluate
        self.cpu_tdp_w = cpu_tdp_w
        self.protect = check_protect(protect, self.name)
        self.max_batches = check_max_batches(max_batches, self.name)
        self.last_provenance: Provenance | None = None
        self.last_details: dict[Unit, EnergyAwareDetail] = {}
        self.last_measurement: Measurement | None = None

    def __repr__(self) -> str:
        backend = self.backend if isinstance(self.backend, str) else [b.name for b in self.backend]
        return f"EnergyAwareCriterion(unit_kind={self.unit_kind!r}, backend={backend!r})"

    def _quality(self, model: nn.Module, original: nn.Module, batches: Sequence[Batch]) -> float:
        if self.evaluate is None:
            value = 1.0 if model is original else auto_fidelity(original, model, batches)
        else:
            value = self.evaluate(model)
        try:
            quality = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{self.name}: evaluate returned {value!r}, not a number in [0, 1]") from None
        if not 0.0 <= quality <= 1.0:
            raise UsageError(f"{self.name}: evaluate returned {quality}, outside [0, 1]")
        return quality

    def _candidate(self, model: nn.Module, index: int) -> nn.Module:
        remove = remove_blocks if self.unit_kind == "block" else remove_attention
        candidate, _ = remove(model, [index])
        return candidate.eval()

    def score(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        from energyprune.measure.api import compare, measure

        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        stack = require_stack(model, self.name)
        check_block_indices(units, len(stack), self.name)
        protected = resolve_protected(self.protect, len(stack))
        batches = list(batches_of(calibration, self.max_batches, self.name))
        inputs = _measurement_inputs(batches[0], model_device(model))
        was_training = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            base_quality = self._quality(model, model, batches)
            to_measure = [u for u in units if u.index not in protected]
            measurement = None
            if to_measure:
                measurement = measure(model, inputs, backend=self.backend, config=self.config,
                                      cpu_tdp_w=self.cpu_tdp_w, label="original")
            self.last_measurement = measurement
            e_original = measurement.per_inference_j if measurement is not None else math.nan
            details: dict[Unit, EnergyAwareDetail] = {}
            scores: dict[Unit, float] = {}
            used: list[Measurement] = [measurement] if measurement is not None else []
            for unit in units:
                if unit.index in protected:
                    scores[unit] = math.inf
                    continue
                candidate = self._candidate(model, unit.index)
                quality = self._quality(candidate, model, batches)
                comparison = compare(model, candidate, inputs, backend=self.backend, config=self.config,
                                     cpu_tdp_w=self.cpu_tdp_w, labels=("original", f"without {unit.path}"))
                used += [comparison.a, comparison.b]
                ratio = comparison.ratio
                saved = (1.0 - ratio) * e_original
                damage = base_quality - quality
                value, note = damage_per_joule(damage, saved)
                if note:
                    logger.warning("%s: %s: %s", self.name, unit.path, note)
                provenance = Provenance.combine(measurement, comparison.a, comparison.b)  # type: ignore[arg-type]
                details[unit] = EnergyAwareDetail(
                    unit=unit, quality=quality, damage=damage, ratio=ratio, ratio_ci95=comparison.ratio_ci95,
                    energy_original_j=e_original, energy_saved_j=saved, score=value,
                    provenance=provenance.value, note=note)
                scores[unit] = value
                del candidate
        finally:
            for module, flag in was_training:
                module.training = flag
        self.last_details = details
        self.last_provenance = Provenance.combine(*used) if used else None
        return scores
