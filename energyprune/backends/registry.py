"""The one table of backends: name -> how to build it, which hardware it meters, where `auto`
tries it. Adding a backend (AMD GPUs through amdsmi, say) is one module and one row here; the
`--backend` help, `energyprune backends` and `auto` read this table.

    Row(name, build, meters, auto_order, fallback, argument, summary)

`build(request)` constructs the backend without touching hardware (probing is separate).
`meters` is "gpu" (tried by `auto` only when the model runs on a GPU) or "cpu". `auto_order`
places the measured backends `auto` tries (None: never automatic); the `fallback` row is used,
labelled, when no measured one probes OK. `argument` names what follows `name:` (replay's PATH).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from energyprune.backends.base import Backend


@dataclass(frozen=True)
class BackendRequest:
    """What a backend may need to be built: the CUDA devices the model uses, a user's CPU power,
    and the argument after `name:` in the spec."""

    cuda_devices: Sequence[int] | None = None
    cpu_tdp_w: float | None = None
    argument: str = ""


@dataclass(frozen=True)
class Row:
    name: str
    build: Callable[[BackendRequest], Backend]
    meters: str  # "gpu" or "cpu"
    auto_order: int | None
    summary: str
    fallback: bool = False
    argument: str = ""  # e.g. "PATH": the spec is "name:PATH"


def _nvml(request: BackendRequest) -> Backend:
    from energyprune.backends.nvml import NvmlBackend

    return NvmlBackend(cuda_devices=request.cuda_devices)


def _rapl(request: BackendRequest) -> Backend:
    from energyprune.backends.rapl import RaplBackend

    return RaplBackend()


def _estimated(request: BackendRequest) -> Backend:
    from energyprune.backends.estimated import EstimatedBackend

    return EstimatedBackend(cpu_tdp_w=request.cpu_tdp_w)


def _replay(request: BackendRequest) -> Backend:
    from energyprune.backends.replay import ReplayBackend

    return ReplayBackend(request.argument)


ROWS: tuple[Row, ...] = (
    Row("nvml", _nvml, "gpu", 1, "NVIDIA GPUs: the total-energy counter and instantaneous power (NVML)"),
    Row("rapl", _rapl, "cpu", 0, "Intel / AMD CPU packages and DRAM: RAPL counters in /sys/class/powercap"),
    Row("estimated", _estimated, "cpu", None, "CPU and RAM from utilisation and a power model (ESTIMATED)",
        fallback=True),
    Row("replay", _replay, "any", None, "plays back a recorded CSV trace", argument="PATH"),
)
BY_NAME = {row.name: row for row in ROWS}


def spec_names() -> tuple[str, ...]:
    """What `--backend` accepts, as written in help and errors: auto, nvml, ..., replay:PATH."""
    return ("auto",) + tuple(f"{r.name}:{r.argument}" if r.argument else r.name for r in ROWS)


def auto_rows(on_gpu: bool) -> list[Row]:
    """The measured backends `auto` tries, in order, for a model on a GPU or not."""
    rows = [r for r in ROWS if r.auto_order is not None and (r.meters != "gpu" or on_gpu)]
    return sorted(rows, key=lambda r: r.auto_order or 0)


def fallback_row() -> Row:
    return next(r for r in ROWS if r.fallback)
