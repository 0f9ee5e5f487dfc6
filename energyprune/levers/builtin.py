"""The levers energyprune knows: compilation, lower precision, the attention kernel, CPU threads,
and the batch size. Each says why it does not apply where it cannot (no compiler, no native bf16,
no GPU, a model that never calls SDPA), and none changes the caller's model in place: a lever
that must change weights works on a copy.

`stage` orders levers when several are combined: the precision first (on the weights), then the
compiler (over the converted model), then the context levers (threads, kernels) around it all, so
that no compiled graph has to break on a `set_num_threads`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from energyprune.levers.base import LeverContext
from energyprune.torch_io import call_model

STAGE_WEIGHTS, STAGE_COMPILE, STAGE_CONTEXT, STAGE_WORKLOAD = 0, 1, 2, 3


class _Around(nn.Module):
    """Runs the wrapped model inside a context and, optionally, with its floating inputs cast.

    A module (not a closure) so that the meter, `.eval()` and the fidelity functions treat it as a
    model; `inner` is the model itself, so its parameters are those of the original."""

    def __init__(self, inner: nn.Module, around: Callable[[], contextlib.AbstractContextManager[Any]],
                 cast_to: torch.dtype | None = None) -> None:
        super().__init__()
        self.inner = inner
        self._around = around
        self._cast_to = cast_to

    def _cast(self, value: Any) -> Any:
        if self._cast_to is not None and isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(self._cast_to)
        return value

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(self._cast(a) for a in args)
        kwargs = {k: self._cast(v) for k, v in kwargs.items()}
        with self._around():
            return self.inner(*args, **kwargs)


def _cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: without them bf16 matmuls are emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _has_float_weights(model: nn.Module) -> bool:
    return any(p.is_floating_point() for p in model.parameters())


class Compile:
    """`torch.compile`: fuses kernels and, with mode="reduce-overhead", replays CUDA graphs so the
    GPU no longer waits for Python between kernels. Lossless up to floating-point reordering."""

    lossy = False
    stage = STAGE_COMPILE

    def __init__(self, mode: str = "default") -> None:
        if mode not in ("default", "reduce-overhead", "max-autotune"):
            raise ValueError(f"unknown torch.compile mode {mode!r}: default, reduce-overhead or max-autotune")
        self.mode = mode
        self.name = "compile" if mode == "default" else f"compile:{mode}"

    def applies_to(self, model: nn.Module, context: LeverContext) -> str | None:
        if not hasattr(torch, "compile"):
            return "this torch has no torch.compile"
        if self.mode == "reduce-overhead" and context.device.type != "cuda":
            return "CUDA graphs (mode=reduce-overhead) need a GPU"
        if context.device.type == "cpu" and not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
            return "no C++ compiler on PATH: torch.compile's CPU backend needs one (install g++)"
        return None

    def apply(self, model: nn.Module, context: LeverContext) -> nn.Module:
        return torch.compile(model, mode=self.mode)

    def recipe(self) -> Mapping[str, Any]:
        return {"lever": self.name}


class Precision:
    """Weights and activations in bf16 or fp16: half the bytes moved and faster matrix units, at the
    price of the last bits of every output (lossy: its fidelity is reported, never 'lossless')."""

    lossy = True
    stage = STAGE_WEIGHTS

    def __init__(self, dtype: str) -> None:
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"unknown precision {dtype!r}: bf16 or fp16")
        self.name = dtype
        self.dtype = dtypes[dtype]

    def applies_to(self, model: nn.Module, context: LeverContext) -> str | None:
        if not _has_float_weights(model):
            return "the model has no floating-point weights"
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
            return "the model already runs in 16-bit precision"
        if context.device.type == "cpu":
            if self.dtype == torch.float16:
                return "fp16 on a CPU is emulated (slower than fp32); bf16 is the CPU's 16-bit format"
            if not _cpu_has_native_bf16():
                return "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag): bf16 would be emulated"
        elif context.device.type == "cuda" and self.dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support"
        return None

    def apply(self, model: nn.Module, context: LeverContext) -> nn.Module:
        converted = copy.deepcopy(model).to(self.dtype)
        return _Around(converted, contextlib.nullcontext, cast_to=self.dtype)

    def recipe(self) -> Mapping[str, Any]:
        return {"lever": self.name}


def _sdpa_calls(model: nn.Module, inputs: Any) -> int:
    """How many times one call of the model calls `scaled_dot_product_attention`."""
    from torch.overrides import TorchFunctionMode

    sdpa = torch.nn.functional.scaled_dot_product_attention

    class _Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if func is sdpa:
                _Count.calls += 1
            return func(*args, **(kwargs or {}))

    with torch.inference_mode(), _Count():
        call_model(model, inputs)
    return _Count.calls


class SdpaKernel:
    """One `scaled_dot_product_attention` kernel forced (flash, efficient, cudnn or math) instead of
    torch's own choice: the fused kernels never write the attention matrix to memory."""

    lossy = False
    stage = STAGE_CONTEXT
    _GPU_ONLY = ("efficient", "cudnn")

    def __init__(self, kernel: str) -> None:
        from torch.nn.attention import SDPBackend

        backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                    "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
        if kernel not in backends:
            raise ValueError(f"unknown SDPA kernel {kernel!r}: {', '.join(backends)}")
        self.kernel = kernel
        self.backend = backends[kernel]
        self.name = f"sdpa:{kernel}"

    def applies_to(self, model: nn.Module, context: LeverContext) -> str | None:
        if self.kernel in self._GPU_ONLY and context.device.type != "cuda":
            return f"the {self.kernel} attention kernel runs on GPUs only"
        try:
            if _sdpa_calls(model, context.inputs) == 0:
                return "the model never calls scaled_dot_product_attention (it computes attention its own way)"
        except Exception as error:  # the model's own failure is reported by the plain run, not here
            return f"could not run the model to look for attention calls: {error}"
        return None

    def apply(self, model: nn.Module, context: LeverContext) -> nn.Module:
        from torch.nn.attention import sdpa_kernel

        return _Around(model, lambda: sdpa_kernel([self.backend]))

    def recipe(self) -> Mapping[str, Any]:
        return {"lever": self.name}


