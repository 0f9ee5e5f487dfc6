"""The measuring side of the loop: who says how many joules a model costs.

`EnergyJudge` is the extension point (a Protocol): `measure(model, inputs)` for the original,
`compare(a, b, inputs)` for every step (B against A by interleaved windows). The default,
`MeterJudge`, is the real meter (`energyprune.measure.api`). Tests inject a scripted judge; anything else
that can defend its numbers (a remote meter, a replayed trace) plugs in the same way.

What the loop reads from the objects a judge returns is written down in `MeasurementLike` and
`ComparisonLike`; `energyprune.measure.results.Measurement` and `energyprune.measure.meter.Comparison` are
both, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import nn

from energyprune.backends.base import Backend
from energyprune.backends.base import Provenance
from energyprune.measure.meter import MeterConfig, Progress
from energyprune.torch_io import Inputs


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
    """The real meter: `energyprune.measure.api.measure` and `energyprune.measure.api.compare` with one backend
    spec and one `MeterConfig` for every figure of a run, so all of them are taken the same way.

    The spec is resolved into backends once per run (per set of GPUs the models use), not at every
    step: the probes run once, and a note such as the fallback to the estimate is said once, with
    the original's measurement, instead of at every step."""

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
        self._resolved: dict[tuple[int, ...], list[Backend]] = {}
        self.notes: tuple[str, ...] = ()  # what resolving the spec had to say (said once)

    def __repr__(self) -> str:
        backend = self.backend if isinstance(self.backend, str) else [b.name for b in self.backend]
        return f"MeterJudge(backend={backend!r}, config={self.config!r})"

    def backends_for(self, *models: nn.Module) -> tuple[list[Backend], tuple[str, ...]]:
        """The backends for these models' devices, and the notes that are new (empty after the
        first call for the same devices)."""
        from energyprune.measure.api import resolve_backends
        from energyprune.torch_io import cuda_devices_of

        devices = tuple(sorted({d for m in models for d in cuda_devices_of(m)}))
        if devices in self._resolved:
            return self._resolved[devices], ()
        backends, notes = resolve_backends(self.backend, devices, self.cpu_tdp_w)
        self._resolved[devices] = backends
        self.notes = tuple(dict.fromkeys(self.notes + tuple(notes)))
        return backends, tuple(notes)

    def measure(self, model: nn.Module, inputs: Inputs) -> MeasurementLike:
        import dataclasses

        from energyprune.measure.api import measure

        backends, notes = self.backends_for(model)
        result = measure(model, inputs, backend=backends, config=self.config, progress=self.progress,
                         label="original")
        return dataclasses.replace(result, warnings=notes + result.warnings)

    def compare(self, a: nn.Module, b: nn.Module, inputs: Inputs) -> ComparisonLike:
        import dataclasses

        from energyprune.measure.api import compare

        backends, notes = self.backends_for(a, b)
        result = compare(a, b, inputs, backend=backends, config=self.config, progress=self.progress,
                         labels=("current", "candidate"))
        if notes:
            result = dataclasses.replace(result, a=dataclasses.replace(result.a, warnings=notes + result.a.warnings))
        return result
