"""The results of a measurement: frozen dataclasses whose derived figures are properties.

A `Measurement` keeps the raw windows and the idle baseline; every figure a user sees (per
inference, above idle, interval, CoV) is derived from them, so nothing is stored twice and nothing
can disagree. `to_dict()` gives the JSON that is the source of truth for every report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from energyprune import stats
from energyprune.backends.base import DeviceState, DomainInfo, EnergyReading, PowerSample, Provenance
from energyprune.measure.anatomy import DeviceBusy, EnergyAnatomy, anatomy_of

SCHEMA = "energyprune.measurement/1"


@dataclass(frozen=True)
class Window:
    """One timed window: `n_inferences` calls of the workload between synchronised edges."""

    index: int
    label: str
    n_inferences: int
    duration_s: float
    energy_j: Mapping[str, float]  # per domain, edges corrected
    edge_uncertainty_j: Mapping[str, float]  # per domain, half-width from edge quantisation
    states: tuple[DeviceState, ...] = ()
    #: Per domain, what the window's energy surely lies in (`measure.edges`: gaps at idle to
    #: maximum power); empty for windows from before bounds were kept.
    bounds_j: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def total_energy_j(self) -> float:
        return float(sum(self.energy_j.values()))

    @property
    def per_inference_j(self) -> float:
        return self.total_energy_j / self.n_inferences

    @property
    def latency_s(self) -> float:
        return self.duration_s / self.n_inferences


@dataclass(frozen=True)
class PowerTrace:
    """Instantaneous power samples taken by the meter's background sampler (for plots)."""

    t_s: tuple[float, ...]
    power_w: Mapping[str, tuple[float, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {"t_s": list(self.t_s), "power_w": {k: list(v) for k, v in self.power_w.items()}}


@dataclass(frozen=True)
class Measurement:
    """Joules per inference of one workload, with everything needed to defend the number."""

    label: str
    batch_size: int
    domains: tuple[DomainInfo, ...]
    windows: tuple[Window, ...]
    idle_power_w: Mapping[str, float]  # per domain, measured just before the run
    stop_reason: str  # "precision-reached", "max-duration-reached", "repeats-done"
    precision: float  # the relative 95% half-width that was asked for
    warmup_inferences: int = 0
    device: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    power_trace: PowerTrace | None = None
    #: The GPU's busy share, profiled apart from the energy windows (`measure.anatomy`); None on
    #: a CPU or where profiling failed (`busy_note` says why).
    device_busy: DeviceBusy | None = None
    busy_note: str = ""

    # ---- provenance -------------------------------------------------------------------------
    @property
    def provenance(self) -> Provenance:
        return Provenance.combine(*self.domains)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.backend for d in self.domains))

    # ---- totals -----------------------------------------------------------------------------
    @property
    def n_inferences(self) -> int:
        return sum(w.n_inferences for w in self.windows)

    @property
    def duration_s(self) -> float:
        """Total time of the measured windows (warm-up and idle excluded)."""
        return sum(w.duration_s for w in self.windows)

    @property
    def total_idle_power_w(self) -> float:
        return float(sum(self.idle_power_w.values()))

    def _per_inference(self, domain: str | None = None, dynamic: bool = False) -> list[float]:
        names = [d.name for d in self.domains] if domain is None else [domain]
        values = []
        for w in self.windows:
            energy_j = sum(w.energy_j[n] for n in names)
            if dynamic:
                energy_j -= sum(self.idle_power_w.get(n, 0.0) for n in names) * w.duration_s
            values.append(energy_j / w.n_inferences)
        return values

    def _quantisation_per_inference_j(self, domain: str | None = None) -> float:
        """The largest edge-quantisation half-width per inference of any window, summed over the
        chosen domains: a bound on how far each window's figure may be from its true value, so
        the order statistics of the measured windows are within it of the true ones."""
        names = [d.name for d in self.domains] if domain is None else [domain]
        per_window = [sum(w.edge_uncertainty_j.get(n, 0.0) for n in names) / w.n_inferences
                      for w in self.windows]
        return max(per_window, default=0.0)

    # ---- headline figures -------------------------------------------------------------------
    @property
    def per_inference_j(self) -> float:
        """Median over windows of the energy of one call of the workload (one batch), all domains."""
        return stats.median(self._per_inference())

    @property
    def per_inference_dynamic_j(self) -> float:
        """The same above idle: what running the model added to what the hardware draws anyway."""
        return stats.median(self._per_inference(dynamic=True))

    @property
    def per_sample_j(self) -> float:
        return self.per_inference_j / self.batch_size

    @property
    def per_sample_dynamic_j(self) -> float:
        return self.per_inference_dynamic_j / self.batch_size

    @property
    def ci95_j(self) -> stats.Interval:
        """95% interval of the median per-inference energy (`per_inference_j`): the order-statistic
        interval of the windows' median, widened by the edge quantisation, never below 0. It does
        not include an estimate's model uncertainty (`estimate_band_j`). `ci95_j.level` is the
        confidence it really has (below 0.95 with fewer than six windows)."""
        return stats.median_interval(self._per_inference(), self._quantisation_per_inference_j(),
                                     non_negative=True)

    @property
    def ci95_dynamic_j(self) -> stats.Interval:
        """The same for the energy above idle (a difference: it may come out below 0)."""
        return stats.median_interval(self._per_inference(dynamic=True), self._quantisation_per_inference_j())

    @property
    def cov(self) -> float:
        return stats.cov(self._per_inference())

    @property
    def estimate_band_j(self) -> tuple[float, float] | None:
        """For estimated domains, the range their power model allows (systematic, not reduced by
        repeating windows); None when every domain is measured."""
        if self.provenance is Provenance.MEASURED:
            return None
        spread = 0.0
        for d in self.domains:
            spread += stats.median(self._per_inference(d.name)) * d.model_relative_uncertainty
        return (self.per_inference_j - spread, self.per_inference_j + spread)

    @property
    def mean_power_w(self) -> float:
        return sum(w.total_energy_j for w in self.windows) / self.duration_s

    @property
    def latency_s(self) -> dict[str, float]:
        """Latency of one call, per window (duration / calls): the loop itself is never timed
        call by call, since synchronising every call would change what is measured."""
        values = [w.latency_s for w in self.windows]
        return {
            "median": stats.median(values),
            "mean": sum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "cov": stats.cov(values),
        }

    @property
    def anatomy(self) -> EnergyAnatomy:
        """Where one call's energy went: idle power x latency, above idle, the GPU's busy share."""
        return anatomy_of(self.per_inference_j, self.per_inference_dynamic_j, self.total_idle_power_w,
                          self.latency_s["median"], self.device_busy, self.busy_note)

    def domain_summary(self, domain: DomainInfo) -> dict[str, Any]:
        per_inference = self._per_inference(domain.name)
        dynamic = self._per_inference(domain.name, dynamic=True)
        energy_j = sum(w.energy_j[domain.name] for w in self.windows)
        return {
            "name": domain.name,
            "backend": domain.backend,
            "provenance": domain.provenance.value,
            "method": domain.method,
            "device": domain.device,
            "per_inference_j": stats.median(per_inference),
            "per_inference_dynamic_j": stats.median(dynamic),
            "ci95_j": list(stats.median_interval(per_inference, self._quantisation_per_inference_j(domain.name),
                                                 non_negative=True)),
            "energy_j": energy_j,
            "mean_power_w": energy_j / self.duration_s,
            "idle_power_w": self.idle_power_w.get(domain.name, 0.0),
            "resolution_s": domain.resolution_s,
            "device_id": domain.device_id,
            "model_relative_uncertainty": domain.model_relative_uncertainty,
            "assumptions": list(domain.assumptions),
        }

    def to_dict(self) -> dict[str, Any]:
        band = self.estimate_band_j
        return {
            "schema": SCHEMA,
            "label": self.label,
            "provenance": self.provenance.value,
            "per_inference_j": self.per_inference_j,
            "per_inference_dynamic_j": self.per_inference_dynamic_j,
            "per_sample_j": self.per_sample_j,
            "per_sample_dynamic_j": self.per_sample_dynamic_j,
            "ci95_j": list(self.ci95_j),
            "ci95_dynamic_j": list(self.ci95_dynamic_j),
            "ci_level": self.ci95_j.level,
            "estimator": "median of windows; order-statistic interval",
            "cov": self.cov,
            "estimate_band_j": list(band) if band is not None else None,
            "n_inferences": self.n_inferences,
            "n_windows": len(self.windows),
            "duration_s": self.duration_s,
            "batch_size": self.batch_size,
            "idle_power_w": self.total_idle_power_w,
            "mean_power_w": self.mean_power_w,
            "latency_s": self.latency_s,
            "anatomy": self.anatomy.to_dict(),
            "backends": list(self.backends),
            "domains": [self.domain_summary(d) for d in self.domains],
            "stop_reason": self.stop_reason,
            "precision": self.precision,
            "warmup_inferences": self.warmup_inferences,
            "warnings": list(self.warnings),
            "device": dict(self.device),
            "windows": [
                {
                    "index": w.index,
                    "label": w.label,
                    "n_inferences": w.n_inferences,
                    "duration_s": w.duration_s,
                    "per_inference_j": w.per_inference_j,
                    "energy_j": dict(w.energy_j),
                    "edge_uncertainty_j": dict(w.edge_uncertainty_j),
                    "bounds_j": {k: list(v) for k, v in w.bounds_j.items()},
                    "states": [_state_dict(s) for s in w.states],
                }
                for w in self.windows
            ],
            "power_trace": self.power_trace.to_dict() if self.power_trace else None,
        }


