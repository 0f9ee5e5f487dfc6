"""The Python API: `measure`, `compare` and the `EnergyMeter` context manager.

    >>> from energyprune import measure
    >>> m = measure(model, inputs)            # backends chosen automatically
    >>> m.per_inference_j, m.ci95_j, m.provenance
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from energyprune.backends import select_backends
from energyprune.backends.base import Backend
from energyprune.measure.results import EnergySpan, Measurement
from energyprune.measure.edges import COARSE_RESOLUTION_S
from energyprune.measure.meter import Agree, Comparison, Meter, MeterConfig, MeterSession, Progress, no_agreement, no_sync
from energyprune.torch_io import check_inputs, cuda_devices_of, make_sync
from energyprune.torch_io import batch_size_of, call_model, Inputs

logger = logging.getLogger(__name__)


def resolve_backends(backend: str | Sequence[Backend], cuda_devices: Sequence[int],
                     cpu_tdp_w: float | None) -> tuple[list[Backend], tuple[str, ...]]:
    """Backends for a spec (probed; each note logged once, here) or the given backend objects."""
    if isinstance(backend, str):
        selection = select_backends(backend, cuda_devices=cuda_devices, cpu_tdp_w=cpu_tdp_w)
        for note in selection.notes:
            logger.warning("%s", note)
        return list(selection.backends), selection.notes
    return list(backend), ()



def measure(
    model: nn.Module,
    inputs: Inputs,
    *,
    backend: str | Sequence[Backend] = "auto",
    batch_size: int | None = None,
    config: MeterConfig | None = None,
    cpu_tdp_w: float | None = None,
    progress: Progress | None = None,
    label: str = "model",
    agree: Agree | None = None,
) -> Measurement:
    """Joules per inference of `model(inputs)` (one call = one batch), with its interval.

    `inputs` is a tensor, a tuple of positional arguments or a mapping of keyword arguments.
    `backend` is a spec ("auto", "nvml", "rapl", "estimated", "replay:PATH", "nvml,rapl") or
    backend objects. The model runs under `torch.inference_mode()`. `agree` (see `meter.Agree`)
    makes several processes call the model equally often: `measure_distributed(lockstep=True)`."""
    check_inputs(model, inputs)
    backends, notes = resolve_backends(backend, cuda_devices_of(model), cpu_tdp_w)
    meter = Meter(backends, config, sync=make_sync(model), progress=progress, agree=agree or no_agreement)
    with torch.inference_mode():
        result = meter.measure(lambda: call_model(model, inputs),
                               batch_size=batch_size or batch_size_of(inputs), label=label)
    return dataclasses.replace(result, warnings=tuple(notes) + result.warnings)


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Inputs,
    *,
    inputs_b: Inputs | None = None,
    backend: str | Sequence[Backend] = "auto",
    config: MeterConfig | None = None,
    cpu_tdp_w: float | None = None,
    progress: Progress | None = None,
    labels: tuple[str, str] = ("A", "B"),
    batch_sizes: tuple[int, int] | None = None,
) -> Comparison:
    """B's energy per inference relative to A's, from interleaved windows (A B A B ... A)."""
    inputs_b = inputs if inputs_b is None else inputs_b
    check_inputs(model_a, inputs)
    check_inputs(model_b, inputs_b)
    devices = sorted(set(cuda_devices_of(model_a)) | set(cuda_devices_of(model_b)))
    backends, notes = resolve_backends(backend, devices, cpu_tdp_w)
    sync_a, sync_b = make_sync(model_a), make_sync(model_b)

    def sync() -> None:
        sync_a()
        sync_b()

    meter = Meter(backends, config, sync=sync, progress=progress)
    with torch.inference_mode():
        sizes = batch_sizes or (batch_size_of(inputs), batch_size_of(inputs_b))
        result = meter.compare(lambda: call_model(model_a, inputs), lambda: call_model(model_b, inputs_b),
                               sizes[0], sizes[1], labels)
    a = dataclasses.replace(result.a, warnings=tuple(notes) + result.a.warnings)
    return dataclasses.replace(result, a=a)


class EnergyMeter:
    """Measures the energy of arbitrary code between `__enter__` and `__exit__` (one window).

        with EnergyMeter(sync=torch.cuda.synchronize, idle_s=1.0) as meter:
            train_one_epoch()
        print(meter.result.total_energy_j, meter.result.provenance)

    `sync` must wait for queued device work (pass `torch.cuda.synchronize` for GPU code), or the
    window ends before the work does and under-counts. With `idle_s > 0`, idle power is measured
    on entry and `result.dynamic_energy_j` gives the energy above idle."""

    def __init__(
        self,
        backend: str | Sequence[Backend] = "auto",
        *,
        sync: Callable[[], Any] = no_sync,
        idle_s: float = 0.0,
        cuda_devices: Sequence[int] | None = None,
        cpu_tdp_w: float | None = None,
        sample_interval_s: float = 0.005,
        keep_trace: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if cuda_devices is None:
            cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        self._backends, self._notes = resolve_backends(backend, cuda_devices, cpu_tdp_w)
        self._sync = sync
        self._idle_s = idle_s
        self._sample_interval_s = sample_interval_s
        self._keep_trace = keep_trace
        self._clock = clock
        self._session: MeterSession | None = None
        self._start: Any = None
        self._idle_w: dict[str, float] = {}
        self.result: EnergySpan | None = None

    def __enter__(self) -> EnergyMeter:
        self._session = MeterSession(self._backends, self._sync, self._sample_interval_s, self._clock)
        self._session.__enter__()
        try:
            self._idle_w = self._session.idle_power_w(self._idle_s)
            self._sync()
            assert self._session.edges is not None
            self._start = self._session.edges.start_edge(probe_previous=True)
        except BaseException:
            self._session.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        session = self._session
        assert session is not None and session.edges is not None and session.sampler is not None
        try:
            self._sync()
            # The code around a span may keep the device busy: the end gap is corrected with the
            # power of the counter period after the tick, not with the idle power.
            end = session.edges.end_edge(probe_next=True)
            energy = session.close_span(self._start, end, self._idle_w)
            trace = session.sampler.trace(self._start.t_s) if self._keep_trace and session.sampler.active else None
            duration_s = end.t_s - self._start.t_s
            resolution_s = max((session.edges.counter_period_s(d.name) for d in session.domains
                                if d.has_counter and d.resolution_s >= COARSE_RESOLUTION_S), default=0.0)
            notes = tuple(self._notes) + session.notes() + session.sensor_notes()
            if resolution_s and duration_s < 3 * resolution_s:
                low, high = (sum(b[0] for b in energy.bounds_j.values()), sum(b[1] for b in energy.bounds_j.values()))
                notes += (f"the span ({duration_s * 1e3:.0f} ms) is below the counter's resolution (three periods of "
                          f"{resolution_s * 1e3:.0f} ms): its energy lies in {low:.4g} .. {high:.4g} J; the point figure "
                          "alone is not to be trusted (measure many calls in one span for a figure per call)",)
            self.result = EnergySpan(
                domains=tuple(session.domains),
                duration_s=duration_s,
                energy_j=energy.energy_j,
                uncertainty_j=energy.uncertainty_j,
                idle_power_w=dict(self._idle_w),
                warnings=notes,
                power_trace=trace,
                bounds_j=energy.bounds_j,
                resolution_s=resolution_s,
            )
        finally:
            session.__exit__(exc_type, exc, tb)
