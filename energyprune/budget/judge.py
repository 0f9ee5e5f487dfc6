"""The measuring side of the loop: who says how many joules a model costs.

`EnergyJudge` is the extension point (a Protocol): `measure(model, inputs)` for the original,
`compare(a, b, inputs)` for every step (B against A by interleaved windows). The default,
`MeterJudge`, is the real meter (`energyprune.api`). Tests inject a scripted judge; anything else
that can defend its numbers (a remote meter, a replayed trace) plugs in the same way.

What the loop reads from the objects a judge returns is written down in `MeasurementLike` and
`ComparisonLike`; `energyprune.measurement.Measurement` and `energyprune.meter.Comparison` are
both, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import nn

from energyprune.backends.base import Backend
from energyprune.measurement import Provenance
from energyprune.meter import MeterConfig, Progress
from energyprune.models import Inputs


@runtime_checkable
class MeasurementLike(Protocol):
    """What the loop reads from one measurement."""

    @property
    def per_inference_j(self) -> float: ...

    @property
    def ci95_j(self) -> tuple[float, float]: ...

    @property
    def latency_s(self) -> Mapping[str, float]: ...  # at least "median"

    @property
    def mean_power_w(self) -> float: ...

    @property
    def provenance(self) -> Provenance: ...

    @property
    def warnings(self) -> tuple[str, ...]: ...

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class ComparisonLike(Protocol):
    """What the loop reads from one interleaved comparison of B against A."""

    @property
    def a(self) -> MeasurementLike: ...

    @property
    def b(self) -> MeasurementLike: ...

    @property
    def ratio(self) -> float: ...  # energy per inference of B over A

    @property
    def ratio_ci95(self) -> tuple[float, float]: ...

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class EnergyJudge(Protocol):
    """Measures a model, and compares two models on the same inputs."""

    def measure(self, model: nn.Module, inputs: Inputs) -> MeasurementLike: ...

    def compare(self, a: nn.Module, b: nn.Module, inputs: Inputs) -> ComparisonLike: ...


class MeterJudge:
    """The real meter: `energyprune.api.measure` and `energyprune.api.compare` with one backend
    spec and one `MeterConfig` for every figure of a run, so all of them are taken the same way."""

    def __init__(
        self,
        backend: str | Sequence[Backend] = "auto",
        config: MeterConfig | None = None,
        cpu_tdp_w: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.cpu_tdp_w = cpu_tdp_w
        self.progress = progress

    def __repr__(self) -> str:
        backend = self.backend if isinstance(self.backend, str) else [b.name for b in self.backend]
        return f"MeterJudge(backend={backend!r}, config={self.config!r})"

    def measure(self, model: nn.Module, inputs: Inputs) -> MeasurementLike:
        from energyprune.api import measure

        return measure(model, inputs, backend=self.backend, config=self.config, cpu_tdp_w=self.cpu_tdp_w,
                       progress=self.progress, label="original")

    def compare(self, a: nn.Module, b: nn.Module, inputs: Inputs) -> ComparisonLike:
        from energyprune.api import compare

        return compare(a, b, inputs, backend=self.backend, config=self.config, cpu_tdp_w=self.cpu_tdp_w,
                       progress=self.progress, labels=("current", "candidate"))


def provenance_of(*items: MeasurementLike | ComparisonLike | None) -> Provenance:
    """ESTIMATED as soon as one figure behind a result was estimated."""
    for item in items:
        if item is None:
            continue
        parts = (item.a, item.b) if isinstance(item, ComparisonLike) else (item,)
        if any(Provenance(p.provenance) is Provenance.ESTIMATED for p in parts):
            return Provenance.ESTIMATED
    return Provenance.MEASURED
