"""`advise`: the model as given, then each lever against it, each by interleaved windows
(`measure.api.compare`) and each with its fidelity to the original on the same inputs.

A lever is **worth it** when the 95% interval of its energy ratio lies below 1 (a saving the meter
can vouch for, not noise) and its fidelity is at or above the floor. Levers that do not apply, or
that fail when the model first runs under them (a compiler missing, a graph that will not
compile), are listed as skipped with the reason; they never fail the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from energyprune.levers import WORKLOAD_LEVERS, candidate_levers, ordered
from energyprune.levers.base import Lever, LeverContext, LeverSkipped
from energyprune.measure.api import compare, measure
from energyprune.measure.meter import MeterConfig, Progress
from energyprune.metrics.fidelity import output_fidelity
from energyprune.torch_io import Inputs, batch_size_of, call_model, first_line

logger = logging.getLogger(__name__)

SCHEMA = "energyprune.advice/1"
#: The fidelity a lossless lever must keep (float reordering costs far less); a lossy one is held
#: to the same floor unless the caller sets another.
DEFAULT_FIDELITY_FLOOR = 0.99

#: (lever name, status, reason) for progress lines: status is "measuring", "skipped" or "done".
LeverProgress = Callable[[str, str, str], None]


@dataclass(frozen=True)
class LeverOutcome:
    """One lever against the original. Ratios are per sample (per inference where batches match)."""

    name: str
    status: str  # "measured", "skipped"
    reason: str = ""
    lossy: bool = False
    workload: bool = False  # changes the workload (batch), not the model: never picked by the loop
    batch_size: int = 1
    ratio: float | None = None  # J/sample with the lever over J/sample of the original
    ratio_ci95: tuple[float, float] | None = None
    per_inference_j: float | None = None
    per_sample_j: float | None = None
    per_sample_ci95_j: tuple[float, float] | None = None
    # The original's J/sample in the same interleaved comparison: the ratio compares these two, and
    # both move with the machine (a shared CPU), so the lever's J/sample alone can mislead.
    original_per_sample_j: float | None = None
    latency_s: float | None = None
    fidelity: Mapping[str, Any] | None = None  # output_fidelity's dict, or None (batch levers)
    worth_it: bool = False
    verdict: str = ""  # why it is or is not worth it
    provenance: str = "measured"
    levers: tuple[str, ...] = ()  # for the combination: the levers it combines

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "reason": self.reason, "lossy": self.lossy,
                "workload": self.workload, "batch_size": self.batch_size, "ratio": self.ratio,
                "ratio_ci95": list(self.ratio_ci95) if self.ratio_ci95 else None,
                "per_inference_j": self.per_inference_j, "per_sample_j": self.per_sample_j,
                "per_sample_ci95_j": list(self.per_sample_ci95_j) if self.per_sample_ci95_j else None,
                "original_per_sample_j": self.original_per_sample_j,
                "latency_s": self.latency_s, "fidelity": dict(self.fidelity) if self.fidelity else None,
                "worth_it": self.worth_it, "verdict": self.verdict, "provenance": self.provenance,
                "levers": list(self.levers)}


@dataclass(frozen=True)
class Advice:
    label: str
    device: str
    provenance: str
    batch_size: int
    fidelity_floor: float
    baseline: Mapping[str, Any]  # the original's measurement dict (anatomy included)
    outcomes: tuple[LeverOutcome, ...]
    combined: LeverOutcome | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def worth_it(self) -> list[str]:
        """Model levers worth applying (workload levers such as batch size left to the user)."""
        return [o.name for o in self.outcomes if o.worth_it and not o.workload]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "label": self.label, "device": self.device, "provenance": self.provenance,
                "batch_size": self.batch_size, "fidelity_floor": self.fidelity_floor,
                "baseline": dict(self.baseline), "levers": [o.to_dict() for o in self.outcomes],
                "combined": self.combined.to_dict() if self.combined else None,
                "worth_it": self.worth_it, "warnings": list(self.warnings)}


def _judge(outcome: LeverOutcome, floor: float) -> LeverOutcome:
    """Worth it: the whole interval of the ratio below 1, and the fidelity at or above the floor."""
    low, high = outcome.ratio_ci95 or (float("nan"), float("nan"))
    fidelity = (outcome.fidelity or {}).get("fidelity")
    if outcome.ratio is None:
        return outcome
    if fidelity is not None and fidelity < floor:
        return replace(outcome, worth_it=False, verdict=f"refused: fidelity {fidelity:.4f} is below the floor {floor:g}")
    if high < 1.0:
        saving = 1.0 - outcome.ratio
        return replace(outcome, worth_it=True, verdict=f"worth it: saves {saving:.1%} (95% interval of the ratio "
                                                        f"{low:.3f} .. {high:.3f}, all below 1)")
    if low > 1.0:
        return replace(outcome, worth_it=False, verdict=f"costs {outcome.ratio - 1:.1%} more energy "
                                                         f"(95% interval {low:.3f} .. {high:.3f})")
    return replace(outcome, worth_it=False, verdict=f"no saving the meter can vouch for (95% interval {low:.3f} .. "
                                                     f"{high:.3f} holds 1)")


def _first_samples(inputs: Inputs, total: int, keep: int) -> Inputs:
    """The first `keep` samples of a batch of `total` (tensors whose first dimension is the batch)."""
    def head(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == total:
            return value[:keep]
        return value
    if isinstance(inputs, Mapping):
        return {k: head(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(head(v) for v in inputs)
    return head(inputs)


def _batch_fidelity(model: nn.Module, inputs: Inputs, batch: int, base_batch: int) -> dict[str, Any]:
    """The same samples run at batch `base_batch` and inside a batch of `batch`: the largest
    difference of the main output (batched kernels may sum in another order)."""
    from energyprune.metrics.fidelity import evaluating, main_output

    head = _first_samples(inputs, batch, base_batch)
    with evaluating(model):
        whole = main_output(call_model(model, inputs)).float()
        alone = main_output(call_model(model, head)).float()
    return {"metric": f"the first {base_batch} sample(s) alone against inside batch {batch}",
            "fidelity": None, "max_abs_error": float((whole[:base_batch] - alone).abs().max())}


def evaluate_lever(model: nn.Module, lever: Lever, context: LeverContext, *, backend: str | Sequence[Any] = "auto",
                   config: MeterConfig | None = None, fidelity_batches: Sequence[Any] | None = None,
                   floor: float = DEFAULT_FIDELITY_FLOOR, progress: Progress | None = None,
                   clock: Callable[[], float] = time.perf_counter,
                   compare_fn: Callable[[nn.Module, nn.Module], Any] | None = None) -> LeverOutcome:
    """One lever against the original: skipped with a reason, or measured and judged.
    `compare_fn(original, levered)` replaces the meter's interleaved comparison (the budget loop
    passes its judge's); it serves levers that keep the batch."""
    workload = lever.name.partition(":")[0] in WORKLOAD_LEVERS
    base = LeverOutcome(name=lever.name, status="skipped", lossy=bool(getattr(lever, "lossy", False)),
                        workload=workload, batch_size=context.batch_size)
    reason = lever.applies_to(model, context)
    if reason:
        return replace(base, reason=reason)
    batch = int(getattr(lever, "batch_size", None) or context.batch_size)
    inputs = context.inputs if batch == context.batch_size or context.make_inputs is None else context.make_inputs(batch)
    try:
        levered = lever.apply(model, context)
        with torch.inference_mode():
            call_model(levered, inputs)  # compilation and kernel choice happen here
    except LeverSkipped as skipped:
        return replace(base, reason=str(skipped))
    except Exception as error:  # a lever that cannot run this model is advice, not a failure
        return replace(base, reason=f"failed on this model: {type(error).__name__}: {first_line(error)}")
    try:
        if batch != context.batch_size:
            fidelity = _batch_fidelity(model, inputs, batch, context.batch_size)
        else:
            fidelity = output_fidelity(model, levered, list(fidelity_batches or [context.inputs]))
    except Exception as error:
        return replace(base, reason=f"its outputs could not be compared with the original's: {first_line(error)}")
    if compare_fn is not None and batch == context.batch_size:
        comparison = compare_fn(model, levered)
    else:
        comparison = compare(model, levered, context.inputs, inputs_b=inputs, backend=backend, config=config,
                             progress=progress, labels=("original", lever.name),
                             batch_sizes=(context.batch_size, batch), clock=clock)
    per_sample = context.batch_size / batch  # a ratio per call becomes one per sample
    low, high = comparison.ratio_ci95
    b = comparison.b
    b_low, b_high = b.ci95_j
    outcome = replace(base, status="measured", batch_size=batch, ratio=comparison.ratio * per_sample,
                      ratio_ci95=(low * per_sample, high * per_sample), per_inference_j=b.per_inference_j,
                      per_sample_j=b.per_inference_j / batch, per_sample_ci95_j=(b_low / batch, b_high / batch),
                      original_per_sample_j=comparison.a.per_inference_j / context.batch_size,
                      latency_s=_median_latency(b), fidelity=fidelity, provenance=_provenance(comparison))
    return _judge(outcome, floor)


