"""What the benchmark scripts share beyond `energyprune.bench.session` (devices, output, resume,
meter defaults): the reference workloads of the meter benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from energyprune.bench.session import (  # noqa: F401 - the scripts import these from here
    apply_meter_defaults,
    device_record,
    load_json,
    load_resume,
    prepare_run,
    resolve_device,
    results_dir,
    save,
    save_json,
)
from energyprune.metrics.hardware_floor import device_name, device_slug  # noqa: F401
from energyprune.torch_io import to_device  # noqa: F401


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
