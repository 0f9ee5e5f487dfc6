"""`prune_to_energy`: prune a copy of a model, step by measured step, until it meets an energy target.

The loop (NetAdapt-style, DESIGN.md section 4), with the real meter between every two steps:

    E0 = measure(original); Q0 = evaluate(original)
    repeat:
        score the remaining units of the CURRENT model with the criterion
        n = next_step_size(...)                      # shrinks as the target nears
        candidate = current without its n lowest-scored units   (a copy)
        recovery(candidate)                          # optional (fine-tune / distil)
        Q = evaluate(candidate); refused if Q < floor (then try half the step)
        r = compare(current, candidate)              # interleaved windows: ratio and its 95% interval
        energy ratio *= r; record the step; checkpoint
    until the target is reached (confirmed by compare(original, final), the figure of record),
    the quality floor would break, nothing is left, the meter cannot resolve the steps, or max_steps.

Why a ratio against the current model each step, not an absolute number: a GPU under its power
cap drifts by more than a pruning step is worth between two measurements minutes apart, and
interleaved windows (A B A B ... A) cancel that drift. The cumulative ratio is the product of the
step ratios; its interval is propagated to first order in log space, steps taken as independent.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from energyprune.backends.base import Backend
from energyprune.budget.checkpoint import Checkpoint, Checkpointer, fingerprint
from energyprune.budget.judge import ComparisonLike, EnergyJudge, MeasurementLike, MeterJudge
from energyprune.budget.result import (
    LOOP_STOP_REASONS,
    FinalFigures,
    OriginalFigures,
    PruneResult,
    PruneStep,
    format_step,
)
from energyprune.budget.levers_phase import LeverSpec, RunForm, levers_by_name, resolve_levers, run_lever_phase
from energyprune.budget.target import EnergyTarget, parse_target
from energyprune.levers.advise import DEFAULT_FIDELITY_FLOOR
from energyprune.levers.base import Lever, LeverContext
from energyprune.backends.base import Provenance, is_estimated
from energyprune.errors import EnergyPruneError, MeasurementError, UsageError
from energyprune.measure.meter import MeterConfig, Progress
from energyprune.torch_io import Inputs, batch_size_of, check_inputs, model_device
from energyprune.pruning.base import Batch, Calibration, Criterion, Unit
from energyprune.pruning.criteria import get_criterion
from energyprune.pruning.kinds import eligible, has_units, remove_units, units_for
from energyprune.pruning.ranking import default_scope, ranking_scores
from energyprune.pruning.surgery.hidden import output_width_warning
from energyprune.pruning.surgery.record import PruneRecord
from energyprune.pruning.surgery.replay import apply_record

logger = logging.getLogger(__name__)

#: How a run over several unit kinds picks each step's kind (`prune_to_energy(kind_choice=...)`).
KIND_CHOICES = ("flops", "energy")

Evaluate = Callable[[nn.Module], float]
Recovery = Callable[[nn.Module], "nn.Module | None"]

#: Take this share of the units the measured saving per unit says are still needed: a step that
#: overshoots costs quality for nothing, one that undershoots only costs another measurement.
APPROACH = 0.75
#: Consecutive steps whose ratio interval contains 1 before the loop says the meter is too coarse.
COARSE_PATIENCE = 2
#: Ratios this close to the goal count as reached (float rounding of a product, not a tolerance).
_EPS = 1e-12


class PruneInterrupted(KeyboardInterrupt):
    """Ctrl-C inside `prune_to_energy`. `result` holds the trajectory so far (stop reason
    "interrupted"; None when the original was not measured yet); it was saved to `checkpoint_dir`
    when one was given, and `prune_to_energy(..., resume=True)` continues from there."""

    def __init__(self, result: PruneResult | None, checkpoint_dir: Path | None) -> None:
        where = f"; resume from the checkpoint in {checkpoint_dir}" if checkpoint_dir else ""
        steps = len(result.steps) if result is not None else 0
        super().__init__(f"pruning interrupted after {steps} step(s){where}")
        self.result = result
        self.checkpoint_dir = checkpoint_dir


# ---- the step-size schedule: a plain function ----------------------------------------------------
def next_step_size(
    *,
    n_available: int,
    n_total: int,
    ratio_now: float,
    ratio_goal: float,
    history: Sequence[tuple[int, float]] = (),
    approach: float = APPROACH,
) -> int:
    """How many units the next step removes.

    The ratio still to remove, `ratio_now - ratio_goal` (in shares of the original's energy), is
    divided by the share one unit saved so far: pooled over `history` - (units removed, share
    saved) of the steps whose saving the meter resolved - or, before any, the prior "each unit
    costs 1/n_total of the model". That prior is an upper bound on a unit's share (embeddings,
    heads and norms cost energy too), so the first step undershoots rather than overshoots.
    `approach` of that need is taken, rounded up: steps shrink as the target nears, never below one
    unit nor above what is left."""
    if n_available < 1:
        return 0
    still = ratio_now - ratio_goal
    if still <= 0:
        return 1
    removed = sum(n for n, saved in history if saved > 0)
    saved = sum(saved for n, saved in history if saved > 0)
    per_unit = saved / removed if removed and saved > 0 else 1.0 / max(n_total, 1)
    need = still / per_unit
    size = math.ceil(approach * need - 1e-9) if math.isfinite(need) else n_available
    return max(1, min(size, n_available))


# ---- the loop's own state, checkpointed after every step ----------------------------------------
@dataclasses.dataclass
class _State:
    original: OriginalFigures
    provenance: str
    n_total: int  # removable units at the start
    steps: list[PruneStep] = dataclasses.field(default_factory=list)
    record: PruneRecord = dataclasses.field(default_factory=PruneRecord)
    log_energy: float = 0.0  # ln of the cumulative energy ratio
    log_energy_var: float = 0.0  # sum of the squared log half-widths (95%)
    log_latency: float = 0.0
    log_power: float = 0.0
    anchored: bool = False  # the running ratio is a direct comparison with the original
    coarse_streak: int = 0
    quality: float | None = None  # of the current model
    fidelity: float | None = 1.0
    flops: int | None = None
    n_params: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0  # before this process (resumed runs)
    history: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (units, share of E0 saved)
    confirmations: int = 0
    levers: dict[str, Any] | None = None  # LeverPhase.to_dict() of the lever phase, when levers were given
    final_recovery: dict[str, Any] | None = None  # fidelity before and after the final recovery

    @property
    def applied_levers(self) -> list[str]:
        return list((self.levers or {}).get("applied") or [])

    @property
    def changed(self) -> bool:
        """Units were removed or levers applied: the model differs from the original."""
        return bool(self.n_removed or self.applied_levers)

    @property
    def energy_ratio(self) -> float:
        return math.exp(self.log_energy)

    @property
    def energy_ratio_ci95(self) -> tuple[float, float]:
        half = math.sqrt(self.log_energy_var)
        return (math.exp(self.log_energy - half), math.exp(self.log_energy + half))

    @property
    def n_removed(self) -> int:
        return sum(len(s.removed) for s in self.steps if s.accepted)

    def tracked_ratio(self, quantity: str) -> float:
        return math.exp({"energy": self.log_energy, "latency": self.log_latency, "power": self.log_power}[quantity])

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            logger.warning("%s", text)
            self.warnings.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": self.original.to_dict(), "provenance": self.provenance, "n_total": self.n_total,
            "steps": [s.to_dict() for s in self.steps], "record": self.record.to_dict(),
            "log_energy": self.log_energy, "log_energy_var": self.log_energy_var,
            "log_latency": self.log_latency, "log_power": self.log_power, "anchored": self.anchored,
            "coarse_streak": self.coarse_streak, "quality": self.quality, "fidelity": self.fidelity,
            "flops": self.flops, "n_params": self.n_params, "warnings": list(self.warnings),
            "elapsed_s": self.elapsed_s, "history": [list(h) for h in self.history],
            "confirmations": self.confirmations, "levers": self.levers, "final_recovery": self.final_recovery,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _State:
        def opt(value: Any, kind: type) -> Any:
            return None if value is None else kind(value)

        return cls(
            original=OriginalFigures.from_dict(d["original"]), provenance=str(d["provenance"]),
            n_total=int(d["n_total"]), steps=[PruneStep.from_dict(s) for s in d["steps"]],
            record=PruneRecord.from_dict(d["record"]), log_energy=float(d["log_energy"]),
            log_energy_var=float(d["log_energy_var"]), log_latency=float(d["log_latency"]),
            log_power=float(d["log_power"]), anchored=bool(d.get("anchored", False)),
            coarse_streak=int(d["coarse_streak"]), quality=opt(d.get("quality"), float),
            fidelity=opt(d.get("fidelity"), float), flops=opt(d.get("flops"), int), n_params=int(d["n_params"]),
            warnings=[str(w) for w in d.get("warnings", [])], elapsed_s=float(d.get("elapsed_s", 0.0)),
            history=[(int(n), float(r)) for n, r in d.get("history", [])],
            confirmations=int(d.get("confirmations", 0)),
            levers=dict(d["levers"]) if d.get("levers") else None,
            final_recovery=dict(d["final_recovery"]) if d.get("final_recovery") else None,
        )


# ---- helpers ----------------------------------------------------------------------------------
def _log_half_width(ratio: float, interval: tuple[float, float]) -> float:
    """Half-width of a ratio's 95% interval in log space (relative, where the interval reaches 0)."""
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return math.inf
    if low > 0 and high > 0:
        return (math.log(high) - math.log(low)) / 2
    return (high - low) / (2 * ratio) if ratio > 0 else math.inf


