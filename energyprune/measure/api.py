"""The Python API: `measure`, `compare` and `EnergyMeter` (a context manager, named windows, a decorator).

    >>> from energyprune import measure
    >>> m = measure(model, inputs)            # backends chosen automatically
    >>> m.per_inference_j, m.ci95_j, m.provenance
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from energyprune.backends import select_backends
from energyprune.backends.base import Backend
from energyprune.measure.anatomy import DeviceBusy, profile_busy
from energyprune.measure.results import EnergySpan, Measurement
from energyprune.measure.edges import COARSE_RESOLUTION_S
from energyprune.measure.meter import Agree, Comparison, Meter, MeterConfig, MeterSession, Progress, no_agreement
from energyprune.errors import EnergyPruneError, UsageError
from energyprune.torch_io import check_inputs, cuda_devices_of, make_sync, sync_function, visible_cuda_devices
from energyprune.torch_io import batch_size_of, call_model, first_line, Inputs

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



#: What `sync=` takes: "torch", "none", or a callable that waits for queued device work.
Sync = str | Callable[[], Any]


def _workload(target: nn.Module | Callable[..., Any], inputs: Inputs | None, sync: Sync | None,
              cuda_devices: Sequence[int] | None) -> tuple[Callable[[], Any], list[int], Callable[[], Any], bool]:
    """(the call to measure, the CUDA devices to meter, its synchronisation, whether it is a model).

    A model is called on its inputs and synchronised on the GPUs its parameters are on; any other
    callable is called on `inputs` (or with no argument) and, by default, synchronised with
    `sync="torch"` on every visible GPU (`cuda_devices` narrows that)."""
    if isinstance(target, nn.Module):
        if inputs is None:
            raise UsageError("a model needs its inputs: measure(model, inputs)")
        check_inputs(target, inputs)
        devices = cuda_devices_of(target) if cuda_devices is None else list(cuda_devices)
        sync_fn = make_sync(target) if sync is None else sync_function(sync, devices)
        return (lambda: call_model(target, inputs)), devices, sync_fn, True
    if not callable(target):
        raise UsageError(f"measure() takes a torch.nn.Module or a callable, not {type(target).__name__}")
    devices = visible_cuda_devices() if cuda_devices is None else list(cuda_devices)
    call = target if inputs is None else (lambda: call_model(target, inputs))
    return call, devices, sync_function("torch" if sync is None else sync, devices), False


def _label(target: Any, label: str | None) -> str:
    if label is not None:
        return label
    return "model" if isinstance(target, nn.Module) else str(getattr(target, "__qualname__", "workload"))


def measure(
    model: nn.Module | Callable[..., Any],
    inputs: Inputs | None = None,
    *,
    backend: str | Sequence[Backend] = "auto",
    batch_size: int | None = None,
    config: MeterConfig | None = None,
    cpu_tdp_w: float | None = None,
    progress: Progress | None = None,
    label: str | None = None,
    agree: Agree | None = None,
    sync: Sync | None = None,
    cuda_devices: Sequence[int] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    busy_probe: bool = True,
) -> Measurement:
    """Joules per inference of `model(inputs)` (one call = one batch), with its interval.

    `inputs` is a tensor, a tuple of positional arguments or a mapping of keyword arguments.
    `backend` is a spec ("auto", "nvml", "rapl", "estimated", "replay:PATH", "nvml,rapl") or
    backend objects. A model runs under `torch.inference_mode()`. `agree` (see `meter.Agree`)
    makes several processes call the model equally often: `measure_distributed(lockstep=True)`.

    `model` may be any callable instead (a generation loop, a pipeline, JAX code): it is called
    with `inputs`, or with nothing when there are none, outside inference mode. `sync` chooses
    what waits for queued device work at each window edge: "torch" (the default for a callable:
    every GPU in `cuda_devices`, all visible ones by default; nothing without CUDA), "none", or a
    callable; a model's default is its own GPUs. `clock` is injectable for tests and replays
    (`energyprune.clock.SimulatedClock`). On a GPU, `busy_probe` profiles a few calls after the
    energy windows for the measurement's `anatomy` (the share of time the GPU was busy)."""
    call, devices, sync_fn, is_model = _workload(model, inputs, sync, cuda_devices)
    backends, notes = resolve_backends(backend, devices, cpu_tdp_w)
    meter = Meter(backends, config, sync=sync_fn, progress=progress, clock=clock, agree=agree or no_agreement)
    size = batch_size or (batch_size_of(inputs) if inputs is not None else 1)
    with torch.inference_mode() if is_model else contextlib.nullcontext():
        result = meter.measure(call, batch_size=size, label=_label(model, label))
        busy, busy_note = _busy_share(call, sync_fn, devices, busy_probe)
    return dataclasses.replace(result, warnings=tuple(notes) + result.warnings, device_busy=busy, busy_note=busy_note)


