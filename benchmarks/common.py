"""Helpers shared by the benchmark scripts: device naming, result files, workloads."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from energyprune.measure.meter import MeterConfig
from energyprune.metrics.hardware_floor import device_name as _library_device_name
from energyprune.metrics.hardware_floor import device_slug as _library_device_slug
from energyprune.files import to_json, write_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def device_slug(device: str | torch.device) -> str:
    """A folder name for the hardware: the GPU's name for ``cuda[:N]``, else the CPU model and the
    visible CPU count (``cpu-amd-epyc-2cpu``). The library's `energyprune.metrics.hardware_floor.device_slug`
    (ported from here) is the one definition: the floor cache and the results folders agree."""
    return _library_device_slug(device)


def device_name(device: str | torch.device) -> str:
    """The hardware in words (``NVIDIA H100 80GB HBM3``, ``cpu-AMD EPYC-2cpu``), for report headers."""
    return _library_device_name(device)


def results_dir(device: str | torch.device) -> Path:
    path = RESULTS / device_slug(device)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(path: Path, data: dict[str, Any], markdown: str) -> None:
    write_atomic(path.with_suffix(".json"), to_json(data))
    write_atomic(path.with_suffix(".md"), markdown)


def timed_loop(workload: Callable[[], Any], n: int, sync: Callable[[], None]) -> float:
    """Seconds per call of `n` unsynchronised calls between two synchronisations."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        workload()
    sync()
    return (time.perf_counter() - t0) / n


def gpu_workloads(device: str) -> dict[str, tuple[Callable[[], Any], str]]:
    """The workloads of hardware-notes.md: a steady 0.2 ms matmul, a ~5 ms MLP, and the 0.6 ms
    MLP that holds the H100 at its power cap."""
    torch.manual_seed(0)
    a = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    b = torch.randn(4096, 4096, device=device, dtype=torch.float16)

    def mlp(batch: int) -> Callable[[], Any]:
        layers = torch.nn.Sequential(*[
            torch.nn.Sequential(torch.nn.Linear(2048, 8192), torch.nn.GELU(), torch.nn.Linear(8192, 2048))
            for _ in range(6)
        ]).to(device=device, dtype=torch.float16).eval()
        x = torch.randn(batch, 2048, device=device, dtype=torch.float16)

        def run() -> Any:
            with torch.inference_mode():
                return layers(x)

        return run

    return {
        "matmul-4096-fp16": (lambda: a @ b, "4096x4096 fp16 matmul (~0.2 ms on an H100)"),
        "mlp-6x2048-b8192": (mlp(8192), "six 2048-8192-2048 fp16 MLP blocks, batch 8192 (~5 ms)"),
        "mlp-6x2048-b512": (mlp(512), "six 2048-8192-2048 fp16 MLP blocks, batch 512 (~0.6 ms, power-capped)"),
    }


def cpu_workloads() -> dict[str, tuple[Callable[[], Any], str]]:
    from energyprune.models.demo import build_demo_model

    torch.manual_seed(0)
    demo = build_demo_model()
    ids = demo.example_inputs(1)
    small = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256)).eval()
    x = torch.randn(16, 256)

    def run_demo() -> Any:
        with torch.inference_mode():
            return demo(ids)

    def run_small() -> Any:
        with torch.inference_mode():
            return small(x)

    return {
        "demo-transformer-1x128": (run_demo, "built-in demo transformer, 1x128 tokens (~10 ms on 2 vCPUs)"),
        "mlp-256-512-b16": (run_small, "256-512-256 MLP, batch 16 (~0.1 ms)"),
    }


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ---- devices for the pruning benchmarks ---------------------------------------------------------
#: Meter settings per device type where the command line gives none. CPU: the short windows the
#: committed CPU results were measured with (a 2-vCPU machine, estimated backend). CUDA: NVML's
#: energy counter ticks every ~100 ms, so windows of >= 2 s (20 ticks) and warm-ups long enough
#: for the clocks; 3 interleaved pairs a row keep a 60-row model inside a few 10-minute calls.
METER_DEFAULTS: dict[str, dict[str, float]] = {
    "cpu": {"window_s": 0.5, "repeats": 5, "idle_s": 0.5, "min_warmup_s": 0.2, "max_warmup_s": 0.6},
    "cuda": {"window_s": 2.0, "repeats": 3, "idle_s": 1.0, "min_warmup_s": 0.5, "max_warmup_s": 2.0},
}


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch.device (``cuda`` pinned to the current index),
    refused with a clear message where torch sees no such GPU."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SystemExit(f"--device {name!r}: {error}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise SystemExit(f"--device {name!r}: only cpu, cuda and cuda:N are supported")
    if not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no GPU here (torch {torch.__version__}); use --device cpu")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise SystemExit(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device("cuda", index)


