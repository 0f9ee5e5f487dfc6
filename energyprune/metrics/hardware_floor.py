"""The hardware floor: the fewest joules per FLOP this device has been measured to spend.

Dense matrix products are the most energy-efficient work a CPU or GPU does (their arithmetic
intensity hides memory traffic), so their joules per FLOP bound from below what any model made of
the same arithmetic can hope for on this machine. :func:`measure_floor` measures them with the real
meter (``energyprune.measure.api.measure``: idle baseline, warm-up, synchronised windows, repeats):

- a workload is one product ``A @ B`` with A (m × k) and B (k × n), m = n = k = ``size``;
  FLOPs = 2·m·n·k per product (one multiply and one add per multiply-accumulate, the convention of
  ``torch.utils.flop_counter.FlopCounterMode``);
- J/FLOP = measured joules per product (total, idle included: what the hardware drew while it
  did the work, the same quantity as a model's ``per_inference_j``) / FLOPs;
- every (dtype, size) point is kept; the floor is the point with the lowest J/FLOP.

Default grid: CPU float32 at 256, 512 and 1024; CUDA float32 (IEEE), tf32 (float32 inputs with
``torch.set_float32_matmul_precision("high")``), bfloat16 and float16 at 2048, 4096 and 8192.

The floor is cached once per device in ``$ENERGYPRUNE_CACHE_DIR/floor-<device-slug>.json``
(default ``~/.cache/energyprune``, or ``$XDG_CACHE_HOME/energyprune``), schema
``energyprune.floor/1``, written atomically. :func:`load_floor` reads it back; a corrupt cache is a
:class:`~energyprune.errors.MeasurementError` naming the file, never a silently wrong floor.

On a machine with no readable energy counter the meter falls back to the ESTIMATED backend: the
floor is then a power model's figure, and it says so everywhere it appears.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyprune.files import cache_dir
from energyprune.errors import MeasurementError, UsageError
from energyprune.backends.base import is_estimated, Provenance

logger = logging.getLogger(__name__)

SCHEMA = "energyprune.floor/1"

#: dtypes by the names accepted in `dtypes`; "tf32" is float32 data on TF32 tensor cores.
FLOOR_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "tf32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
CPU_DTYPES = ("float32",)
CUDA_DTYPES = ("float32", "tf32", "bfloat16", "float16")
CPU_SIZES = (256, 512, 1024)
CUDA_SIZES = (2048, 4096, 8192)

ASSUMPTIONS = (
    "FLOPs of one m×k by k×n product = 2·m·n·k (one multiply and one add per multiply-accumulate, "
    "as torch FlopCounterMode counts them); square products m = n = k = size",
    "J/FLOP = total energy per product (idle power included, as a model's per-inference energy) / "
    "FLOPs; the floor is the lowest J/FLOP over the (dtype, size) points measured",
    "dense matmuls are taken as the most energy-efficient arithmetic this device does: the floor "
    "bounds a model's energy only for models whose FLOPs are counted the same way",
)


# ---- device naming ------------------------------------------------------------------------------
def device_name(device: str | torch.device) -> str:
    """The hardware behind `device`, in words: the GPU's name for ``cuda[:N]``, else
    ``cpu-<model name>-<N>cpu`` with the CPU model and the number of CPUs this process may use (two
    VMs with the same CPU but different shares of it are different machines for energy)."""
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device} asked for a GPU but torch sees none; use cpu")
        return torch.cuda.get_device_name(target)
    name = "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = "cpu-" + line.split(":", 1)[1].strip()
                break
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    return f"{name}-{count}cpu"


def device_slug(device: str | torch.device) -> str:
    """A file-name-safe form of :func:`device_name` (ported from ``benchmarks/common.py``, so the
    cache and ``energyprune bench`` name a device the way the benchmark results do)."""
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def floor_cache_path(device: str | torch.device) -> Path:
    return cache_dir() / f"floor-{device_slug(device)}.json"


# ---- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FloorPoint:
    """One (dtype, size) matmul, measured: joules per product and what follows per FLOP."""

    dtype: str  # a key of FLOOR_DTYPES
    size: int  # m = n = k
    flops: int  # per product, 2·size³
    per_call_j: float  # median over windows, idle included
    per_call_dynamic_j: float  # the same above idle
    ci95_j: tuple[float, float]
    latency_s: float  # median over windows of one product
    provenance: str  # "measured" or "estimated"
    n_windows: int

    @property
    def j_per_flop(self) -> float:
        return self.per_call_j / self.flops

    @property
    def dynamic_j_per_flop(self) -> float:
        return self.per_call_dynamic_j / self.flops

    @property
    def flop_per_s(self) -> float:
        return self.flops / self.latency_s if self.latency_s > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "size": self.size,
            "flops": self.flops,
            "per_call_j": self.per_call_j,
            "per_call_dynamic_j": self.per_call_dynamic_j,
            "ci95_j": list(self.ci95_j),
            "latency_s": self.latency_s,
            "provenance": self.provenance,
            "n_windows": self.n_windows,
            "j_per_flop": self.j_per_flop,
            "dynamic_j_per_flop": self.dynamic_j_per_flop,
            "flop_per_s": self.flop_per_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FloorPoint:
        low, high = data["ci95_j"]
        return cls(dtype=str(data["dtype"]), size=int(data["size"]), flops=int(data["flops"]),
                   per_call_j=float(data["per_call_j"]), per_call_dynamic_j=float(data["per_call_dynamic_j"]),
                   ci95_j=(float(low), float(high)), latency_s=float(data["latency_s"]),
                   provenance=str(data["provenance"]), n_windows=int(data["n_windows"]))


@dataclass(frozen=True)
class FloorResult:
    """Every matmul point measured on one device, and the best of them (the floor)."""

    device: str  # "cpu", "cuda:0"
    device_name: str  # the slug: what hardware it was
    points: tuple[FloorPoint, ...]
    backend: str  # the backend spec asked for ("auto", "estimated", ...)
    backends: tuple[str, ...]  # the backends the meter used
    date: str  # ISO 8601, UTC
    torch_version: str
    meter_config: Mapping[str, Any]
    assumptions: tuple[str, ...] = ASSUMPTIONS
    # The backends' own assumptions (the estimated backend's power model...), "[domain] text".
    energy_assumptions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    source: str = "measured now"  # or "cache <path>"

    def __post_init__(self) -> None:
        if not self.points:
            raise MeasurementError("a floor needs at least one measured matmul point")

    @property
    def best(self) -> FloorPoint:
        return min(self.points, key=lambda p: p.j_per_flop)

    @property
    def j_per_flop(self) -> float:
        return self.best.j_per_flop

    @property
    def provenance(self) -> str:
        """ESTIMATED as soon as any point is: the floor is chosen among them all."""
        return Provenance.combine(*(p.provenance for p in self.points)).value

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "schema": SCHEMA,
            "device": self.device,
            "device_name": self.device_name,
            "provenance": self.provenance,
            "j_per_flop": self.j_per_flop,
            "pj_per_flop": self.j_per_flop * 1e12,
            "best": {"dtype": best.dtype, "size": best.size},
            "points": [p.to_dict() for p in self.points],
            "backend": self.backend,
            "backends": list(self.backends),
            "date": self.date,
            "torch_version": self.torch_version,
            "meter_config": dict(self.meter_config),
            "assumptions": list(self.assumptions),
            "energy_assumptions": list(self.energy_assumptions),
            "warnings": list(self.warnings),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "measured now") -> FloorResult:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema is {data.get('schema')!r}, not {SCHEMA!r}")
        return cls(
            device=str(data["device"]),
            device_name=str(data["device_name"]),
            points=tuple(FloorPoint.from_dict(p) for p in data["points"]),
            backend=str(data["backend"]),
            backends=tuple(str(b) for b in data["backends"]),
            date=str(data["date"]),
            torch_version=str(data["torch_version"]),
            meter_config=dict(data.get("meter_config") or {}),
            assumptions=tuple(str(a) for a in data.get("assumptions") or ASSUMPTIONS),
            energy_assumptions=tuple(str(a) for a in data.get("energy_assumptions") or ()),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            source=source,
        )


# ---- measuring ----------------------------------------------------------------------------------
class MatmulWorkload(nn.Module):
    """``x @ b`` with b held as a buffer, so the meter sees a model on the right device (its sync
    and backend choice follow the tensors) and FlopCounterMode counts 2·m·n·k for one call."""

    def __init__(self, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.b


@contextlib.contextmanager
def _matmul_precision(dtype_name: str) -> Iterator[None]:
    """TF32 for "tf32", strict IEEE float32 for "float32", the caller's setting restored after.
    `set_float32_matmul_precision` is the public switch ("high" allows TF32, "highest" forbids)."""
    saved = torch.get_float32_matmul_precision()
    try:
        if dtype_name == "tf32":
            torch.set_float32_matmul_precision("high")
        elif dtype_name == "float32":
            torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _check_grid(target: torch.device, dtypes: Sequence[str], sizes: Sequence[int]) -> None:
    if not dtypes or not sizes:
        raise UsageError("measure_floor needs at least one dtype and one size")
    for name in dtypes:
        if name not in FLOOR_DTYPES:
            raise UsageError(f"unknown floor dtype {name!r}: choose from {', '.join(FLOOR_DTYPES)}")
        if name == "tf32" and target.type != "cuda":
            raise UsageError("tf32 exists only on CUDA tensor cores: use float32 on the CPU")
    for size in sizes:
        if not isinstance(size, int) or size < 1:
            raise UsageError(f"matmul sizes must be positive integers, got {size!r}")


def measure_floor(
    device: str | torch.device = "cpu",
    *,
    dtypes: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    backend: str | Sequence[Any] = "auto",
    config: Any = None,
    cpu_tdp_w: float | None = None,
    cache: bool = True,
    progress: Any = None,
    seed: int = 0,
) -> FloorResult:
    """Measure J/FLOP of square matmuls on `device` for every (dtype, size), keep them all and
    the lowest as the floor; write the cache unless ``cache=False`` (see the module note).

    `config` is a :class:`~energyprune.measure.meter.MeterConfig` (default: the meter's own); `backend`
    a backend spec or backend objects, as for :func:`energyprune.measure.api.measure`."""
    from energyprune.measure.api import measure

    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    dtypes = tuple(dtypes) if dtypes is not None else (CUDA_DTYPES if target.type == "cuda" else CPU_DTYPES)
    sizes = tuple(sizes) if sizes is not None else (CUDA_SIZES if target.type == "cuda" else CPU_SIZES)
    _check_grid(target, dtypes, sizes)
    slug = device_slug(target)
    spec = backend if isinstance(backend, str) else ",".join(b.name for b in backend)
    notes: tuple[str, ...] = ()
    if isinstance(backend, str):
        # Chosen once for every point (not once per point): the same counters, one fallback note.
        from energyprune.backends import select_backends

        selection = select_backends(backend, cuda_devices=[target.index] if target.type == "cuda" else [],
                                    cpu_tdp_w=cpu_tdp_w)
        backend, notes = list(selection.backends), selection.notes
        for note in notes:
            logger.warning("%s", note)
    generator = torch.Generator().manual_seed(seed)
    points: list[FloorPoint] = []
    used_backends: list[str] = []
    energy_assumptions: list[str] = []
    warnings: list[str] = list(notes)
    for name in dtypes:
        for size in sizes:
            # Random normal data: zeros or constants would let some hardware skip work (and draw
            # less) than real weights do.
            a = torch.randn(size, size, generator=generator).to(device=target, dtype=FLOOR_DTYPES[name])
            b = torch.randn(size, size, generator=generator).to(device=target, dtype=FLOOR_DTYPES[name])
            workload = MatmulWorkload(b).eval()
            logger.info("floor: measuring %s matmul %d^3 on %s", name, size, target)
            try:
                with _matmul_precision(name):
                    result = measure(workload, a, backend=backend, batch_size=1, config=config,
                                     progress=progress, label=f"matmul-{name}-{size}")
            except torch.cuda.OutOfMemoryError as error:  # a size too big for this card: skip it, say so
                warnings.append(f"{name} {size}^3 skipped: out of device memory ({error})")
                continue
            finally:
                del workload, a, b
            points.append(FloorPoint(
                dtype=name, size=size, flops=2 * size**3,
                per_call_j=result.per_inference_j, per_call_dynamic_j=result.per_inference_dynamic_j,
                ci95_j=tuple(result.ci95_j), latency_s=result.latency_s["median"],  # type: ignore[arg-type]
                provenance=result.provenance.value, n_windows=len(result.windows)))
            used_backends.extend(result.backends)
            energy_assumptions.extend(f"[{d.name}] {text}" for d in result.domains for text in d.assumptions)
            warnings.extend(w for w in result.warnings if w not in warnings)
    if not points:
        raise MeasurementError(f"no matmul could be measured on {target}: " + "; ".join(warnings))
    from energyprune.measure.meter import MeterConfig

    meter_config = config if config is not None else MeterConfig()
    floor = FloorResult(
        device=str(target), device_name=slug, points=tuple(points),
        backend=spec,
        backends=tuple(dict.fromkeys(used_backends)),
        date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        torch_version=torch.__version__,
        meter_config={k: getattr(meter_config, k) for k in ("window_s", "repeats", "precision",
                                                             "max_duration_s", "idle_s")},
        energy_assumptions=tuple(dict.fromkeys(energy_assumptions)),
        warnings=tuple(warnings),
    )
    if cache:
        save_floor(floor)
    return floor


# ---- the cache ----------------------------------------------------------------------------------
def save_floor(floor: FloorResult, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the floor as JSON (atomically) to `path`, default :func:`floor_cache_path`."""
    from energyprune.files import to_json, write_atomic

    target = Path(path) if path is not None else cache_dir() / f"floor-{floor.device_name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    data = floor.to_dict()
    data["source"] = "measured"  # in the file, the figures are what was measured on `date`
    write_atomic(target, to_json(data))
    logger.info("floor cached in %s", target)
    return target


def load_floor(
    device: str | torch.device = "cpu", *, path: str | os.PathLike[str] | None = None
) -> FloorResult | None:
    """The cached floor of `device` (or the file at `path`), or None when none was cached yet.
    A file that exists but is not a valid floor raises MeasurementError naming it and the fix."""
    target = Path(path) if path is not None else floor_cache_path(device)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise MeasurementError(f"cannot read the floor cache {target}: {error}") from error
    try:
        return FloorResult.from_dict(json.loads(text), source=f"cache {target}")
    except (ValueError, KeyError, TypeError, MeasurementError) as error:
        raise MeasurementError(
            f"the floor cache {target} is corrupt ({type(error).__name__}: {error}); delete it and "
            "measure again (`energyprune bench` or energyprune.metrics.hardware_floor.measure_floor)"
        ) from error


# ---- using it -----------------------------------------------------------------------------------
def hardware_floor_ratio(
    energy_j: float,
    flops: int | float,
    floor: FloorResult,
    *,
    energy_provenance: str | None = None,
) -> dict[str, Any]:
    """E / (FLOPs × best J/FLOP): how many times the device's own best matmul efficiency an
    inference costs. 1 would mean the model runs as efficiently as the best dense matmul measured.

    Returns a JSON-able dict with the ratio, the floor energy, the J/FLOP and where it came from
    (dtype, size, provenance, date, source) and the assumptions. With no FLOPs counted the ratio is
    None and the dict says why."""
    if not (isinstance(energy_j, (int, float)) and math.isfinite(energy_j) and energy_j >= 0):
        raise UsageError(f"energy_j must be a finite non-negative number of joules, got {energy_j!r}")
    if not (isinstance(flops, (int, float)) and math.isfinite(flops) and flops >= 0):
        raise UsageError(f"flops must be a finite non-negative count, got {flops!r}")
    best = floor.best
    floor_j = flops * best.j_per_flop
    estimated = is_estimated(floor.provenance, energy_provenance)
    out: dict[str, Any] = {
        "ratio": energy_j / floor_j if floor_j > 0 else None,
        "log10_ratio": math.log10(energy_j / floor_j) if floor_j > 0 and energy_j > 0 else None,
        "energy_j": energy_j,
        "energy_provenance": energy_provenance,
        "flops": flops,
        "floor_j": floor_j,
        "j_per_flop": best.j_per_flop,
        "pj_per_flop": best.j_per_flop * 1e12,
        "provenance": "estimated" if estimated else "measured",
        "floor": {
            "dtype": best.dtype,
            "size": best.size,
            "provenance": floor.provenance,
            "device": floor.device,
            "device_name": floor.device_name,
            "backends": list(floor.backends),
            "date": floor.date,
            "source": floor.source,
        },
        "energy_assumptions": list(floor.energy_assumptions),
        "assumptions": list(floor.assumptions) + [
            "the model's FLOPs are counted by torch FlopCounterMode (matmuls, convolutions, "
            "attention; elementwise work is not counted), like the matmuls of the floor",
        ],
    }
    if floor_j <= 0:
        out["note"] = "no FLOPs were counted for this inference, so the ratio is undefined"
    elif energy_j < floor_j:
        # Below a floor means the floor is not one: its matmuls were too small (or too few were
        # measured) to reach this device's best efficiency, or the FLOPs were over-counted.
        out["note"] = ("the energy is below the floor: the floor's matmuls did not reach this device's best "
                       "J/FLOP (measure larger sizes) or the model's FLOPs are over-counted")
    return out