def _busy_share(call: Callable[[], Any], sync_fn: Callable[[], Any], devices: Sequence[int],
                enabled: bool) -> tuple[DeviceBusy | None, str]:
    """The GPU's busy share over a few calls made after the energy windows, or why there is none."""
    if not devices:
        return None, "the busy share is measured on GPUs only (a CPU launches its own work)"
    if not enabled:
        return None, "the busy share was not asked for (busy_probe=False)"
    if not torch.cuda.is_available():  # GPUs metered through a fake or a replay: nothing to profile
        return None, "torch sees no CUDA device to profile for the busy share"
    try:
        return profile_busy(call, sync_fn), ""
    except Exception as error:  # the profiler is optional to the figure of record, never fatal
        logger.warning("could not profile the GPU's busy share: %s", first_line(error))
        return None, f"the busy share could not be profiled ({first_line(error)})"



def compare(
    model_a: nn.Module | Callable[..., Any],
    model_b: nn.Module | Callable[..., Any],
    inputs: Inputs | None = None,
    *,
    inputs_b: Inputs | None = None,
    backend: str | Sequence[Backend] = "auto",
    config: MeterConfig | None = None,
    cpu_tdp_w: float | None = None,
    progress: Progress | None = None,
    labels: tuple[str, str] = ("A", "B"),
    batch_sizes: tuple[int, int] | None = None,
    sync: Sync | None = None,
    cuda_devices: Sequence[int] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Comparison:
    """B's energy per inference relative to A's, from interleaved windows (A B A B ... A). Each
    of A and B is a model or a callable, as in `measure`."""
    inputs_b = inputs if inputs_b is None else inputs_b
    call_a, devices_a, sync_a, model_a_is = _workload(model_a, inputs, sync, cuda_devices)
    call_b, devices_b, sync_b, model_b_is = _workload(model_b, inputs_b, sync, cuda_devices)
    devices = sorted(set(devices_a) | set(devices_b))
    backends, notes = resolve_backends(backend, devices, cpu_tdp_w)

    def sync_both() -> None:
        sync_a()
        sync_b()

    meter = Meter(backends, config, sync=sync_both, progress=progress, clock=clock)
    with torch.inference_mode() if model_a_is and model_b_is else contextlib.nullcontext():
        sizes = batch_sizes or tuple(batch_size_of(x) if x is not None else 1 for x in (inputs, inputs_b))
        result = meter.compare(call_a, call_b, sizes[0], sizes[1], labels)
    a = dataclasses.replace(result.a, warnings=tuple(notes) + result.a.warnings)
    return dataclasses.replace(result, a=a)


class EnergyMeter:
    """The energy of arbitrary code: a `with` block, named windows, or each call of a function.

        with EnergyMeter(idle_s=1.0) as meter:          # one window: the block
            train_one_epoch()
        print(meter.result.total_energy_j, meter.result.provenance)

        meter = EnergyMeter()
        meter.begin("prefill"); prefill(); meter.end("prefill")        # named windows, as Zeus's
        meter.begin("decode"); decode(); span = meter.end("decode")    # begin_window / end_window
        meter.spans["prefill"].total_energy_j

        @EnergyMeter()                                  # each call is a window named after the
        def generate(prompt): ...                       # function: generate.meter.result

    Every window is taken the same way: the device is synchronised, the counters are read at a
    tick-aligned edge, the code runs, the device is synchronised, the counters are read again
    (see "How a measurement is taken" in the README). Named windows nest and may overlap; an outer
    window includes its inner windows' edges (at most a few counter ticks each). `result` is the
    window that ended last; `spans` the last window of each name (a decorated function's name is
    its `__qualname__`); `history` every window that ended, as (name, span), the block's named "".

    The backends are opened (and, with `idle_s > 0`, the idle power measured) when the first window
    begins, and closed when the `with` block ends, or, outside one, when no window is open any
    more; `open()` / `close()` keep them open across many windows (one idle baseline for all).

    `sync` waits for queued device work: "torch" (the default: every GPU in `cuda_devices`, all
    visible ones by default; nothing without CUDA), "none", or a callable (`torch.cuda.synchronize`,
    a JAX `block_until_ready`...). Without it a GPU window ends before its work does and
    under-counts. With `idle_s > 0`, `result.dynamic_energy_j` gives the energy above idle."""

    def __init__(
        self,
        backend: str | Sequence[Backend] = "auto",
        *,
        sync: Sync | None = None,
        idle_s: float = 0.0,
        cuda_devices: Sequence[int] | None = None,
        cpu_tdp_w: float | None = None,
        sample_interval_s: float = 0.005,
        keep_trace: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if cuda_devices is None:
            cuda_devices = visible_cuda_devices()
        self._backends, self._notes = resolve_backends(backend, cuda_devices, cpu_tdp_w)
        self._sync = sync_function("torch" if sync is None else sync, cuda_devices)
        self._idle_s = idle_s
        self._sample_interval_s = sample_interval_s
        self._keep_trace = keep_trace
        self._clock = clock
        self._session: MeterSession | None = None
        self._kept_open = False  # open() or a with block holds the session open
        self._in_block = False
        self._kept_before_block = False
        self._start: Any = None  # the with block's start edge
        self._open: dict[str, Any] = {}  # named windows begun and not ended: name -> start edge
        self._idle_w: dict[str, float] = {}
        self.result: EnergySpan | None = None
        self.spans: dict[str, EnergySpan] = {}
        self.history: list[tuple[str, EnergySpan]] = []

    # ---- the session --------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._session is not None

    def open(self) -> EnergyMeter:
        """Open the backends (and measure idle power) now, and keep them open until `close()`."""
        self._ensure_session()
        self._kept_open = True
        return self

    def close(self) -> None:
        """Close the backends. Named windows still open are dropped, with a warning."""
        if self._open:
            logger.warning("named window(s) %s begun and never ended: dropped", ", ".join(map(repr, self._open)))
            self._open.clear()
        session, self._session = self._session, None
        self._kept_open = False
        if session is not None:
            session.__exit__(None, None, None)

    def _ensure_session(self) -> MeterSession:
        if self._session is None:
            session = MeterSession(self._backends, self._sync, self._sample_interval_s, self._clock)
            session.__enter__()
            try:
                self._idle_w = session.idle_power_w(self._idle_s)
            except BaseException:
                session.__exit__(None, None, None)
                raise
            self._session = session
        return self._session

    def _close_if_idle(self) -> None:
        if not self._kept_open and not self._open:
            self.close()

    # ---- windows --------------------------------------------------------------------------------
    def _start_edge(self) -> Any:
        session = self._ensure_session()
        try:
            self._sync()
            assert session.edges is not None
            # The counter period before the start tick is probed: its power corrects the start gap
            # when the code around the span keeps the device busy.
            return session.edges.start_edge(probe_previous=True)
        except BaseException:
            self._close_if_idle()
            raise

    def _finish(self, start: Any) -> EnergySpan:
        """The span from `start` to now: synchronise, read the end edge, correct both edges."""
        session = self._session
        assert session is not None and session.edges is not None and session.sampler is not None
        self._sync()
        # The code around a span may keep the device busy: the end gap is corrected with the
        # power of the counter period after the tick, not with the idle power.
        end = session.edges.end_edge(probe_next=True)
        energy = session.close_span(start, end, self._idle_w)
        trace = session.sampler.trace(start.t_s) if self._keep_trace and session.sampler.active else None
        duration_s = end.t_s - start.t_s
        resolution_s = max((session.edges.counter_period_s(d.name) for d in session.domains
                            if d.has_counter and d.resolution_s >= COARSE_RESOLUTION_S), default=0.0)
        notes = tuple(self._notes) + session.notes() + session.sensor_notes()
        if resolution_s and duration_s < 3 * resolution_s:
            low, high = (sum(b[0] for b in energy.bounds_j.values()), sum(b[1] for b in energy.bounds_j.values()))
            notes += (f"the span ({duration_s * 1e3:.0f} ms) is below the counter's resolution (three periods of "
                      f"{resolution_s * 1e3:.0f} ms): its energy lies in {low:.4g} .. {high:.4g} J; the point figure "
                      "alone is not to be trusted (measure many calls in one span for a figure per call)",)
        return EnergySpan(
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

    def _record(self, name: str, span: EnergySpan) -> EnergySpan:
        self.result = span
        if name:
            self.spans[name] = span
        self.history.append((name, span))
        return span

    def begin(self, name: str) -> None:
        """Begin the window `name` (Zeus's `begin_window`). Windows of other names may be open."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"a window needs a name (a non-empty string), not {name!r}")
        if name in self._open:
            raise UsageError(f"the window {name!r} is already open: end it before beginning it again")
        self._open[name] = self._start_edge()

    def end(self, name: str) -> EnergySpan:
        """End the window `name` and return its span (also in `spans[name]` and `result`)."""
        if name not in self._open:
            open_now = ", ".join(map(repr, self._open)) or "none"
            raise UsageError(f"the window {name!r} was never begun (or has ended already); open windows: {open_now}")
        start = self._open.pop(name)
        try:
            return self._record(name, self._finish(start))
        finally:
            self._close_if_idle()

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Use the meter as a decorator: each call of `func` is one window named `func.__qualname__`.
        The meter is reachable as `wrapped.meter` (`wrapped.meter.result` is the last call's span)."""
        if not callable(func):
            raise UsageError(f"EnergyMeter decorates a function, not {type(func).__name__}")
        name = str(getattr(func, "__qualname__", getattr(func, "__name__", "function")))

        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            start = self._start_edge()
            try:
                value = func(*args, **kwargs)
            except BaseException:
                try:
                    self._record(name, self._finish(start))
                except EnergyPruneError as error:  # the function's own error matters more
                    logger.warning("the window of %s could not be read: %s", name, error)
                finally:
                    self._close_if_idle()
                raise
            try:
                self._record(name, self._finish(start))
            finally:
                self._close_if_idle()
            return value

        wrapped.meter = self  # type: ignore[attr-defined]
        return wrapped

    def __enter__(self) -> EnergyMeter:
        if self._in_block:
            raise UsageError("this EnergyMeter is already measuring a with block: use named windows "
                             "(meter.begin / meter.end) inside it")
        self._kept_before_block = self._kept_open
        self._kept_open = True  # the block holds the backends open
        try:
            self._start = self._start_edge()
        except BaseException:
            self._kept_open = self._kept_before_block
            self._close_if_idle()
            raise
        self._in_block = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._in_block = False
        try:
            self._record("", self._finish(self._start))
        finally:
            # Named windows still open go on (the backends stay open until the last one ends).
            self._kept_open = self._kept_before_block
            self._close_if_idle()
