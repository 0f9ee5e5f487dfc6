"""A scripted judge for the loop's tests: energy per inference proportional to FLOPs.

Deterministic, so the tests can assert exact step sizes; its figures are labelled ESTIMATED (a
FLOP count is a model of the energy, not a measurement), like every other figure not read from
a counter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from energyprune.backends.base import Provenance
from energyprune.metrics.flops import count_flops


@dataclass(frozen=True)
class ScriptedMeasurement:
    per_inference_j: float
    latency_s: dict[str, float]
    mean_power_w: float
    ci95_j: tuple[float, float] = (0.0, 0.0)
    provenance: Provenance = Provenance.ESTIMATED
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # Every key of a real Measurement.to_dict(), so that the report renderers accept it.
        latency = self.latency_s.get("median", 0.0)
        return {"schema": "energyprune.measurement/1", "label": "scripted", "provenance": self.provenance.value,
                "per_inference_j": self.per_inference_j, "per_inference_dynamic_j": self.per_inference_j,
                "per_sample_j": self.per_inference_j, "per_sample_dynamic_j": self.per_inference_j,
                "ci95_j": list(self.ci95_j), "ci95_dynamic_j": list(self.ci95_j), "cov": 0.0,
                "estimate_band_j": None, "n_inferences": 1, "n_windows": 1, "duration_s": latency,
                "batch_size": 1, "idle_power_w": 0.0, "mean_power_w": self.mean_power_w,
                "latency_s": {"median": latency, "min": latency, "max": latency, **self.latency_s},
                "backends": ["scripted"], "domains": [], "stop_reason": "repeats-done", "precision": 0.0,
                "warmup_inferences": 0, "warnings": list(self.warnings), "device": {},
                "power_trace": {"t_s": [0.0], "power_w": {}},
                "windows": [{"index": 0, "label": "scripted", "n_inferences": 1, "duration_s": latency,
                             "per_inference_j": self.per_inference_j, "energy_j": {},
                             "edge_uncertainty_j": {}, "states": []}]}


@dataclass(frozen=True)
class ScriptedComparison:
    a: ScriptedMeasurement
    b: ScriptedMeasurement
    ratio: float
    ratio_ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "energyprune.comparison/1", "ratio_b_over_a": self.ratio,
                "ratio_ci95": list(self.ratio_ci95), "provenance": "estimated",
                "a": self.a.to_dict(), "b": self.b.to_dict()}


@dataclass
class FlopsJudge:
    """1 nJ per FLOP (or per parameter, `by="params"`) plus a fixed `overhead_j`; a latency of
    1 ns per FLOP; 20 W.

    `half_width`: the ratio interval's relative half-width (0.5 makes every step unresolved).
    `interrupt_at`: raise KeyboardInterrupt on that compare call (1-based), as Ctrl-C would.
    """

    joules_per_flop: float = 1e-9
    by: str = "flops"
    overhead_j: float = 0.0
    half_width: float = 0.01
    interrupt_at: int | None = None
    compares: int = 0
    measures: int = 0
    log: list[tuple[str, float]] = field(default_factory=list)

    def _measurement(self, model: Any, inputs: Any) -> ScriptedMeasurement:
        flops = (count_flops(model, inputs) if self.by == "flops" else
                 sum(p.numel() for p in model.parameters()))
        energy = flops * self.joules_per_flop + self.overhead_j
        return ScriptedMeasurement(energy, {"median": flops * 1e-9}, 20.0, (energy * 0.99, energy * 1.01))

    def measure(self, model: Any, inputs: Any) -> ScriptedMeasurement:
        self.measures += 1
        return self._measurement(model, inputs)

    def compare(self, a: Any, b: Any, inputs: Any) -> ScriptedComparison:
        self.compares += 1
        if self.interrupt_at is not None and self.compares == self.interrupt_at:
            raise KeyboardInterrupt
        ma, mb = self._measurement(a, inputs), self._measurement(b, inputs)
        ratio = mb.per_inference_j / ma.per_inference_j
        self.log.append(("compare", ratio))
        return ScriptedComparison(ma, mb, ratio, (ratio * (1 - self.half_width), ratio * (1 + self.half_width)))
