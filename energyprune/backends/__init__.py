"""Hardware backends and how a `--backend` spec picks them.

`auto` uses every measured backend that probes OK for the hardware the model runs on (NVML for the
GPUs it uses, RAPL for the CPU) and falls back to the labelled estimate, saying so, when none does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from energyprune.backends import registry
from energyprune.backends.base import Availability, Backend, WrappingCounter
from energyprune.errors import BackendUnavailable, UsageError

KNOWN_BACKENDS = registry.spec_names()
#: The --backend help of every command, from the registry.
BACKEND_HELP = (f"{', '.join(KNOWN_BACKENDS[:-1])} or {KNOWN_BACKENDS[-1]}, or a comma list of measured ones "
                "(nvml,rapl); default auto: every measured backend that works for the model's hardware, else the "
                "labelled estimate")

__all__ = [
    "BACKEND_HELP",
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
    """Build (never probe) one backend from its spec item; `replay:PATH` names a trace file."""
    key, sep, argument = name.partition(":")
    row = registry.BY_NAME.get(key)
    if row is None or bool(sep) != bool(row.argument):
        if row is not None and row.argument:
            raise UsageError(f"--backend {key} needs its {row.argument}: use --backend {key}:{row.argument}")
        raise UsageError(
            f"unknown backend {name!r}: choose one of {', '.join(KNOWN_BACKENDS)} "
            "(several measured ones may be joined with commas, e.g. nvml,rapl)")
    if row.argument and not argument:
        raise UsageError(f"--backend {key} needs its {row.argument}: use --backend {key}:{row.argument}")
    return row.build(registry.BackendRequest(cuda_devices=cuda_devices, cpu_tdp_w=cpu_tdp_w, argument=argument))


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
    for row in registry.auto_rows(on_gpu=bool(cuda_devices)):
        name = row.name
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
            f"falling back to the ESTIMATED {registry.fallback_row().name} backend (CPU utilisation x a power "
            "model); run `energyprune backends` for the fixes"
        )
        estimated = make_backend(registry.fallback_row().name, cpu_tdp_w=cpu_tdp_w)
        availability = estimated.probe()
        if not availability.ok:
            raise BackendUnavailable(f"no backend is usable here: {availability.reason}. {availability.fix}")
        chosen.append(estimated)
        if cuda_devices:
            notes.append(
                "the model runs on a GPU but no GPU backend is available: the figure covers the CPU only"
            )
    elif cuda_devices and not any(registry.BY_NAME.get(b.name) and registry.BY_NAME[b.name].meters == "gpu"
                                  for b in chosen):
        notes.append("the model runs on a GPU but no GPU backend is available: the GPU's energy is not counted")
    return BackendSelection(tuple(chosen), tuple(notes))


def probe_all(cpu_tdp_w: float | None = None) -> list[tuple[str, Availability]]:
    """Every backend of the registry that needs no argument, probed, for `energyprune backends`."""
    return [(row.name, make_backend(row.name, cpu_tdp_w=cpu_tdp_w).probe())
            for row in registry.ROWS if not row.argument]
