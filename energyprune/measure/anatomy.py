"""Where an inference's joules go: the idle part, the part above idle, and how much of the time
the accelerator was actually busy.

A GPU draws its idle power (~120 W on an H100/H200) whether it computes or waits for the host to
launch the next kernel. At batch 1 a small model spends most of its window waiting: on the H200
the demo spent 87% of its 147 mJ at idle power. Pruning shrinks only the kernels; CUDA graphs,
`torch.compile` or a larger batch shrink the waiting. So every measurement says which it is:

* **idle part** = idle power × latency of one call: what the hardware would have drawn anyway;
* **above idle** = the measurement's energy above idle (median of windows);
* **busy share** (GPU only) = the fraction of wall time in which at least one kernel ran, from
  `torch.profiler` kernel intervals over a sample of calls made *apart from* the energy windows
  (the profiler's own cost must not enter the joules). Below `LAUNCH_BOUND_BELOW` the call is
  launch-bound: the device waited for the host more than it computed.

The CPU is its own launcher, so a CPU run has no busy share; its statement rests on the idle part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Below this busy share the device waited for the host more than it computed.
LAUNCH_BOUND_BELOW = 0.5
#: At or above this busy share the kernels themselves set the time (and most of the energy).
COMPUTE_BOUND_FROM = 0.8
#: Calls profiled for the busy share: enough to average over a step's launch jitter, few enough
#: that the probe costs well under a second for a model that runs in milliseconds.
BUSY_PROBE_CALLS = 20

BOUNDS = ("launch-bound", "partly launch-bound", "compute-bound", "not measured")


@dataclass(frozen=True)
class DeviceBusy:
    """How much of the wall time of `n_calls` calls the device had a kernel running."""

    busy_s: float  # the union of the kernel intervals: overlapping kernels count once
    wall_s: float  # from the first call's start to the synchronised end of the last
    n_calls: int
    method: str  # how the kernel time was taken, for the report

    @property
    def share(self) -> float:
        return min(1.0, self.busy_s / self.wall_s) if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"busy_share": self.share, "busy_s": self.busy_s, "wall_s": self.wall_s,
                "n_calls": self.n_calls, "method": self.method}


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlaps counted once): kernels on several streams
    may run at once, and the device is busy, not doubly busy, then."""
    total = 0.0
    end = float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def bound_of(busy_share: float | None) -> str:
    if busy_share is None:
        return "not measured"
    if busy_share < LAUNCH_BOUND_BELOW:
        return "launch-bound"
    if busy_share < COMPUTE_BOUND_FROM:
        return "partly launch-bound"
    return "compute-bound"


@dataclass(frozen=True)
class EnergyAnatomy:
    """Per inference (one call of the workload): where its energy went."""

    per_inference_j: float
    idle_j: float  # idle power x latency of one call
    above_idle_j: float
    idle_power_w: float
    latency_s: float
    busy: DeviceBusy | None = None
    busy_note: str = ""  # why there is no busy share, when there is none

    @property
    def idle_share(self) -> float:
        """The idle part's share of the energy (0 when there is no idle baseline)."""
        whole = self.idle_j + max(self.above_idle_j, 0.0)
        return self.idle_j / whole if whole > 0 else 0.0

    @property
    def bound(self) -> str:
        return bound_of(self.busy.share if self.busy else None)

    @property
    def statement(self) -> str:
        """One sentence a user can act on."""
        idle = f"{self.idle_share:.0%} of the energy is idle power over the call's time"
        if self.busy is None:
            if self.idle_power_w <= 0:
                return "no idle baseline was measured (--idle 0): the energy cannot be split"
            return f"{idle}; {self.busy_note or 'the busy share is measured on GPUs only'}"
        busy = f"the GPU was busy {self.busy.share:.0%} of the time"
        if self.bound == "launch-bound":
            return (f"launch-bound: {busy} and waited for the host the rest; {idle}. CUDA graphs "
                    "(torch.compile mode=reduce-overhead), torch.compile or a larger batch cut the idle part "
                    "(energyprune advise measures each)")
        if self.bound == "partly launch-bound":
            return f"partly launch-bound: {busy}; {idle}. A larger batch or CUDA graphs may still help"
        return f"compute-bound: {busy}; {idle}. Fewer FLOPs (pruning, lower precision) is what saves energy here"

    def to_dict(self) -> dict[str, Any]:
        return {"per_inference_j": self.per_inference_j, "idle_j": self.idle_j, "above_idle_j": self.above_idle_j,
                "idle_share": self.idle_share, "idle_power_w": self.idle_power_w, "latency_s": self.latency_s,
                "busy": self.busy.to_dict() if self.busy else None, "busy_share": self.busy.share if self.busy else None,
                "bound": self.bound, "statement": self.statement}


def anatomy_of(per_inference_j: float, above_idle_j: float, idle_power_w: float, latency_s: float,
               busy: DeviceBusy | None, busy_note: str = "") -> EnergyAnatomy:
    return EnergyAnatomy(per_inference_j=per_inference_j, idle_j=idle_power_w * latency_s,
                         above_idle_j=above_idle_j, idle_power_w=idle_power_w, latency_s=latency_s,
                         busy=busy, busy_note=busy_note)


def _kernel_intervals_us(events: Sequence[Any]) -> list[tuple[float, float]]:
    """(start, end) in µs of every device kernel or memory operation in a profiler's events."""
    from torch.autograd import DeviceType

    out = []
    for event in events:
        if getattr(event, "device_type", None) != DeviceType.CUDA:
            continue
        span = event.time_range
        if span.end > span.start:
            out.append((float(span.start), float(span.end)))
    return out


def profile_busy(call: Callable[[], Any], sync: Callable[[], Any], n_calls: int = BUSY_PROBE_CALLS) -> DeviceBusy:
    """The GPU's busy share over `n_calls` calls, from `torch.profiler`'s kernel intervals.

    Runs outside any energy window (the profiler slows the host). The wall span is the profiler's
    own clock from the first host event to the last kernel's end, so both sides share one clock."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n_calls):
            call()
        sync()
    events = list(prof.events())
    kernels = _kernel_intervals_us(events)
    if not kernels:
        raise RuntimeError("the profiler saw no GPU kernels")
    host = [(float(e.time_range.start), float(e.time_range.end)) for e in events
            if e.time_range.end > e.time_range.start]
    start = min(s for s, _ in host + kernels)
    end = max(e for _, e in host + kernels)
    return DeviceBusy(busy_s=union_length(kernels) / 1e6, wall_s=(end - start) / 1e6, n_calls=n_calls,
                      method=f"torch.profiler kernel intervals over {n_calls} calls, apart from the energy windows")