def _median_latency(measurement: Any) -> float | None:
    latency = getattr(measurement, "latency_s", None)
    return float(latency["median"]) if isinstance(latency, Mapping) else (float(latency) if latency else None)


def _provenance(comparison: Any) -> str:
    return str(comparison.to_dict().get("provenance") or "measured")


def combine(model: nn.Module, levers: Sequence[Lever], context: LeverContext) -> nn.Module:
    """The model with every lever applied, in the order they combine (`levers.ordered`)."""
    for lever in ordered(levers):
        model = lever.apply(model, context)
    return model


class Combined:
    """Several levers as one, for `evaluate_lever`."""

    lossy = False

    def __init__(self, levers: Sequence[Lever]) -> None:
        self.levers = list(levers)
        self.name = "+".join(lever.name for lever in ordered(levers))
        self.lossy = any(getattr(lever, "lossy", False) for lever in levers)

    def applies_to(self, model: nn.Module, context: LeverContext) -> str | None:
        return None

    def apply(self, model: nn.Module, context: LeverContext) -> nn.Module:
        return combine(model, self.levers, context)

    def recipe(self) -> Mapping[str, Any]:
        return {"levers": [lever.name for lever in ordered(self.levers)]}


def advise(model: nn.Module, inputs: Inputs, *, levers: Sequence[Lever] | None = None,
           make_inputs: Callable[[int], Inputs] | None = None, backend: str | Sequence[Any] = "auto",
           config: MeterConfig | None = None, fidelity_floor: float = DEFAULT_FIDELITY_FLOOR,
           fidelity_batches: Sequence[Any] | None = None, label: str = "model",
           progress: Progress | None = None, on_lever: LeverProgress | None = None,
           clock: Callable[[], float] = time.perf_counter) -> Advice:
    """Measure `model(inputs)`, then each lever (default: `candidate_levers` for its device)
    against it, then the levers worth it together. `make_inputs(n)` builds inputs of batch n
    (for batch levers); `fidelity_batches` are the inputs the fidelity is checked on (default:
    `inputs`; real text where you have it)."""
    from energyprune.torch_io import model_device

    device = model_device(model)
    batch = batch_size_of(inputs)
    if isinstance(backend, str):  # chosen (and its notes said) once, not once per lever
        from energyprune.measure.api import resolve_backends
        from energyprune.torch_io import cuda_devices_of

        backend, _ = resolve_backends(backend, cuda_devices_of(model), None)
    context = LeverContext(device=device, inputs=inputs, batch_size=batch, make_inputs=make_inputs)
    levers = list(levers) if levers is not None else candidate_levers(device.type, batch)
    baseline = measure(model, inputs, backend=backend, config=config, progress=progress, label=label, clock=clock)
    outcomes = []
    for lever in levers:
        if on_lever:
            on_lever(lever.name, "measuring", "")
        outcome = evaluate_lever(model, lever, context, backend=backend, config=config,
                                 fidelity_batches=fidelity_batches, floor=fidelity_floor, progress=progress, clock=clock)
        if on_lever:
            on_lever(lever.name, outcome.status, outcome.reason or outcome.verdict)
        outcomes.append(outcome)
    by_name = {lever.name: lever for lever in levers}
    chosen = [by_name[o.name] for o in outcomes if o.worth_it and not o.workload]
    combined = None
    if len(chosen) > 1:
        together = Combined(chosen)
        if on_lever:
            on_lever(together.name, "measuring", "")
        combined = evaluate_lever(model, together, context, backend=backend, config=config,
                                  fidelity_batches=fidelity_batches, floor=fidelity_floor, progress=progress,
                                  clock=clock)
        combined = replace(combined, levers=tuple(lever.name for lever in ordered(chosen)))
        if on_lever:
            on_lever(together.name, combined.status, combined.reason or combined.verdict)
    data = baseline.to_dict()
    data.pop("power_trace", None)
    return Advice(label=label, device=str(device), provenance=baseline.provenance.value, batch_size=batch,
                  fidelity_floor=fidelity_floor, baseline=data, outcomes=tuple(outcomes), combined=combined)


def best_levers(advice: Advice) -> list[str]:
    """The levers to apply: the combination when it is worth it, else the single best lever."""
    if advice.combined is not None and advice.combined.worth_it:
        single = [o for o in advice.outcomes if o.worth_it and not o.workload]
        best = min(single, key=lambda o: o.ratio or 1.0)
        if (advice.combined.ratio or 1.0) <= (best.ratio or 1.0):
            return list(advice.combined.levers)
        return [best.name]
    single = [o for o in advice.outcomes if o.worth_it and not o.workload]
    return [min(single, key=lambda o: o.ratio or 1.0).name] if single else []
