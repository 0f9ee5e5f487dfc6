"""The ground floor of everything that calls a model: what inputs are, how a model is called on
them, how they move between devices, how a model's size is counted. One place for each, so the
meter, the criteria, fidelity and the benchmarks call a model the same way."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from energyprune.errors import InputShapeError, UsageError

#: What one call of a model takes: a tensor, a tuple of positional arguments, or keyword arguments.
Inputs = torch.Tensor | tuple[Any, ...] | Mapping[str, Any]


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """`model(inputs)`, `model(*inputs)` or `model(**inputs)`, as the inputs are shaped."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def to_device(value: Any, device: torch.device | str) -> Any:
    """Tensors inside (nested tuples, lists, mappings) moved to `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter, else of its first buffer, else the CPU."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def forward_batch(model: nn.Module, batch: Any) -> Any:
    """Call `model` on a calibration or evaluation batch on its own device: `call_model` after
    moving the tensors there, without a `labels` key (so a Hugging Face model computes no loss)."""
    if isinstance(batch, Mapping):
        batch = {key: value for key, value in batch.items() if key != "labels"}
    elif isinstance(batch, list):
        batch = tuple(batch)
    return call_model(model, to_device(batch, model_device(model)))


def count_parameters(model: nn.Module) -> int:
    """Parameter elements of the model (tied weights counted once, as `parameters()` yields them)."""
    return sum(p.numel() for p in model.parameters())


def describe_inputs(inputs: Inputs) -> str:
    if isinstance(inputs, torch.Tensor):
        return "x".join(map(str, inputs.shape)) or "scalar"
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k}={describe_inputs(v)}" for k, v in inputs.items())
    if isinstance(inputs, tuple):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


def batch_size_of(inputs: Inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    values = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    return 1


def first_line(error: BaseException) -> str:
    """The first line of an error's message (one-line errors for the user), or its type's name."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def cuda_devices_of(model: nn.Module) -> list[int]:
    """Framework CUDA indices holding the model's parameters and buffers (sharded models span
    several)."""
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    return sorted(d.index if d.index is not None else torch.cuda.current_device()
                  for d in devices if d.type == "cuda")


def make_sync(model: nn.Module):
    """A function that waits for all work queued on the model's GPUs (a no-op on CPU)."""
    indices = cuda_devices_of(model)
    if not indices:
        return lambda: None

    def sync() -> None:
        for index in indices:
            torch.cuda.synchronize(index)

    return sync


def visible_cuda_devices() -> list[int]:
    """Every CUDA device this process sees (none without CUDA)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


#: The names `sync=` takes besides a callable (as Zeus's `sync_execution_with`).
SYNC_CHOICES = ("torch", "none")


def sync_function(sync: str | Callable[[], Any], cuda_devices: Sequence[int] = ()) -> Callable[[], Any]:
    """What waits for queued device work at a window's edges. "torch": every CUDA device in
    `cuda_devices` is synchronised (the current one when none is named), and nothing happens
    without CUDA; "none": nothing is waited for (CPU code); a callable is used as it is (a JAX or
    CuPy synchronisation, say)."""
    if callable(sync):
        return sync
    if sync == "none":
        return lambda: None
    if sync != "torch":
        raise UsageError(f"sync must be one of {', '.join(map(repr, SYNC_CHOICES))} or a callable, not {sync!r}")
    indices = list(cuda_devices)

    def torch_sync() -> None:
        if not torch.cuda.is_available():
            return
        if not indices:
            torch.cuda.synchronize()
        for index in indices:
            torch.cuda.synchronize(index)

    return torch_sync


def check_inputs(model: nn.Module, inputs: Inputs) -> None:
    """One forward pass before any measurement, so a shape mistake is one clear line."""
    try:
        with torch.inference_mode():
            call_model(model, inputs)
    except MemoryError:
        raise InputShapeError(f"the model ran out of memory on inputs of shape {describe_inputs(inputs)}: "
                              "lower --batch-size or --seq-len") from None
    except Exception as error:
        if type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower():
            raise InputShapeError(f"the model ran out of memory on inputs of shape {describe_inputs(inputs)} "
                                  f"({first_line(error)}): lower --batch-size or --seq-len") from None
        raise InputShapeError(
            f"the model rejected inputs of shape {describe_inputs(inputs)}: {first_line(error)} "
            "(fix --input-shape / --seq-len to what the model takes)"
        ) from error