def _latency(measurement: MeasurementLike) -> float:
    return float(measurement.latency_s["median"])


def _power(measurement: MeasurementLike) -> float | None:
    value = measurement.mean_power_w
    return float(value) if value is not None and math.isfinite(value) else None


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _strip_traces(data: Mapping[str, Any]) -> dict[str, Any]:
    """A comparison's dict without power traces (only the original's measurement keeps its trace)."""
    out = dict(data)
    for side in ("a", "b"):
        if isinstance(out.get(side), Mapping):
            out[side] = {k: (None if k == "power_trace" else v) for k, v in out[side].items()}
    return out


def _as_quality(value: Any, what: str) -> float:
    try:
        quality = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} returned {value!r}, not a number (higher is better)") from None
    if not math.isfinite(quality):
        raise UsageError(f"{what} returned {quality}, not a finite number")
    return quality


def _resolve_criterion(criterion: str | Criterion, unit_kind: str | None, options: dict[str, Any],
                       backend: Any, config: MeterConfig | None) -> tuple[Criterion, str]:
    if isinstance(criterion, str):
        options = dict(options)
        if unit_kind is not None:
            options["unit_kind"] = unit_kind
        name = str(criterion).strip().lower().replace("_", "-")
        if name == "energy-aware":  # it measures too: with the same backend and windows as the loop
            options.setdefault("backend", backend)
            if config is not None:
                options.setdefault("config", config)
        return get_criterion(criterion, **options), name
    if options or unit_kind is not None:
        raise UsageError("criterion options and unit_kind go with a criterion given by name")
    if not isinstance(criterion, Criterion):
        raise UsageError(f"criterion must be a name or an object with name, unit_kind and score(), "
                         f"got {type(criterion).__name__}")
    return criterion, str(criterion.name)


def _scorable_units(model: nn.Module, kind: str, calibration: Calibration | None = None) -> list[Unit]:
    """The units of `kind` that a criterion may score (the kind's own enumeration)."""
    return units_for(model, kind, calibration)


def _eligible(scores: Mapping[Unit, float], units: Sequence[Unit], kind: str, criterion: Criterion) -> list[Unit]:
    """The units the loop may remove, best first, within what the surgery allows (`kinds`), ranked
    as one-shot `prune` ranks them: raw where the criterion's scores compare across layers,
    normalised per layer otherwise (`pruning.ranking`)."""
    return eligible(ranking_scores(scores, kind, default_scope(criterion)), units, kind)


class _Quality:
    """evaluate(model) -> quality, and the semantic fidelity against the original on the
    measurement inputs (`metrics.fidelity.auto_fidelity`: exp(-KL) of next-token
    distributions for language models, top-1 agreement for classifiers, embedding cosine else)."""

    def __init__(self, original: nn.Module, inputs: Inputs, evaluate: Evaluate | None,
                 batches: Sequence[Batch] | None = None) -> None:
        self.original = original
        self.batches: list[Batch] = list(batches) if batches else [inputs]  # type: ignore[list-item]
        self.evaluate = evaluate
        self.fidelity_broken: str | None = None

    def fidelity(self, model: nn.Module) -> float | None:
        from energyprune.metrics.fidelity import auto_fidelity

        if model is self.original:
            return 1.0  # the original against itself, by definition
        if self.fidelity_broken is not None:
            return None
        try:
            return float(auto_fidelity(self.original, model, self.batches))
        except EnergyPruneError as error:
            if self.evaluate is None:
                raise
            self.fidelity_broken = str(error)
            return None

    def check(self) -> None:
        from energyprune.metrics.fidelity import auto_fidelity

        auto_fidelity(self.original, self.original, self.batches)

    def quality(self, model: nn.Module, fidelity: float | None) -> float | None:
        if self.evaluate is None:
            return fidelity
        return _as_quality(self.evaluate(model), "evaluate")