def apply_meter_defaults(args: Any, device: torch.device) -> None:
    """Fill the meter options left as None on the command line with the device type's defaults."""
    for key, value in METER_DEFAULTS[device.type].items():
        if getattr(args, key, None) is None:
            setattr(args, key, type(value)(value))


def prepare_run(args: Any, device: torch.device) -> MeterConfig:
    """What every pruning benchmark does before its first model: quiet logging (the meter's
    "falling back to the ESTIMATED backend" note is kept in every row's warnings; printing it for
    each of ~100 comparisons helps nobody), a fixed seed, `--threads` on the CPU, and the meter
    config of the command line (no precision target: the repeats are the plan)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("energyprune.measure.api").setLevel(logging.ERROR)
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    return MeterConfig(window_s=args.window_s, repeats=args.repeats, precision=0.0, idle_s=args.idle_s,
                       min_warmup_s=args.min_warmup_s, max_warmup_s=args.max_warmup_s, keep_trace=False)


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors in (nested) dicts, lists and tuples moved to `device`; everything else as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_device(value, device) for value in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(value, device) for value in obj)
    return obj


def device_record(device: torch.device) -> dict[str, Any]:
    """What the JSON header says about the hardware and its numerics."""
    out: dict[str, Any] = {"device": device_slug(device), "device_name": device_name(device),
                           "torch_device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(cuda=torch.version.cuda, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}",
                   tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
                   dtype="float32 (the CPU runs' dtype; TF32 as recorded)")
        try:
            import pynvml

            pynvml.nvmlInit()
            out["driver"] = pynvml.nvmlSystemGetDriverVersion()
            if isinstance(out["driver"], bytes):
                out["driver"] = out["driver"].decode()
        except Exception:  # noqa: BLE001 - the driver version is a nicety
            pass
    return out


def save_json(path: Path, data: dict[str, Any]) -> None:
    """A checkpoint: the JSON alone, written atomically (the Markdown and plots come at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, to_json(data))


def load_resume(path: Path, schema: str, device: str, meter_config: dict[str, Any],
                quick: bool) -> dict[str, Any] | None:
    """The partial results at `path` to continue from, or None where there are none. Refuses
    (SystemExit) results of another schema, device or meter configuration: rows measured with other
    windows on other hardware must not share one table."""
    if not path.exists():
        return None
    data = load_json(path)
    problems = []
    if data.get("schema") != schema:
        problems.append(f"schema {data.get('schema')!r}, not {schema!r}")
    if data.get("device") != device:
        problems.append(f"device {data.get('device')!r}, not {device!r}")
    if data.get("meter_config") != meter_config:
        problems.append(f"meter config {data.get('meter_config')} differs from this run's {meter_config}")
    if bool(data.get("quick")) != quick:
        problems.append("it is a --quick smoke test" if quick is False else "it is not a --quick smoke test")
    if problems:
        raise SystemExit(f"--resume: {path} cannot be continued: " + "; ".join(problems)
                         + " (move it away, or give the same options)")
    return data