def _state_dict(state: DeviceState) -> dict[str, Any]:
    return {
        "domain": state.domain,
        "sm_clock_mhz": state.sm_clock_mhz,
        "temperature_c": state.temperature_c,
        "power_limit_w": state.power_limit_w,
        "throttle_reasons": list(state.throttle_reasons),
        "limited_by": list(state.limited_by),
    }


def domains_by_name(domains: Sequence[DomainInfo]) -> dict[str, DomainInfo]:
    return {d.name: d for d in domains}


@dataclass(frozen=True)
class EnergySpan:
    """The energy of one stretch of arbitrary code, measured by `EnergyMeter` (one window)."""

    domains: tuple[DomainInfo, ...]
    duration_s: float
    energy_j: Mapping[str, float]
    uncertainty_j: Mapping[str, float]
    idle_power_w: Mapping[str, float]  # empty when no idle baseline was taken
    warnings: tuple[str, ...] = ()
    power_trace: PowerTrace | None = None
    #: Per domain, what the energy surely lies in (idle to maximum power over the gaps between the
    #: counter's ticks and the span's edges). For a span shorter than a few counter periods, this
    #: interval, not `total_energy_j`, is what the counter can vouch for (`below_resolution`).
    bounds_j: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: The slowest counter period among the domains (learned when the meter measured idle first).
    resolution_s: float = 0.0

    @property
    def provenance(self) -> Provenance:
        return Provenance.combine(*self.domains)

    @property
    def total_energy_j(self) -> float:
        return float(sum(self.energy_j.values()))

    @property
    def total_bounds_j(self) -> tuple[float, float]:
        """The span's energy surely lies in this interval (the domains' bounds summed)."""
        if not self.bounds_j:
            return (self.total_energy_j, self.total_energy_j)
        return (float(sum(b[0] for b in self.bounds_j.values())), float(sum(b[1] for b in self.bounds_j.values())))

    @property
    def below_resolution(self) -> bool:
        """Shorter than three counter periods: the edges weigh as much as the span."""
        return self.resolution_s > 0 and self.duration_s < 3 * self.resolution_s

    @property
    def dynamic_energy_j(self) -> float | None:
        """Above idle; None when the meter was not asked to measure idle power first."""
        if not self.idle_power_w:
            return None
        return self.total_energy_j - sum(self.idle_power_w.values()) * self.duration_s

    @property
    def mean_power_w(self) -> float:
        return self.total_energy_j / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "energyprune.span/1",
            "provenance": self.provenance.value,
            "duration_s": self.duration_s,
            "energy_j": self.total_energy_j,
            "dynamic_energy_j": self.dynamic_energy_j,
            "uncertainty_j": float(sum(v**2 for v in self.uncertainty_j.values()) ** 0.5),
            "bounds_j": list(self.total_bounds_j),
            "below_resolution": self.below_resolution,
            "resolution_s": self.resolution_s,
            "mean_power_w": self.mean_power_w,
            "domains": [
                {"name": d.name, "backend": d.backend, "provenance": d.provenance.value,
                 "method": d.method, "energy_j": self.energy_j[d.name],
                 "uncertainty_j": self.uncertainty_j.get(d.name, 0.0),
                 "bounds_j": list(self.bounds_j[d.name]) if d.name in self.bounds_j else None,
                 "idle_power_w": self.idle_power_w.get(d.name), "assumptions": list(d.assumptions)}
                for d in self.domains
            ],
            "warnings": list(self.warnings),
            "power_trace": self.power_trace.to_dict() if self.power_trace else None,
        }


def batch_row(measurement: Measurement) -> dict[str, Any]:
    """One row of a batch-size sweep: J per call and per sample, with the per-sample interval."""
    batch = measurement.batch_size
    low, high = measurement.ci95_j
    return {"batch_size": batch, "provenance": measurement.provenance.value,
            "per_inference_j": measurement.per_inference_j, "per_sample_j": measurement.per_sample_j,
            "ci95_per_sample_j": [low / batch, high / batch],
            "per_sample_dynamic_j": measurement.per_sample_dynamic_j,
            "latency_s": measurement.latency_s["median"], "idle_share": measurement.anatomy.idle_share,
            "busy_share": measurement.device_busy.share if measurement.device_busy else None,
            "n_windows": len(measurement.windows)}