def check_arguments(model: nn.Module, target: str | float | EnergyTarget, criterion: str | Criterion,
                    unit_kind: str | None = None, criterion_options: Mapping[str, Any] | None = None, *,
                    backend: Any = "auto", config: MeterConfig | None = None
                    ) -> tuple[EnergyTarget, Criterion, str, str]:
    """Everything about a run's arguments that can be checked without data or measuring: the
    target, the criterion and its options, and that the model has units of the kind. Returns
    (goal, criterion, its name, the unit kind). The CLI calls it before it replaces an earlier
    run's files, so that a typo never costs them."""
    goal = parse_target(target)
    kinds = split_kinds(unit_kind)
    if len(kinds) > 1:
        if not isinstance(criterion, str):
            raise UsageError("several unit kinds need a criterion given by name (one is built per kind)")
        for kind in kinds:
            crit, name = _resolve_criterion(criterion, kind, dict(criterion_options or {}), backend, config)
            if not units_for(model, kind):
                raise UsageError(f"the model has no {kind} units for {name} to remove")
        return goal, crit, name, ",".join(kinds)
    crit, name = _resolve_criterion(criterion, kinds[0] if kinds else None, dict(criterion_options or {}),
                                    backend, config)
    kind = crit.unit_kind
    if not has_units(model, kind):
        raise UsageError(f"the model has no {kind} units for {name} to remove")
    return goal, crit, name, kind


def split_kinds(unit_kind: str | Sequence[str] | None) -> list[str]:
    """`"neuron,head"` or ["neuron", "head"] as a list of distinct kinds; [] for None."""
    if unit_kind is None:
        return []
    parts = unit_kind.split(",") if isinstance(unit_kind, str) else list(unit_kind)
    kinds = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not kinds:
        raise UsageError(f"unit_kind {unit_kind!r} names no kind")
    return kinds


def _check_same_run(saved: Mapping[str, Any], given: Mapping[str, Any], where: str) -> None:
    """Refuse a resume whose run options (inputs, device, meter...) differ from the saved ones."""
    if not saved:
        return  # a checkpoint written before run options were kept
    keys = sorted(set(saved) | set(given))
    differ = [f"{k} {given.get(k)!r} (the run used {saved.get(k)!r})" for k in keys if saved.get(k) != given.get(k)]
    if differ:
        raise UsageError(f"{where} was made with other options: {'; '.join(differ)}: resume with the same "
                         "options (the resume command printed at the interruption has them all), or start afresh "
                         "in another directory")


# ---- the public function ---------------------------------------------------------------------
def prune_to_energy(
    model: nn.Module,
    target: str | float | EnergyTarget,
    criterion: str | Criterion,
    *,
    inputs: Inputs,
    evaluate: Evaluate | None = None,
    calibration: Iterable[Batch] = (),
    unit_kind: str | None = None,
    quality_floor: float | None = None,
    recovery: Recovery | None = None,
    judge: EnergyJudge | None = None,
    backend: str | Sequence[Backend] = "auto",
    config: MeterConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    max_steps: int = 50,
    progress: Progress | None = None,
    accept_median: bool = False,
    run_options: Mapping[str, Any] | None = None,
    levers: LeverSpec = None,
    lever_floor: float = DEFAULT_FIDELITY_FLOOR,
    final_recovery: Recovery | None = None,
    fidelity_batches: Iterable[Batch] | None = None,
    kind_choice: str = "flops",
    bridge: bool = False,
    **criterion_options: Any,
) -> PruneResult:
    """Prune a copy of `model` until one inference on `inputs` meets `target`, measuring every step.

    target: "0.5J" / "500mJ" (joules per inference), "-30%" / "0.7x" (of the original), "latency<=10ms",
      "power<=150W", or a number of joules (`parse_target`).
    criterion: a name from `energyprune.pruning.criteria.CRITERIA` (built with `unit_kind` and
      `criterion_options`) or a Criterion; it re-scores the current model before every step.
    evaluate: evaluate(model) -> quality, higher is better; default: semantic fidelity against the
      original on `inputs` (1.0 for the original). quality_floor bounds it from below.
    calibration: batches for data-driven criteria (default: `inputs` alone).
    recovery: recovery(model) after each removal (fine-tune / distil in place, or return a new model);
      each step records the fidelity before and after it. final_recovery: the same once more on the
      model the run ends with (more steps, typically), fidelity before and after in `result.recovery`.
    judge: measures and compares models; default `MeterJudge(backend, config)`, the real meter.
    checkpoint_dir / resume: checkpoint after every step; resume=True continues a saved run.
    progress: progress(phase, fraction, message); phase "step" carries one line per step, the
      meter's own phases ("idle", "warmup", "measure") come through the default judge.
    accept_median: count a target met by the median ratio as reached even where its 95% interval
      reaches above the goal (`result.outcome` is "median-only" either way).
    fidelity_batches: the batches the default fidelity is measured on (default: `inputs`); give
      held-out real text here, not the calibration data, so that quality means something.
    kind_choice: with several unit kinds (`unit_kind="neuron,head"`), how each step picks its kind:
      "flops" (default) by fidelity lost per FLOP saved, FLOPs standing in for joules; "energy" by
      fidelity lost per joule saved, each kind's candidate compared with the current model by the
      judge (one comparison per kind per step; the chosen kind's comparison is the step's own).
    bridge: remove blocks with a least-squares linear bridge fitted on `calibration` and folded into
      the block before each removed run (`pruning.surgery.bridge`, ReplaceMe): the same shapes and
      energy as plain removal, less fidelity lost. Only block steps are bridged.
    run_options: what else defines the run (inputs, device, dtype, meter settings...), JSON-able;
      kept in the checkpoint, and a resume with other values is refused, naming them.
    levers: "auto", lever names ("compile,bf16") or lever objects (`energyprune.levers`), tried on
      the original before any pruning, each by the judge against the original and with its fidelity
      (at least `lever_floor`) on the calibration batches; those worth it run every later model, and
      pruning only has to find what is still missing. `result.levers` shows their ratio apart.

    Returns a `PruneResult` whose `model` is the pruned copy; the caller's model is never changed.
    Ctrl-C raises `PruneInterrupted` (a KeyboardInterrupt) with the trajectory so far, checkpointed.
    """
    started = time.perf_counter()
    goal, crit, crit_name, kind = check_arguments(model, target, criterion, unit_kind, criterion_options,
                                                  backend=backend, config=config)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise UsageError(f"max_steps must be a whole number of at least 1, got {max_steps!r}")
    if bridge and "block" not in kind.split(","):
        raise UsageError(f"a bridge replaces removed blocks, but this run removes {kind} units: add block to the "
                         f"unit kinds or drop the bridge")
    if quality_floor is not None:
        quality_floor = _as_quality(quality_floor, "quality_floor")
    if evaluate is not None and not callable(evaluate):
        raise UsageError("evaluate must be callable as evaluate(model) -> float (higher is better)")
    for name, hook in (("recovery", recovery), ("final_recovery", final_recovery)):
        if hook is not None and not callable(hook):
            raise UsageError(f"{name} must be callable as {name}(model)")
    if judge is not None:
        if config is not None or backend != "auto":
            raise UsageError("backend and config set up the default judge: give them to your judge instead")
        if not isinstance(judge, EnergyJudge):
            raise UsageError(f"judge must have measure(model, inputs) and compare(a, b, inputs), "
                             f"got {type(judge).__name__}")
    lever_list = resolve_levers(levers, model, inputs)
    lever_floor = _as_quality(lever_floor, "lever_floor")
    if kind_choice not in KIND_CHOICES:
        raise UsageError(f"kind_choice must be one of {', '.join(KIND_CHOICES)}, got {kind_choice!r}")
    if resume and checkpoint_dir is None:
        raise UsageError("resume=True needs the checkpoint_dir of the run to resume")
    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    if checkpointer is not None and not resume and checkpointer.exists():
        raise UsageError(f"{checkpointer.path} already holds a run: pass resume=True to continue it, or choose "
                         "another directory (nothing is overwritten)")
    calibration = list(calibration) or [inputs]
    report = progress or (lambda phase, fraction, message: None)
    if judge is None:
        judge = MeterJudge(backend, config, progress=progress)

    # Everything that can fail on the user's arguments fails here, before any measuring.
    check_inputs(model, inputs)
    quality = _Quality(model, inputs, evaluate, list(fidelity_batches) if fidelity_batches is not None else None)
    if evaluate is None:
        quality.check()  # the default fidelity must be able to read the outputs: fail now, not after measuring
        narrows = output_width_warning(model) if "hidden" in kind.split(",") else None
        if narrows:  # the default fidelity compares outputs of one width: it would fail after the first step
            raise UsageError(f"{narrows}; the default quality (the outputs' similarity to the original's) cannot "
                             "compare outputs of different widths: give evaluate= (a score of your task) to prune "
                             "the hidden size anyway")
    if bridge:
        from energyprune.pruning.surgery.bridge import check_bridgeable

        check_bridgeable(model, calibration[0])  # a post-norm model fails here, not after measuring
    criteria = {kind: crit}
    if "," in kind:
        criteria = {k: _resolve_criterion(criterion, k, dict(criterion_options), backend, config)[0]
                    for k in kind.split(",")}
    loop = _Loop(_Setup(
        original=model, goal=goal, criterion=crit, criterion_name=crit_name, kind=kind, inputs=inputs,
        criteria=criteria,
        calibration=calibration, quality=quality, quality_floor=quality_floor, recovery=recovery, judge=judge,
        checkpointer=checkpointer, max_steps=max_steps, report=report, started=started,
        accept_median=bool(accept_median),
        # bridge changes what each step removes: a resumed run must bridge the same way
        run_options={**dict(run_options or {}), **({"bridge": True} if bridge else {})}, levers=tuple(lever_list),
        lever_floor=lever_floor, final_recovery=final_recovery, kind_choice=kind_choice, bridge=bool(bridge)))
    if resume:
        assert checkpointer is not None
        done = loop.restore(checkpointer.load())
        if done is not None:
            return done
    else:
        loop.scores_now()  # a criterion that does not apply fails before the first measurement
    try:
        if not resume:
            loop.measure_original()
            loop.apply_levers()
        return loop.run()
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, PruneInterrupted):
            raise
        partial = loop.interrupted()
        raise PruneInterrupted(partial, checkpointer.directory if checkpointer and partial else None) from None