class HfSdpa:
    """A Hugging Face model loaded with eager attention switched to SDPA (fused attention kernels)."""

    lossy = False
    stage = STAGE_WEIGHTS
    name = "hf-attention:sdpa"

    def applies_to(self, model: nn.Module, context: LeverContext) -> str | None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            return "not a Hugging Face model"
        if config._attn_implementation != "eager":
            return f"the model already uses {config._attn_implementation!r} attention"
        if not hasattr(model, "set_attn_implementation"):
            return "this transformers version cannot switch a loaded model's attention"
        return None

    def apply(self, model: nn.Module, context: LeverContext) -> nn.Module:
        switched = copy.deepcopy(model)
        switched.set_attn_implementation("sdpa")
        return switched

    def recipe(self) -> Mapping[str, Any]:
        return {"lever": self.name}


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Threads:
    """The CPU thread count of torch's kernels. More threads finish sooner but each one draws power
    and waits at barriers, so the fewest joules may be at fewer threads than the fastest run."""

    lossy = False
    stage = STAGE_CONTEXT

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("threads: give at least 1")
        self.n = n
        self.name = f"threads:{n}"

    def applies_to(self, model: nn.Module, context: LeverContext) -> str | None:
        if context.device.type != "cpu":
            return "the thread count matters for CPU runs only"
        if self.n == torch.get_num_threads():
            return f"{self.n} thread(s) is already the setting"
        if self.n > (os.cpu_count() or 1):
            return f"only {os.cpu_count()} logical CPUs are visible"
        return None

    def apply(self, model: nn.Module, context: LeverContext) -> nn.Module:
        return _Around(model, lambda: _threads(self.n))

    def recipe(self) -> Mapping[str, Any]:
        return {"lever": self.name}


class BatchSize:
    """Inference at another batch size: measured per sample against the given batch. The batch is
    the deployment's choice (latency, memory), so the budget loop never picks it on its own."""

    lossy = False
    stage = STAGE_WORKLOAD

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("batch: give at least 1")
        self.batch_size = n
        self.name = f"batch:{n}"

    def applies_to(self, model: nn.Module, context: LeverContext) -> str | None:
        if context.make_inputs is None:
            return "the inputs are fixed (a factory's own): give --input-shape to build other batch sizes"
        if self.batch_size == context.batch_size:
            return f"batch {self.batch_size} is the batch measured"
        return None

    def apply(self, model: nn.Module, context: LeverContext) -> nn.Module:
        return model

    def recipe(self) -> Mapping[str, Any]:
        return {"lever": self.name}
