"""Levers: changes to how a model runs that keep its outputs (`base.Lever`), measured by
`energyprune advise` and applied first by the budget loop (`prune --levers auto`).

| name | what | where | lossy |
| --- | --- | --- | --- |
| `compile` | `torch.compile` (default mode) | CPU (needs g++), GPU | no |
| `compile:reduce-overhead` | `torch.compile` with CUDA graphs | GPU | no |
| `bf16` / `fp16` | weights and activations in 16 bits | bf16: GPUs, CPUs with avx512_bf16/AMX; fp16: GPUs | yes |
| `sdpa:flash`, `sdpa:efficient`, `sdpa:cudnn`, `sdpa:math` | one attention kernel forced | flash, math: CPU and GPU | no |
| `hf-attention:sdpa` | a Hugging Face model's eager attention switched to SDPA | CPU, GPU | no |
| `threads:N` | N CPU threads for torch's kernels | CPU | no |
| `batch:N` | inference at batch N, compared per sample (advise only) | any | no |

    lever = lever_named("compile:reduce-overhead")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from energyprune.errors import UsageError
from energyprune.levers.base import Lever, LeverContext, LeverSkipped
from energyprune.levers.builtin import BatchSize, Compile, HfSdpa, Precision, SdpaKernel, Threads

if TYPE_CHECKING:
    from torch import nn

#: Lever families by the name before ":"; each takes the part after ":" (or None).
LEVERS: dict[str, Callable[[str | None], Lever]] = {
    "compile": lambda arg: Compile(arg or "default"),
    "bf16": lambda arg: Precision("bf16"),
    "fp16": lambda arg: Precision("fp16"),
    "sdpa": lambda arg: SdpaKernel(arg or "flash"),
    "hf-attention": lambda arg: HfSdpa(),
    "threads": lambda arg: Threads(_whole(arg, "threads")),
    "batch": lambda arg: BatchSize(_whole(arg, "batch")),
}

#: Levers that change the workload rather than the model: advise shows them, the loop never picks them.
WORKLOAD_LEVERS = ("batch",)


def _whole(arg: str | None, family: str) -> int:
    try:
        return int(arg or "")
    except ValueError:
        raise UsageError(f"lever {family}:N needs a whole number, e.g. {family}:8") from None


def lever_named(name: str) -> Lever:
    """The lever a name such as "compile", "bf16", "threads:1" or "batch:32" stands for."""
    family, _, arg = name.strip().partition(":")
    if family not in LEVERS:
        raise UsageError(f"unknown lever {name!r}: choose from {', '.join(sorted(LEVERS))} "
                         "(threads:N, batch:N, sdpa:KERNEL, compile:MODE take a value)")
    try:
        return LEVERS[family](arg or None)
    except ValueError as error:
        raise UsageError(f"lever {name!r}: {error}") from None


def candidate_levers(device_type: str, batch_size: int = 1, *, workload: bool = True) -> list[Lever]:
    """Every built-in lever worth trying on this kind of device (each still says if it does not apply)."""
    names = ["compile", "hf-attention:sdpa", "sdpa:flash", "sdpa:math", "bf16"]
    if device_type == "cuda":
        names += ["compile:reduce-overhead", "fp16", "sdpa:efficient", "sdpa:cudnn"]
    if device_type == "cpu":
        names += [f"threads:{n}" for n in _thread_counts()]
    if workload:
        names += [f"batch:{n}" for n in (8, 32) if n > batch_size]
    return [lever_named(n) for n in names]


def _thread_counts() -> list[int]:
    """Halvings of the visible CPUs (the current setting is the baseline itself)."""
    import torch

    now = torch.get_num_threads()
    counts, n = [], max(1, (os.cpu_count() or 1))
    while n >= 1:
        if n != now:
            counts.append(n)
        n //= 2
    return sorted(set(counts))


def parse_levers(text: str) -> list[str]:
    """"compile,bf16" -> the names, each checked; "auto" and "none" pass through."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names in (["auto"], ["none"]):
        return names
    for name in names:
        lever_named(name)
    return names


def run_with_levers(model: "nn.Module", names: Sequence[str], inputs: Any) -> tuple["nn.Module", list[str]]:
    """A saved model with the levers its folder names (`LoadedModel.levers`), and one note per
    lever: applied, or not re-applied and why (a bf16 lever on a CPU without bf16...). Names are
    looked up in the registry; nothing from the folder runs."""
    from energyprune.torch_io import batch_size_of, model_device

    context = LeverContext(device=model_device(model), inputs=inputs, batch_size=batch_size_of(inputs))
    levers, notes = [], []
    for name in names:
        try:
            lever = lever_named(name)
        except UsageError as error:
            raise UsageError(f"the saved model is to run with lever {name!r}, which is not built in ({error}); "
                             "load it in Python and apply that lever yourself") from None
        reason = lever.applies_to(model, context)
        if reason:
            notes.append(f"lever {name} from the saved folder not re-applied: {reason}")
        else:
            levers.append(lever)
    for lever in ordered(levers):
        model = lever.apply(model, context)
    if levers:
        notes.append(f"running with the folder's levers: {', '.join(lever.name for lever in ordered(levers))}")
    return model, notes


def ordered(levers: Sequence[Lever]) -> list[Lever]:
    """Levers in the order they combine: weights, compiler, context (see `builtin`)."""
    return sorted(levers, key=lambda lever: getattr(lever, "stage", 2))


__all__ = ["LEVERS", "Lever", "LeverContext", "LeverSkipped", "candidate_levers", "lever_named", "ordered",
           "parse_levers", "run_with_levers", "WORKLOAD_LEVERS"]