@dataclasses.dataclass(frozen=True)
class _Setup:
    """Everything `prune_to_energy` resolved from its arguments, for one run of the loop."""

    original: nn.Module
    goal: EnergyTarget
    criterion: Criterion
    criterion_name: str
    kind: str
    inputs: Inputs
    calibration: list[Batch]
    quality: _Quality
    quality_floor: float | None
    recovery: Recovery | None
    judge: EnergyJudge
    checkpointer: Checkpointer | None
    max_steps: int
    report: Progress
    started: float
    accept_median: bool = False
    run_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    levers: tuple[Lever, ...] = ()
    lever_floor: float = DEFAULT_FIDELITY_FLOOR
    final_recovery: Recovery | None = None
    criteria: dict[str, Criterion] = dataclasses.field(default_factory=dict)  # per kind, with several kinds
    kind_choice: str = "flops"
    bridge: bool = False


class _Loop:
    """The loop's moving parts. One object per call of `prune_to_energy`."""

    def __init__(self, setup: _Setup) -> None:
        self.original = setup.original
        self.goal = setup.goal
        self.criterion = setup.criterion
        self.criterion_name = setup.criterion_name
        self.kind = setup.kind
        self.criteria = setup.criteria or {setup.kind: setup.criterion}
        self.kind_choice = setup.kind_choice
        self.bridge = setup.bridge
        self._kind_scores: dict[str, tuple[list[Unit], dict[Unit, float]]] = {}
        self._kind_totals: dict[str, int] = {}
        self.inputs = setup.inputs
        self.calibration = setup.calibration
        self.q = setup.quality
        self.quality_floor = setup.quality_floor
        self.recovery = setup.recovery
        self.judge = setup.judge
        self.checkpointer = setup.checkpointer
        self.max_steps = setup.max_steps
        self.report = setup.report
        self.started = setup.started
        self.accept_median = setup.accept_median
        self.run_options = setup.run_options
        self.current: nn.Module = setup.original
        self.state: _State | None = None
        self._scores: tuple[list[Unit], dict[Unit, float]] | None = None
        self._flops_failed = False
        self._flops_error = ""
        self.fingerprint = fingerprint(setup.original)
        self.step_cap: int | None = None  # after a refused step: at most half of it next
        self.direct: ComparisonLike | None = None  # the last direct comparison with the original
        self.final_recovery = setup.final_recovery
        self.levers_given = list(setup.levers)
        self.lever_floor = setup.lever_floor
        # The model as it is measured and judged: with the levers found worth it (none yet).
        self.run_form = RunForm([], LeverContext(model_device(setup.original), setup.inputs,
                                                 batch_size_of(setup.inputs)))

    # ---- figures ------------------------------------------------------------------------------
    def flops(self, model: nn.Module) -> int | None:
        if self._flops_failed:
            return None
        from energyprune.metrics.flops import count_flops

        try:
            return count_flops(model, self.inputs)
        except Exception as error:  # FlopCounterMode does not know every op; FLOPs are extra
            self._flops_failed = True
            self._flops_error = f"FLOPs could not be counted ({type(error).__name__}: {error}); left out"
            if self.state is not None:
                self.state.warn(self._flops_error)
            return None

    def scores_of(self, kind: str) -> tuple[list[Unit], dict[Unit, float]]:
        """Units and scores of one of several kinds on the current model (cached until a step)."""
        if kind not in self._kind_scores:
            units = _scorable_units(self.current, kind, self.calibration)
            scores = self.criteria[kind].score(self.current, units, self.calibration) if units else {}
            self._kind_scores[kind] = (units, dict(scores))
        return self._kind_scores[kind]

    def choose_kind(self, ratio_now: float) -> tuple[str, list[Unit], str, ComparisonLike | None] | None:
        """With several kinds: for each, the units the schedule would take next, removed on a copy;
        the kind whose candidate loses the least fidelity per FLOP saved (`kind_choice="flops"`:
        FLOPs as the proxy of the joules saved) or per joule saved (`"energy"`: each candidate
        compared with the current model by the judge, a comparison per kind) is this step's, with
        its comparison when one was made. None when no kind has a unit left to remove."""
        state = self.state
        assert state is not None
        options = []
        base_fidelity = state.fidelity if state.fidelity is not None else 1.0
        if state.applied_levers:  # candidates' fidelity is taken plain (compiling each would cost minutes)
            plain = self.q.fidelity(self.current)
            base_fidelity = plain if plain is not None else base_fidelity
        base_flops = state.flops
        for kind in self.criteria:
            try:
                units, scores = self.scores_of(kind)
            except UsageError:
                continue
            eligible_units = _eligible(scores, units, kind, self.criteria[kind])
            if not eligible_units:
                continue
            if kind not in self._kind_totals:
                self._kind_totals[kind] = len(units_for(self.original, kind))
            n = next_step_size(n_available=len(eligible_units), n_total=self._kind_totals[kind] * len(self.criteria),
                               ratio_now=ratio_now, ratio_goal=self.goal_ratio())
            if self.step_cap is not None:
                n = min(n, self.step_cap)
            chosen = eligible_units[:n]
            candidate, _ = remove_units(self.current, chosen, calibration=self.calibration, bridge=self.bridge)
            fidelity = self.q.fidelity(candidate)
            lost = base_fidelity - fidelity if fidelity is not None else None
            flops = self.flops(candidate)
            saved_flops = (base_flops - flops) if (base_flops is not None and flops is not None) else None
            comparison, saved_j = None, None
            if self.kind_choice == "energy":
                comparison = self.judge.compare(self.run_form(self.current), self.run_form(candidate), self.inputs)
                ratio, high = float(comparison.ratio), float(comparison.ratio_ci95[1])
                if math.isfinite(ratio) and 0 < ratio and high < 1.0:  # a saving the meter resolved
                    saved_j = self.current_energy_j() * (1.0 - ratio)
            saved = saved_j if self.kind_choice == "energy" else saved_flops
            cost = math.inf if (saved is None or saved <= 0 or lost is None) else max(lost, 0.0) / saved
            options.append((cost, -(saved or 0), kind, chosen, lost, saved, saved_flops, comparison))
            del candidate
        if not options:
            return None
        unit = "joule" if self.kind_choice == "energy" else "FLOP"
        if self.kind_choice == "energy" and all(math.isinf(o[0]) for o in options):
            # No candidate's saving was resolved: FLOPs decide rather than the order of the kinds.
            unit = "FLOP (no kind's energy saving was resolved by the meter)"
            options = [(math.inf if (o[6] is None or o[6] <= 0 or o[4] is None) else max(o[4], 0.0) / o[6],
                        -(o[6] or 0), *o[2:]) for o in options]
        options.sort(key=lambda o: (o[0], o[1]))
        _, _, kind, chosen, _, _, _, comparison = options[0]

        def saving(option: tuple[Any, ...]) -> str:
            if self.kind_choice == "energy":
                return "saving not resolved" if option[5] is None else f"{option[5] * 1e3:.4g} mJ/inference"
            return "FLOPs not counted" if option[6] is None else f"{option[6] / 1e6:.4g} MFLOPs"

        why = "; ".join(f"{o[2]}: {len(o[3])} units, fidelity -{o[4]:.4f} for {saving(o)}"
                        if o[4] is not None else f"{o[2]}: {len(o[3])} units, fidelity not measured" for o in options)
        return kind, chosen, f"kind {kind} chosen by fidelity lost per {unit} saved ({why})", comparison

    def current_energy_j(self) -> float:
        """The current model's energy per inference as the loop tracks it (original x running ratio)."""
        assert self.state is not None
        return self.state.original.per_inference_j * math.exp(self.state.log_energy)

    def scores_now(self) -> tuple[list[Unit], dict[Unit, float]]:
        if "," in self.kind:
            # Several kinds: the first one stands for the checks made before measuring.
            return self.scores_of(next(iter(self.criteria)))
        if self._scores is None:
            units = _scorable_units(self.current, self.kind, self.calibration)
            scores = self.criterion.score(self.current, units, self.calibration) if units else {}
            self._scores = (units, dict(scores))
        return self._scores

    def goal_ratio(self) -> float:
        assert self.state is not None
        o = self.state.original
        base = {"energy": o.per_inference_j, "latency": o.latency_s, "power": o.mean_power_w or math.nan}
        return self.goal.goal_ratio(base[self.goal.quantity])

    def reached(self, ratio: float) -> bool:
        return ratio <= self.goal_ratio() * (1 + _EPS)

    # ---- phases -------------------------------------------------------------------------------
    def measure_original(self) -> None:
        self.report("original", 0.0, "measuring the original model")
        measurement = self.judge.measure(self.original, self.inputs)
        energy_j = float(measurement.per_inference_j)
        if not (math.isfinite(energy_j) and energy_j > 0):
            raise MeasurementError(f"the original measured {energy_j} J per inference: nothing to prune against")
        latency = _latency(measurement)
        power = _power(measurement)
        self.goal.check_original(energy_j, latency, power)
        q0 = self.q.quality(self.original, 1.0)
        if self.quality_floor is not None and q0 is not None and q0 < self.quality_floor:
            raise UsageError(f"the original model's quality is {q0:.4g}, already below the quality floor "
                             f"{self.quality_floor:.4g}: lower the floor")
        data = measurement.to_dict()
        original = OriginalFigures(energy_j, tuple(measurement.ci95_j), latency, power, _n_params(self.original),
                                   self.flops(self.original), q0, data)
        if "," in self.kind:
            n_total = sum(len(units_for(self.original, k)) for k in self.criteria)
        else:
            units, scores = self.scores_now()
            n_total = len(_eligible(scores, units, self.kind, self.criterion))
        self.state = _State(original=original, provenance=Provenance(measurement.provenance).value,
                            n_total=n_total, quality=q0, fidelity=1.0, flops=original.flops,
                            n_params=original.n_params)
        if self._flops_error:
            self.state.warn(self._flops_error)
        if "hidden" in self.kind.split(",") and (note := output_width_warning(self.original)):
            self.state.warn(note)
        self.preview_cost()
        for text in measurement.warnings:
            self.state.warn(f"original: {text}")
        self.save("running")
        self.report("original", 1.0, f"original: {_fmt_j(energy_j)}/inference"
                    f"{' (ESTIMATED)' if self.estimated else ''}, {original.n_params / 1e6:.3g} M params")

    def apply_levers(self) -> None:
        """The lever phase (`budget.levers_phase`): its saving becomes the running ratio's first factor."""
        state = self.state
        assert state is not None
        if not self.levers_given:
            return
        self.report("levers", 0.0, f"trying {len(self.levers_given)} lever(s) on the original")
        phase, applied, comparison = run_lever_phase(
            self.original, self.levers_given, self.inputs,
            lambda a, b: self.judge.compare(a, b, self.inputs), self.calibration[:2], self.lever_floor,
            lambda text: self.report("levers", 0.5, text))
        state.levers = phase.to_dict()
        if applied and comparison is not None:
            self.run_form = RunForm(applied, self.run_form.context)
            self.anchor(comparison)
            state.fidelity = self.q.fidelity(self.run_form(self.original))
            state.quality = self.q.quality(self.run_form(self.original), state.fidelity)
            self.report("levers", 1.0, f"levers {', '.join(phase.applied)}: energy ratio {phase.ratio:.3f} before "
                        "any pruning")
        else:
            self.report("levers", 1.0, "no lever saved energy beyond its interval with the fidelity asked: pruning "
                        "alone")
        self.save("running")

    def preview_cost(self) -> None:
        """Say up front when the target needs more than half of what this kind can remove (FLOPs
        as the proxy): a warning in the result, not a refusal - the measured steps decide."""
        from energyprune.pruning.preview import PREVIEW_KINDS, preview_cost

        assert self.state is not None
        if self.goal.quantity != "energy" or self.kind not in PREVIEW_KINDS:
            return
        ratio = self.goal_ratio()
        if not 0 < ratio < 1:
            return
        try:
            preview = preview_cost(self.original, self.inputs, self.kind, ratio)
        except Exception as error:  # the preview is advice: a model FlopCounterMode cannot follow still prunes
            logger.info("no cost preview: %s", error)
            return
        if preview.too_costly:
            self.state.warn(preview.message())
        else:
            logger.info("%s", preview.message())

    @property
    def estimated(self) -> bool:
        return self.state is not None and is_estimated(self.state.provenance)

    def restore(self, checkpoint: Checkpoint) -> PruneResult | None:
        where = str(self.checkpointer.path) if self.checkpointer else "the checkpoint"
        checkpoint.check_matches(self.fingerprint, self.goal.to_dict(), self.criterion_name, self.kind, where)
        _check_same_run(dict(checkpoint.extra.get("run_options") or {}), self.run_options, where)
        try:
            state = _State.from_dict(checkpoint.state)
        except (KeyError, TypeError, ValueError, EnergyPruneError) as error:
            raise UsageError(f"{where} is damaged ({type(error).__name__}: {error}): fix it, or start afresh in "
                             "another directory (nothing was deleted)") from None
        current = apply_record(self.original, state.record) if len(state.record) else self.original
        if checkpoint.has_weights and self.checkpointer is not None:
            try:
                current.load_state_dict(self.checkpointer.load_weights())
            except RuntimeError as error:  # missing, unexpected or misshapen keys
                first = str(error).strip().splitlines()[0]
                raise UsageError(f"the checkpoint weights {self.checkpointer.weights_path} do not fit the model the "
                                 f"record rebuilds ({first}): start afresh in another directory (nothing was "
                                 "deleted)") from None
        stored = checkpoint.result
        if checkpoint.status == "done" and stored is not None:
            result = PruneResult.from_dict(stored)
            if result.stop_reason != "max-steps" or len(state.steps) >= self.max_steps:
                logger.info("the run in %s already finished (%s): returning its result", where, result.stop_reason)
                return dataclasses.replace(result, model=current)
        self.state = state
        self.current = current
        if state.applied_levers:
            self.run_form = RunForm(levers_by_name(state.applied_levers, self.levers_given), self.run_form.context)
        self.report("original", 1.0, f"resumed after step {len(state.steps)} from {where}")
        return None

    def run(self) -> PruneResult:
        state = self.state
        assert state is not None
        quantity = self.goal.quantity
        while True:
            ratio_now = state.tracked_ratio(quantity)
            if state.changed and self.reached(ratio_now):
                confirmed = self.confirm()
                if confirmed is not None:
                    return confirmed
                continue
            if len(state.steps) >= self.max_steps:
                return self.finish("max-steps", f"the step limit ({self.max_steps}) was reached")
            if "," in self.kind:
                picked = self.choose_kind(ratio_now)
                if picked is None:
                    return self.finish("nothing-left", f"no unit of {self.kind} is left that may be removed")
                stop = self.step(picked[1], note=picked[2], measured=picked[3])
                if stop is not None:
                    return stop
                continue
            try:
                units, scores = self.scores_now()
            except UsageError:
                if not (state.n_removed and self.kind in ("block", "attention")):
                    raise
                # One block left: the model no longer has a stack of blocks to enumerate.
                return self.finish("nothing-left", f"one {self.kind} is left, and it must stay")
            eligible = _eligible(scores, units, self.kind, self.criterion)
            if not eligible:
                left = len(units) - len([s for s in scores.values() if math.isfinite(s)])
                why = f"no {self.kind} is left that may be removed"
                if left > 0:
                    why += f" ({left} are protected or outside the criterion's rule)"
                return self.finish("nothing-left", why)
            n = next_step_size(n_available=len(eligible), n_total=state.n_total, ratio_now=ratio_now,
                               ratio_goal=self.goal_ratio(), history=state.history)
            if self.step_cap is not None:
                n = min(n, self.step_cap)
            stop = self.step(eligible[:n])
            if stop is not None:
                return stop

    def step(self, chosen: list[Unit], note: str = "", measured: ComparisonLike | None = None) -> PruneResult | None:
        """Try removing `chosen` from the current model; returns a result when the loop stops.
        `measured`: the comparison of this very candidate with the current model, already made when
        the kind was chosen by energy (recovery changes weights, not shapes, so it still holds)."""
        state = self.state
        assert state is not None
        if note:
            logger.info("%s", note)
        t0 = time.perf_counter()
        index = len(state.steps) + 1
        candidate, record = remove_units(self.current, chosen, calibration=self.calibration, bridge=self.bridge)
        fidelity_before = None
        if self.recovery is not None:
            # What the removal cost before recovery wins part of it back: both go in the step.
            fidelity_before = self.q.fidelity(self.run_form(candidate))
            returned = self.recovery(candidate)
            if isinstance(returned, nn.Module):
                candidate = returned
        fidelity = self.q.fidelity(self.run_form(candidate))
        quality = self.q.quality(self.run_form(candidate), fidelity)
        n_params = _n_params(candidate)
        flops = self.flops(candidate)
        if flops is not None and flops == state.flops and n_params < state.n_params:
            state.warn("the FLOP count did not change although parameters were removed: FlopCounterMode does "
                       "not see some operations (fused kernels such as nn.TransformerEncoderLayer's fast path), "
                       "so the FLOPs figures are lower bounds")
        if self.quality_floor is not None and quality is not None and quality < self.quality_floor:
            note = (f"quality {quality:.4g} is below the floor {self.quality_floor:.4g}: refused, not measured")
            refused = PruneStep(index, tuple(chosen), state.n_removed, n_params, flops, None, None, None, None,
                                None, None, quality, fidelity, False, note, time.perf_counter() - t0,
                                removed_original=tuple(state.record.original_unit(u) for u in chosen),
                                fidelity_before_recovery=fidelity_before)
            state.steps.append(refused)
            self.emit(refused)
            if len(chosen) > 1:
                self.step_cap = len(chosen) // 2
                self.save("running")
                return None
            paths = ", ".join(u.path + (f"[{u.index}]" if u.kind == "neuron" else "") for u in refused.removed_original)
            return self.finish("quality-floor",
                               f"removing even one more {self.kind} ({paths}) brings the quality to {quality:.4g}, "
                               f"below the floor {self.quality_floor:.4g}")
        comparison = measured if measured is not None else self.judge.compare(
            self.run_form(self.current), self.run_form(candidate), self.inputs)
        ratio = float(comparison.ratio)
        interval = (float(comparison.ratio_ci95[0]), float(comparison.ratio_ci95[1]))
        if not (math.isfinite(ratio) and ratio > 0):
            raise MeasurementError(f"step {index}: the comparison gave an energy ratio of {ratio}, which is not a "
                                   "positive number")
        state.provenance = Provenance.combine(state.provenance, comparison).value
        half = _log_half_width(ratio, interval)
        state.log_energy += math.log(ratio)
        state.log_energy_var += half * half
        a_latency, b_latency = _latency(comparison.a), _latency(comparison.b)
        if a_latency > 0 and b_latency > 0:
            state.log_latency += math.log(b_latency / a_latency)
        a_power, b_power = _power(comparison.a), _power(comparison.b)
        if a_power and b_power:
            state.log_power += math.log(b_power / a_power)
        state.anchored = False
        self.direct = None
        resolved = interval[1] < 1.0
        notes = []
        if resolved:
            state.coarse_streak = 0
            # The share of the original's energy this step saved: the ratio before it times (1 - r).
            state.history.append((len(chosen), math.exp(state.log_energy - math.log(ratio)) * (1.0 - ratio)))
        else:
            state.coarse_streak += 1
            notes.append(f"saving not resolved: the ratio's 95% interval {interval[0]:.3f} .. {interval[1]:.3f} "
                         "reaches 1")
        for text in tuple(comparison.a.warnings) + tuple(comparison.b.warnings):
            state.warn(f"step {index}: {text}")
        removed_original = tuple(state.record.original_unit(u) for u in chosen)
        self.current = candidate
        self._scores = None
        self._kind_scores = {}
        self.step_cap = None
        if note:
            notes.insert(0, note)
        state.record = state.record + record
        state.quality, state.fidelity, state.flops, state.n_params = quality, fidelity, flops, n_params
        e_ratio = state.energy_ratio
        accepted = PruneStep(
            index=index, removed=tuple(chosen), n_removed_total=state.n_removed + len(chosen), n_params=n_params,
            flops=flops, step_ratio=ratio, step_ratio_ci95=interval, energy_ratio=e_ratio,
            energy_ratio_ci95=state.energy_ratio_ci95, per_inference_j=state.original.per_inference_j * e_ratio,
            latency_s=b_latency, quality=quality, fidelity=fidelity, accepted=True, note="; ".join(notes),
            duration_s=time.perf_counter() - t0, latency_ratio=state.tracked_ratio("latency"),
            mean_power_w=b_power, comparison=_strip_traces(comparison.to_dict()), removed_original=removed_original,
            fidelity_before_recovery=fidelity_before)
        state.steps.append(accepted)
        self.save("running")
        self.emit(accepted)
        if state.coarse_streak >= COARSE_PATIENCE:
            return self.finish(
                "too-coarse",
                f"the energy ratio intervals of the last {state.coarse_streak} steps reached 1 (last "
                f"{interval[0]:.3f} .. {interval[1]:.3f}): the meter cannot resolve savings this small; measure "
                "longer or more windows (--duration, --repeats) or use a hardware counter")
        return None

    def confirm(self) -> PruneResult | None:
        """The running product says the target is reached: compare the current model with the
        original directly. If that figure of record agrees, stop; if not, continue from it."""
        state = self.state
        assert state is not None
        self.report("final", 0.0, "confirming against the original")
        comparison = self.judge.compare(self.original, self.run_form(self.current), self.inputs)
        self.anchor(comparison)
        state.confirmations += 1
        ratio = state.tracked_ratio(self.goal.quantity)
        if self.reached(ratio):
            return self.finish("target-reached", "", comparison=comparison)
        state.warn(f"the product of the step ratios said the target was reached; the direct comparison with the "
                   f"original says {self.goal.quantity} ratio {ratio:.4f} (goal {self.goal_ratio():.4f}): continuing "
                   "from the direct figure")
        self.save("running")
        return None

    def anchor(self, comparison: ComparisonLike) -> None:
        """Replace the running product by a direct comparison with the original."""
        state = self.state
        assert state is not None
        ratio = float(comparison.ratio)
        if not (math.isfinite(ratio) and ratio > 0):
            raise MeasurementError(f"the final comparison gave an energy ratio of {ratio}")
        interval = (float(comparison.ratio_ci95[0]), float(comparison.ratio_ci95[1]))
        half = _log_half_width(ratio, interval)
        state.log_energy, state.log_energy_var = math.log(ratio), half * half
        a_latency, b_latency = _latency(comparison.a), _latency(comparison.b)
        if a_latency > 0 and b_latency > 0:
            state.log_latency = math.log(b_latency / a_latency)
        a_power, b_power = _power(comparison.a), _power(comparison.b)
        if a_power and b_power:
            state.log_power = math.log(b_power / a_power)
        state.anchored = True
        self.direct = comparison
        state.provenance = Provenance.combine(state.provenance, comparison).value

    def finish(self, reason: str, why: str, comparison: ComparisonLike | None = None) -> PruneResult:
        state = self.state
        assert state is not None
        if comparison is None and reason != "interrupted" and state.changed and not state.anchored:
            self.report("final", 0.0, "comparing the final model with the original")
            comparison = self.judge.compare(self.original, self.run_form(self.current), self.inputs)
            self.anchor(comparison)
        comparison = comparison or self.direct
        ratio = state.tracked_ratio(self.goal.quantity)
        met = state.changed and state.anchored and self.reached(ratio)
        outcome = "not-reached"
        if met:
            # Energy targets have an interval: reached only when all of it is at or below the goal.
            # Latency and power ratios are medians without one, and count as met.
            high = state.energy_ratio_ci95[1] if quantity_is_energy(self.goal) else ratio
            outcome = "reached" if high <= self.goal_ratio() * (1 + _EPS) else "median-only"
            if outcome == "median-only":
                state.warn(f"the target is met by the median ratio {ratio:.4f}, but its 95% interval reaches "
                           f"{high:.4f}, above the goal {self.goal_ratio():.4f}: not confirmed at 95% (measure "
                           "longer windows or more repeats for a firmer figure"
                           + ("; counted as reached because of accept_median" if self.accept_median else "") + ")")
        reached = outcome == "reached" or (outcome == "median-only" and self.accept_median)
        if reason != "interrupted":
            self.recover_final()
        if met:
            if reason != "target-reached":
                why = f"{why}; the direct comparison with the original shows the target met"
            reason = "target-reached" if outcome == "reached" else "median-reached"
        result = self.result(reason, reached, why, comparison, outcome)
        self.save("interrupted" if reason == "interrupted" else "done", result)
        self.report("final", 1.0, result.message)
        return result

    def recover_final(self) -> None:
        """The longer recovery at the end (`final_recovery`), on the model the run keeps. It changes
        weights, not shapes (adapters are merged back), so the energy figures stand; the fidelity
        before and after it is recorded."""
        state = self.state
        assert state is not None
        if self.final_recovery is None or not state.n_removed or state.final_recovery is not None:
            return
        self.report("final", 0.5, "final recovery")
        before = state.fidelity
        returned = self.final_recovery(self.current)
        if isinstance(returned, nn.Module):
            self.current = returned
        state.fidelity = self.q.fidelity(self.run_form(self.current))
        state.quality = self.q.quality(self.run_form(self.current), state.fidelity)
        state.final_recovery = {"fidelity_before": before, "fidelity_after": state.fidelity}
        self.report("final", 0.6, f"final recovery: fidelity {_fmt_q(before)} -> {_fmt_q(state.fidelity)}")

    def interrupted(self) -> PruneResult | None:
        if self.state is None:
            return None
        return self.finish("interrupted", f"interrupted after step {len(self.state.steps)}")

    # ---- output -------------------------------------------------------------------------------
    def result(self, reason: str, reached: bool, why: str, comparison: ComparisonLike | None,
               outcome: str = "") -> PruneResult:
        state = self.state
        assert state is not None
        o = state.original
        e_ratio = state.energy_ratio if state.changed else 1.0
        e_ci = state.energy_ratio_ci95 if state.changed else (1.0, 1.0)
        final = FinalFigures(
            energy_ratio=e_ratio, energy_ratio_ci95=e_ci, per_inference_j=o.per_inference_j * e_ratio,
            n_params=state.n_params, flops=state.flops, quality=state.quality, fidelity=state.fidelity,
            latency_s=(_latency(comparison.b) if comparison is not None else
                       o.latency_s * state.tracked_ratio("latency")),
            latency_ratio=state.tracked_ratio("latency") if state.changed else 1.0,
            comparison=_strip_traces(comparison.to_dict()) if comparison is not None else None)
        message = self.message(reason, reached, why, final, outcome)
        return PruneResult(
            model_name=type(self.original).__name__, criterion=self.criterion_name, unit_kind=self.kind,
            target=self.goal, target_j=self.goal.target_j(o.per_inference_j), reached=reached, stop_reason=reason,
            message=message, provenance=state.provenance, original=o, steps=tuple(state.steps), final=final,
            record=state.record, duration_s=state.elapsed_s + time.perf_counter() - self.started,
            warnings=tuple(state.warnings + ([f"fidelity could not be computed: {self.q.fidelity_broken}"]
                                             if self.q.fidelity_broken else [])),
            model=self.current, outcome=outcome or ("reached" if reached else "not-reached"),
            levers=state.levers, recovery=state.final_recovery)

    def message(self, reason: str, reached: bool, why: str, final: FinalFigures, outcome: str = "") -> str:
        state = self.state
        assert state is not None
        tag = " (ESTIMATED)" if self.estimated else ""
        quantity = self.goal.quantity
        ratio = state.tracked_ratio(quantity) if state.changed else 1.0
        low, high = final.energy_ratio_ci95
        figure = (f"energy {final.energy_ratio:.3f}x of the original [95% {low:.3f} .. {high:.3f}], "
                  f"{_fmt_j(state.original.per_inference_j)} -> {_fmt_j(final.per_inference_j)} per inference{tag}")
        if quantity != "energy":
            figure = f"{quantity} {ratio:.3f}x of the original, " + figure
        basis = "" if state.anchored or not state.changed else " (product of step ratios, not confirmed directly)"
        done = (f"{state.n_removed} {self.kind} unit(s) removed in {len(state.steps)} step(s), "
                f"{state.original.n_params / 1e6:.3g} -> {state.n_params / 1e6:.3g} M params")
        if state.applied_levers:
            lever_ratio = (state.levers or {}).get("ratio")
            pruning = math.prod(s.step_ratio for s in state.steps if s.accepted and s.step_ratio is not None)
            done = (f"levers {', '.join(state.applied_levers)} {lever_ratio:.3f}x (their own comparison), pruning "
                    f"{pruning:.3f}x (product of its steps); {done}")
        if state.quality is not None:
            done += f", quality {state.quality:.4g}"
        if outcome == "median-only":
            head = (f"target {self.goal.text} met by the median only (not confirmed at 95%): {figure}{basis}; {done}"
                    + ("; accepted as reached" if reached else ""))
            return head + (f" ({why})" if why else "")
        if reached:
            head = f"target {self.goal.text} reached: {figure}{basis}; {done}"
            return head + (f" ({why})" if why else "")
        need = self.goal_ratio()
        head = f"target {self.goal.text} not reached: {figure}{basis}, needed {need:.3f}x of the {quantity}"
        return f"{head}; {done}; stopped because {why or LOOP_STOP_REASONS[reason]}"

    def emit(self, step: PruneStep) -> None:
        state = self.state
        assert state is not None
        goal = self.goal_ratio()
        now = state.tracked_ratio(self.goal.quantity)
        fraction = min(1.0, max(0.0, (1 - now) / (1 - goal))) if goal < 1 else 0.0
        self.report("step", fraction, format_step(step, estimated=self.estimated))

    def save(self, status: str, result: PruneResult | None = None) -> None:
        if self.checkpointer is None or self.state is None:
            return
        data = self.state.to_dict()
        data["elapsed_s"] = self.state.elapsed_s + (time.perf_counter() - self.started)
        recovered = self.recovery is not None or self.state.final_recovery is not None
        weights = self.current.state_dict() if recovered and self.state.n_removed else None
        checkpoint = Checkpoint(self.fingerprint, self.goal.to_dict(), self.criterion_name, self.kind, status, data,
                                result.to_dict() if result is not None else None, weights is not None,
                                {"run_options": self.run_options})
        self.checkpointer.save(checkpoint, weights)


def quantity_is_energy(goal: EnergyTarget) -> bool:
    return goal.quantity == "energy"


def _fmt_q(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt_j(value: float) -> str:
    from energyprune.units import format_energy

    return format_energy(value)
