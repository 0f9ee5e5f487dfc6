"""The default judge is the real meter: one short run end to end on the estimated backend."""

from __future__ import annotations

import json
import math

from energyprune.budget import prune_to_energy
from energyprune.measure.meter import MeterConfig
from tests.budget.models import tiny, tiny_inputs

SHORT = MeterConfig(window_s=0.05, repeats=3, precision=0, idle_s=0.05, min_warmup_s=0, max_warmup_s=0.2)


def test_real_meter_end_to_end_on_the_estimated_backend():
    model = tiny(h=64)
    phases = set()
    result = prune_to_energy(model, "-30%", "magnitude", unit_kind="block", inputs=tiny_inputs(64),
                             backend="estimated", config=SHORT, max_steps=1,
                             progress=lambda phase, fraction, message: phases.add(phase))
    assert {"idle", "warmup", "measure", "step"} <= phases  # the meter itself ran
    assert result.provenance == "estimated" and "ESTIMATED" in result.message
    measurement = result.original.measurement
    assert measurement["schema"] == "energyprune.measurement/1" and measurement["provenance"] == "estimated"
    assert len(measurement["windows"]) >= 3 and result.original.per_inference_j > 0
    (step,) = result.steps
    assert step.accepted and math.isfinite(step.step_ratio) and step.step_ratio > 0
    low, high = step.step_ratio_ci95
    ratios = step.comparison["ratios"]  # the interleaved pairs behind the step (interval of their mean)
    assert len(ratios) >= 3 and low <= sum(ratios) / len(ratios) <= high
    # "target-reached" of old is now split by the 95% interval: confirmed, or met by the median only
    assert result.stop_reason in ("target-reached", "median-reached", "max-steps", "too-coarse")
    final = result.final.comparison
    assert final is not None and final["schema"] == "energyprune.comparison/1"  # original vs final, directly
    assert final["a"]["power_trace"] is None and final["a"]["windows"]  # traces only in the original
    assert result.final.energy_ratio == final["ratio_b_over_a"]
    json.dumps(result.to_dict(), allow_nan=False)


def test_the_fallback_to_the_estimate_is_said_once_per_run(monkeypatch):
    """`auto` with no readable counter falls back to the estimate: one note, with the original's
    measurement, not one per step; the probes run once."""
    import energyprune.measure.api as api
    from energyprune.backends import BackendSelection, make_backend

    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return BackendSelection((make_backend("estimated"),), ("no hardware energy counter is readable here (test)",))

    monkeypatch.setattr(api, "select_backends", counting)
    result = prune_to_energy(tiny(h=64), "-30%", "magnitude", unit_kind="block", inputs=tiny_inputs(64),
                             config=SHORT, max_steps=2)
    assert len(calls) == 1
    notes = [w for w in result.warnings if "no hardware energy counter" in w]
    assert len(notes) == 1 and notes[0].startswith("original:")
