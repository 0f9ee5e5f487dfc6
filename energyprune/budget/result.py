"""The result of an energy-budgeted pruning run: frozen dataclasses and their JSON.

`PruneResult.to_dict()` (schema `energyprune.prune_result/1`) is the source of truth that every
report renders; `PruneResult.from_dict()` reads it back (without the model). Conventions:

- ratios are of the pruned model over the original; `energy_ratio` of a step is the product of
  the step ratios so far (each taken against the model just before it, by interleaved windows),
  its interval propagated to first order in log space, steps taken as independent;
- `final.energy_ratio` is the figure of record: one direct interleaved comparison of the final
  model against the original (`final.comparison`), where a step was taken;
- `per_inference_j` of a step or of the final model is the original's measured joules per
  inference times that ratio (the ratio is what interleaving makes trustworthy);
- a step with `accepted: false` was evaluated and refused before any measuring (it broke the
  quality floor): its energy fields (`step_ratio`, `step_ratio_ci95`, `energy_ratio`,
  `energy_ratio_ci95`, `per_inference_j`, `latency_s`) are null - nothing was measured, so no
  number is given;
- `provenance` is "estimated" as soon as one figure behind the result came from a power model;
- `outcome` is "reached" only when the whole 95% interval of the final ratio is at or below the
  goal, "median-only" when the median meets it but the interval reaches above (the model is still
  the best found, and saved), "not-reached" otherwise; `reached` is true for "reached" (and for
  "median-only" where the caller passed `accept_median=True`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from energyprune.budget.target import EnergyTarget
from energyprune.errors import UsageError
from energyprune.pruning.base import Unit
from energyprune.pruning.surgery.record import PruneRecord

SCHEMA = "energyprune.prune_result/1"
OUTCOMES = ("reached", "median-only", "not-reached")

LOOP_STOP_REASONS = {
    "target-reached": "the target was reached (confirmed by a direct comparison with the original)",
    "median-reached": ("the median of the direct comparison with the original met the target, but its 95% "
                       "interval reaches above it"),
    "quality-floor": "the next step would have broken the quality floor",
    "nothing-left": "no unit of this kind is left to remove",
    "too-coarse": "the meter could not resolve the steps' savings (ratio intervals contained 1)",
    "interrupted": "the run was interrupted",
    "max-steps": "the step limit was reached",
}

#: Keys of a comparison's measurements that grow with the run (dropped from per-step comparisons).
_BULKY = ("windows", "power_trace")


def _pair(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = value
    return (float(low), float(high))


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a figure that is not finite is written as null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def _finite_pair(pair: tuple[float, float] | None) -> list[float | None] | None:
    return None if pair is None else [_finite(pair[0]), _finite(pair[1])]


def slim_comparison(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """A comparison's dict without the windows and power traces of its two measurements: the
    per-window figures are summarised by the ratios, and traces would make a result of 50 steps
    megabytes long."""
    out = dict(comparison)
    for side in ("a", "b"):
        if isinstance(out.get(side), Mapping):
            out[side] = {k: v for k, v in out[side].items() if k not in _BULKY}
    return out


@dataclass(frozen=True)
class PruneStep:
    """One step of the loop: what was removed and what the step cost and saved."""

    index: int
    removed: tuple[Unit, ...]
    n_removed_total: int
    n_params: int
    flops: int | None
    step_ratio: float | None  # energy of the candidate over the model before the step
    step_ratio_ci95: tuple[float, float] | None
    energy_ratio: float | None  # cumulative, over the original (product of step ratios)
    energy_ratio_ci95: tuple[float, float] | None
    per_inference_j: float | None  # original's J/inference x energy_ratio
    latency_s: float | None  # the candidate's median latency in its comparison
    quality: float | None
    fidelity: float | None
    accepted: bool
    note: str
    duration_s: float
    latency_ratio: float | None = None  # cumulative, over the original
    mean_power_w: float | None = None  # the candidate's mean power in its comparison
    comparison: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    #: `removed` as the original model numbers them (`removed` is in the model the step pruned).
    removed_original: tuple[Unit, ...] = ()
    #: With a recovery hook: the candidate's fidelity right after the removal, before recovery
    #: (`fidelity` is after it); None without one.
    fidelity_before_recovery: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "removed": [{"kind": u.kind, "path": u.path, "index": u.index} for u in self.removed],
            "removed_original": [{"kind": u.kind, "path": u.path, "index": u.index} for u in self.removed_original],
            "n_removed_total": self.n_removed_total,
            "n_params": self.n_params,
            "flops": self.flops,
            "step_ratio": _finite(self.step_ratio),
            "step_ratio_ci95": _finite_pair(self.step_ratio_ci95),
            "energy_ratio": _finite(self.energy_ratio),
            "energy_ratio_ci95": _finite_pair(self.energy_ratio_ci95),
            "per_inference_j": _finite(self.per_inference_j),
            "latency_s": _finite(self.latency_s),
            "quality": _finite(self.quality),
            "fidelity": _finite(self.fidelity),
            "accepted": self.accepted,
            "note": self.note,
            "duration_s": self.duration_s,
            "latency_ratio": _finite(self.latency_ratio),
            "mean_power_w": _finite(self.mean_power_w),
            "fidelity_before_recovery": _finite(self.fidelity_before_recovery),
            "comparison": slim_comparison(self.comparison) if self.comparison is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneStep:
        try:
            return cls(
                index=int(d["index"]),
                removed=tuple(Unit(str(u["kind"]), str(u["path"]), int(u["index"])) for u in d["removed"]),
                n_removed_total=int(d["n_removed_total"]),
                n_params=int(d["n_params"]),
                flops=_opt_int(d.get("flops")),
                step_ratio=_opt_float(d.get("step_ratio")),
                step_ratio_ci95=_pair(d.get("step_ratio_ci95")),
                energy_ratio=_opt_float(d.get("energy_ratio")),
                energy_ratio_ci95=_pair(d.get("energy_ratio_ci95")),
                per_inference_j=_opt_float(d.get("per_inference_j")),
                latency_s=_opt_float(d.get("latency_s")),
                quality=_opt_float(d.get("quality")),
                fidelity=_opt_float(d.get("fidelity")),
                accepted=bool(d["accepted"]),
                note=str(d.get("note", "")),
                duration_s=float(d.get("duration_s", 0.0)),
                latency_ratio=_opt_float(d.get("latency_ratio")),
                mean_power_w=_opt_float(d.get("mean_power_w")),
                comparison=d.get("comparison"),
                removed_original=tuple(Unit(str(u["kind"]), str(u["path"]), int(u["index"]))
                                       for u in d.get("removed_original") or ()),
                fidelity_before_recovery=_opt_float(d.get("fidelity_before_recovery")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"not a prune step: {type(error).__name__}: {error}") from None


@dataclass(frozen=True)
class OriginalFigures:
    """The original model, measured once at the start."""

    per_inference_j: float
    ci95_j: tuple[float, float]
    latency_s: float
    mean_power_w: float | None
    n_params: int
    flops: int | None
    quality: float | None
    measurement: Mapping[str, Any] = field(compare=False, repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"per_inference_j": self.per_inference_j, "ci95_j": _finite_pair(self.ci95_j),
                "latency_s": self.latency_s, "mean_power_w": _finite(self.mean_power_w),
                "n_params": self.n_params, "flops": self.flops, "quality": _finite(self.quality),
                "measurement": dict(self.measurement)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OriginalFigures:
        try:
            return cls(float(d["per_inference_j"]), _pair(d["ci95_j"]) or (math.nan, math.nan),
                       float(d["latency_s"]), _opt_float(d.get("mean_power_w")), int(d["n_params"]),
                       _opt_int(d.get("flops")), _opt_float(d.get("quality")), dict(d.get("measurement") or {}))
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"not the original's figures: {type(error).__name__}: {error}") from None


@dataclass(frozen=True)
class FinalFigures:
    """The model the run ends with. `comparison` is the direct interleaved comparison with the
    original (None when no step was taken, or when the run was interrupted before it)."""

    energy_ratio: float
    energy_ratio_ci95: tuple[float, float]
    per_inference_j: float
    n_params: int
    flops: int | None
    quality: float | None
    fidelity: float | None = None
    latency_s: float | None = None
    latency_ratio: float | None = None
    comparison: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"energy_ratio": _finite(self.energy_ratio), "energy_ratio_ci95": _finite_pair(self.energy_ratio_ci95),
                "per_inference_j": _finite(self.per_inference_j), "n_params": self.n_params, "flops": self.flops,
                "quality": _finite(self.quality), "fidelity": _finite(self.fidelity),
                "latency_s": _finite(self.latency_s), "latency_ratio": _finite(self.latency_ratio),
                "comparison": dict(self.comparison) if self.comparison is not None else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinalFigures:
        try:
            return cls(float(d["energy_ratio"]), _pair(d["energy_ratio_ci95"]) or (math.nan, math.nan),
                       float(d["per_inference_j"]), int(d["n_params"]), _opt_int(d.get("flops")),
                       _opt_float(d.get("quality")), _opt_float(d.get("fidelity")),
                       _opt_float(d.get("latency_s")), _opt_float(d.get("latency_ratio")), d.get("comparison"))
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"not the final figures: {type(error).__name__}: {error}") from None


@dataclass(frozen=True)
class PruneResult:
    """What `prune_to_energy` returns. `model` is the pruned model (a new object; the caller's is
    untouched); it is not part of the JSON, so it is None after `from_dict`."""

    model_name: str
    criterion: str
    unit_kind: str
    target: EnergyTarget
    target_j: float | None
    reached: bool
    stop_reason: str
    message: str
    provenance: str
    original: OriginalFigures
    steps: tuple[PruneStep, ...]
    final: FinalFigures
    record: PruneRecord
    duration_s: float
    warnings: tuple[str, ...] = ()
    model: nn.Module | None = field(default=None, compare=False, repr=False)
    outcome: str = ""  # see the module docstring; derived from `reached` when left empty
    #: The lever phase (`budget.levers_phase.LeverPhase.to_dict()`): what was tried, what runs the
    #: model now, and its own energy ratio; None when no levers were given.
    levers: Mapping[str, Any] | None = None
    #: The final recovery's fidelity before and after (None without `final_recovery`).
    recovery: Mapping[str, Any] | None = None

    @property
    def applied_levers(self) -> list[str]:
        return list((self.levers or {}).get("applied") or [])

    @property
    def pruning_ratio(self) -> float | None:
        """With levers applied: the pruning's own factor, the product of the accepted steps' ratios
        (each step compares two levered models; 1.0 when nothing was pruned). The levers' factor is
        `levers["ratio"]`; `final.energy_ratio` (a direct comparison) remains the figure of record,
        and the product of the two factors agrees with it within their intervals."""
        if not self.applied_levers:
            return None
        return math.prod(s.step_ratio for s in self.accepted_steps if s.step_ratio is not None)

    def __post_init__(self) -> None:
        if self.stop_reason not in LOOP_STOP_REASONS:
            raise UsageError(f"unknown stop reason {self.stop_reason!r}; known: {', '.join(LOOP_STOP_REASONS)}")
        if not self.outcome:
            object.__setattr__(self, "outcome", "reached" if self.reached else "not-reached")
        if self.outcome not in OUTCOMES:
            raise UsageError(f"unknown outcome {self.outcome!r}; known: {', '.join(OUTCOMES)}")

    @property
    def accepted_steps(self) -> tuple[PruneStep, ...]:
        return tuple(s for s in self.steps if s.accepted)

    def to_dict(self) -> dict[str, Any]:
        target = self.target.to_dict()
        target["target_j"] = _finite(self.target_j)
        return {
            "schema": SCHEMA,
            "model": self.model_name,
            "criterion": self.criterion,
            "unit_kind": self.unit_kind,
            "target": target,
            "reached": self.reached,
            "outcome": self.outcome,
            "stop_reason": self.stop_reason,
            "message": self.message,
            "provenance": self.provenance,
            "original": self.original.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "final": self.final.to_dict(),
            "record": self.record.to_dict(),
            "duration_s": self.duration_s,
            "warnings": list(self.warnings),
            "levers": dict(self.levers) if self.levers else None,
            "final_recovery": dict(self.recovery) if self.recovery else None,
            "energy_ratio_from_levers": (self.levers or {}).get("ratio") if self.applied_levers else None,
            "energy_ratio_from_pruning": _finite(self.pruning_ratio) if self.pruning_ratio is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneResult:
        if not isinstance(d, Mapping) or d.get("schema") != SCHEMA:
            found = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
            raise UsageError(f"not a prune result (schema {found!r}, expected {SCHEMA!r})")
        try:
            target = EnergyTarget.from_dict(d["target"])
            return cls(
                model_name=str(d["model"]),
                criterion=str(d["criterion"]),
                unit_kind=str(d["unit_kind"]),
                target=target,
                target_j=_opt_float(d["target"].get("target_j")),
                reached=bool(d["reached"]),
                stop_reason=str(d["stop_reason"]),
                message=str(d["message"]),
                provenance=str(d["provenance"]),
                original=OriginalFigures.from_dict(d["original"]),
                steps=tuple(PruneStep.from_dict(s) for s in d["steps"]),
                final=FinalFigures.from_dict(d["final"]),
                record=PruneRecord.from_dict(d["record"]),
                duration_s=float(d["duration_s"]),
                warnings=tuple(str(w) for w in d.get("warnings", ())),
                outcome=str(d.get("outcome") or ""),
                levers=dict(d["levers"]) if d.get("levers") else None,
                recovery=dict(d["final_recovery"]) if d.get("final_recovery") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UsageError(f"not a prune result: {type(error).__name__}: {error}") from None


# ---- one line per step, for live views ---------------------------------------------------------
def format_step(step: PruneStep, estimated: bool = False) -> str:
    """`step 3: -2 block (12 total), 1.23 M params, energy 0.712 [0.69, 0.73] x, 4.1 mJ/inf, quality 0.93`."""
    from energyprune.units import format_energy

    kinds = sorted({u.kind for u in step.removed})
    what = f"-{len(step.removed)} {'/'.join(kinds) or 'unit'}"
    named = step.removed_original or step.removed
    if named and len(named) <= 4 and kinds and set(kinds) <= {"block", "attention"}:
        what += " " + ", ".join(u.path for u in named)  # as the original model numbers them
    parts = [f"step {step.index}: {what} ({step.n_removed_total} total)", f"{step.n_params / 1e6:.3g} M params"]
    if step.energy_ratio is not None:
        low, high = step.energy_ratio_ci95 or (math.nan, math.nan)
        tag = " ESTIMATED" if estimated else ""
        parts.append(f"energy {step.energy_ratio:.3f}x [{low:.3f}, {high:.3f}]{tag}")
        parts.append(f"{format_energy(step.per_inference_j)}/inference")
    if step.quality is not None:
        parts.append(f"quality {step.quality:.4g}")
    line = ", ".join(parts)
    if not step.accepted:
        line += " - REFUSED"
    if step.note:
        line += f" ({step.note})"
    return line
