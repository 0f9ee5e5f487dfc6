"""Hardware backends and how a `--backend` spec picks them.

`auto` uses every measured backend that probes OK for the hardware the model runs on (NVML for the
GPUs it uses, RAPL for the CPU) and falls back to the labelled estimate, saying so, when none does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from energyprune.backends.base import Availability, Backend, WrappingCounter
from energyprune.errors import BackendUnavailable, UsageError

KNOWN_BACKENDS = ("auto", "nvml", "rapl", "estimated", "replay:PATH")

__all__ = [
    "KNOWN_BACKENDS",
    "Availability",
    "Backend",
    "BackendSelection",
    "WrappingCounter",
    "make_backend",
    "probe_all",
    "select_backends",
]


@dataclass(frozen=True)
class BackendSelection:
    backends: tuple[Backend, ...]
    notes: tuple[str, ...]  # one line each, printed to the user (why a backend was left out...)


def make_backend(
    name: str, *, cuda_devices: Sequence[int] | None = None, cpu_tdp_w: float | None = None
) -> Backend:
    """Build (never probe) one backend from its name; `replay:PATH` names a trace file."""
    if name == "nvml":
        from energyprune.backends.nvml import NvmlBackend

        return NvmlBackend(cuda_devices=cuda_devices)
    if name == "rapl":
        from energyprune.backends.rapl import RaplBackend

        return RaplBackend()
    if name == "estimated":
        from energyprune.backends.estimated import EstimatedBackend

        return EstimatedBackend(cpu_tdp_w=cpu_tdp_w)
    if name.startswith("replay:"):
        path = name.split(":", 1)[1]
        if not path:
            raise UsageError("--backend replay needs a trace file: use --backend replay:PATH.csv")
        from energyprune.backends.replay import ReplayBackend

        return ReplayBackend(path)
    raise UsageError(
        f"unknown backend {name!r}: choose one of {', '.join(KNOWN_BACKENDS)} "
        "(several measured ones may be joined with commas, e.g. nvml,rapl)"
    )


def select_backends(
    spec: str = "auto", *, cuda_devices: Sequence[int] = (), cpu_tdp_w: float | None = None
) -> BackendSelection:
    """Resolve a `--backend` spec into backends that probed OK, or raise BackendUnavailable.

    `cuda_devices` are the framework CUDA indices the model runs on; empty for a CPU model, in which
    case `auto` leaves NVML out (an idle GPU's draw is not the model's)."""
    spec = spec.strip()
    if not spec:
        raise UsageError("--backend is empty: use auto, nvml, rapl, estimated or replay:PATH")
    if spec != "auto":
        # A comma list; "replay:PATH" is one item of it (a replay path cannot hold a comma).
        names = [n.strip() for n in spec.split(",")]
        if any(not n for n in names):
            raise UsageError(f"--backend {spec!r} has an empty item: give names separated by single commas")
        if "auto" in names:
            raise UsageError("--backend auto chooses the backends itself: give it alone, not in a list")
        chosen = []
        for name in names:
            backend = make_backend(name, cuda_devices=cuda_devices or None, cpu_tdp_w=cpu_tdp_w)
            availability = backend.probe()
            if not availability.ok:
                fix = f" Fix: {availability.fix}" if availability.fix else ""
                raise BackendUnavailable(
                    f"backend {name!r} is unavailable: {availability.reason}.{fix}".replace("..", ".")
                )
            chosen.append(backend)
        return BackendSelection(tuple(chosen), ())

    chosen = []
    skipped = []
    candidates = ["rapl"] + (["nvml"] if cuda_devices else [])
    for name in candidates:
        backend = make_backend(name, cuda_devices=cuda_devices or None)
        availability = backend.probe()
        if availability.ok:
            chosen.append(backend)
        else:
            skipped.append(f"{name}: {availability.reason}")
    notes = []
    if not chosen:
        notes.append(
            "no hardware energy counter is readable here (" + "; ".join(skipped) + "): "
            "falling back to the ESTIMATED backend (CPU utilisation x a power model); "
            "run `energyprune backends` for the fixes"
        )
        estimated = make_backend("estimated", cpu_tdp_w=cpu_tdp_w)
        availability = estimated.probe()
        if not availability.ok:
            raise BackendUnavailable(f"no backend is usable here: {availability.reason}. {availability.fix}")
        chosen.append(estimated)
        if cuda_devices:
            notes.append(
                "the model runs on a GPU but no GPU backend is available: the figure covers the CPU only"
            )
    elif cuda_devices and not any(b.name == "nvml" for b in chosen):
        notes.append("the model runs on a GPU but NVML is unavailable: the GPU's energy is not counted")
    return BackendSelection(tuple(chosen), tuple(notes))


def probe_all(cpu_tdp_w: float | None = None) -> list[tuple[str, Availability]]:
    """Every backend we know, probed, for `energyprune backends`."""
    results = []
    for name in ("nvml", "rapl", "estimated"):
        backend = make_backend(name, cpu_tdp_w=cpu_tdp_w)
        results.append((name, backend.probe()))
    return results
