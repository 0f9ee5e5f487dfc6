"""Lossless first: before the budget loop removes anything, it tries the levers (`energyprune.levers`)
on the original, each by the loop's own judge (interleaved windows) and each with its fidelity,
and runs every later model with the ones worth it. Pruning then only has to find what is still
missing to the target.

The levers' saving is the first factor of the running energy ratio (a direct comparison of the
levered original with the original); every pruning step compares levered models with each other,
and the figure of record compares the levered final model with the plain original.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from energyprune.errors import UsageError
from energyprune.levers import WORKLOAD_LEVERS, candidate_levers, lever_named
from energyprune.levers.advise import LeverOutcome, combine, evaluate_lever
from energyprune.levers.base import Lever, LeverContext
from energyprune.torch_io import Inputs, batch_size_of, model_device

logger = logging.getLogger(__name__)

#: What `prune_to_energy(levers=...)` takes: "auto", lever names, or lever objects.
LeverSpec = str | Sequence["str | Lever"] | None


def resolve_levers(spec: LeverSpec, model: nn.Module, inputs: Inputs) -> list[Lever]:
    """The levers a spec stands for. Workload levers (batch size) are refused: the batch is the
    deployment's choice, and the target is per inference at the batch given."""
    if spec is None or spec == "none" or (not isinstance(spec, str) and not list(spec)):
        return []
    if isinstance(spec, str):
        if spec == "auto":
            return candidate_levers(model_device(model).type, batch_size_of(inputs), workload=False)
        spec = [part.strip() for part in spec.split(",") if part.strip()]
    levers = [lever_named(item) if isinstance(item, str) else item for item in spec]
    for lever in levers:
        if not isinstance(lever, Lever):
            raise UsageError(f"{lever!r} is not a lever: it needs name, lossy, applies_to(model, context), "
                             "apply(model, context) and recipe() (see energyprune.levers.base)")
        if lever.name.partition(":")[0] in WORKLOAD_LEVERS:
            raise UsageError(f"lever {lever.name}: the batch size is the deployment's choice and the target is per "
                             "inference at the given batch; measure it with energyprune advise, then prune at that "
                             "batch (--batch-size)")
    return levers


class RunForm:
    """The model as the loop runs it: with the levers applied. The last few levered models are
    kept, since a candidate of one step is the current model of the next (compiling it twice
    would cost minutes on a CPU)."""

    def __init__(self, levers: Sequence[Lever], context: LeverContext, keep: int = 3) -> None:
        self.levers = list(levers)
        self.context = context
        self._keep = keep
        self._cache: list[tuple[nn.Module, nn.Module]] = []

    def __call__(self, model: nn.Module) -> nn.Module:
        if not self.levers:
            return model
        for plain, levered in self._cache:
            if plain is model:
                return levered
        levered = combine(model, self.levers, self.context)
        self._cache = [(model, levered)] + self._cache[: self._keep - 1]
        return levered


@dataclass(frozen=True)
class LeverPhase:
    """What the lever phase tried and what it applied."""

    applied: tuple[str, ...]
    ratio: float | None  # energy of the levered original over the original (None: nothing applied)
    ratio_ci95: tuple[float, float] | None
    tried: tuple[Mapping[str, Any], ...]  # LeverOutcome dicts, the combination last
    fidelity_floor: float

    def to_dict(self) -> dict[str, Any]:
        return {"applied": list(self.applied), "ratio": self.ratio,
                "ratio_ci95": list(self.ratio_ci95) if self.ratio_ci95 else None,
                "tried": [dict(t) for t in self.tried], "fidelity_floor": self.fidelity_floor}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeverPhase:
        ci = d.get("ratio_ci95")
        return cls(applied=tuple(str(n) for n in d.get("applied") or ()),
                   ratio=None if d.get("ratio") is None else float(d["ratio"]),
                   ratio_ci95=None if ci is None else (float(ci[0]), float(ci[1])),
                   tried=tuple(dict(t) for t in d.get("tried") or ()),
                   fidelity_floor=float(d.get("fidelity_floor", 0.99)))


def run_lever_phase(original: nn.Module, levers: Sequence[Lever], inputs: Inputs,
                    compare_fn: Callable[[nn.Module, nn.Module], Any], fidelity_batches: Sequence[Any],
                    floor: float, say: Callable[[str], None]) -> tuple[LeverPhase, list[Lever], Any]:
    """Each lever against the original, then the ones worth it together; returns the phase, the
    levers applied, and the comparison (original against the levered original) that anchors the
    running ratio, or None when none is applied."""
    context = LeverContext(device=model_device(original), inputs=inputs, batch_size=batch_size_of(inputs))
    outcomes: list[LeverOutcome] = []
    comparisons: dict[str, Any] = {}

    def judged(a: nn.Module, b: nn.Module) -> Any:
        comparison = compare_fn(a, b)
        comparisons[current_name[0]] = comparison
        return comparison

    current_name = [""]
    for lever in levers:
        current_name[0] = lever.name
        say(f"lever {lever.name}: measuring against the original")
        outcome = evaluate_lever(original, lever, context, fidelity_batches=fidelity_batches, floor=floor,
                                 compare_fn=judged)
        say(f"lever {lever.name}: {outcome.reason or outcome.verdict}")
        outcomes.append(outcome)
    chosen = [lever for lever, o in zip(levers, outcomes) if o.worth_it]
    best = min((o for o in outcomes if o.worth_it), key=lambda o: o.ratio or 1.0, default=None)
    applied: list[Lever] = [next(lever for lever in levers if lever.name == best.name)] if best else []
    final = best
    if len(chosen) > 1:
        from energyprune.levers.advise import Combined  # noqa: I001

        together = Combined(chosen)
        current_name[0] = together.name
        say(f"levers {together.name}: measuring together against the original")
        combined = evaluate_lever(original, together, context, fidelity_batches=fidelity_batches, floor=floor,
                                  compare_fn=judged)
        say(f"levers {together.name}: {combined.reason or combined.verdict}")
        outcomes.append(combined)
        if combined.worth_it and best is not None and (combined.ratio or 1.0) <= (best.ratio or 1.0):
            applied, final = chosen, combined
    phase = LeverPhase(applied=tuple(lever.name for lever in applied), ratio=final.ratio if final else None,
                       ratio_ci95=final.ratio_ci95 if final else None, tried=tuple(o.to_dict() for o in outcomes),
                       fidelity_floor=floor)
    return phase, applied, comparisons.get(final.name) if final else None


def levers_by_name(names: Sequence[str], given: Sequence[Lever]) -> list[Lever]:
    """The applied levers of a checkpoint, from the levers given to this run or the registry."""
    mine = {lever.name: lever for lever in given}
    out = []
    for name in names:
        if name in mine:
            out.append(mine[name])
            continue
        try:
            out.append(lever_named(name))
        except UsageError:
            raise UsageError(f"the run applied lever {name!r}, which is neither among the levers given now nor "
                             "built in: resume with the same levers=[...]") from None
    return out
