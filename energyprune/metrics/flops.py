"""Counting the arithmetic of one inference, with PyTorch's own FlopCounterMode.

FlopCounterMode counts the FLOPs of matrix products, convolutions and attention (2 per
multiply-accumulate) and ignores elementwise work, which is what the Landauer and hardware-floor
figures need: a multiply-accumulate is the unit of dense compute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from energyprune.torch_io import call_model, Inputs


@contextlib.contextmanager
def fused_kernels_visible() -> Iterator[None]:
    """The fused fast path of nn.TransformerEncoderLayer / nn.MultiheadAttention switched off:
    FlopCounterMode does not see inside that fused kernel (the built-in demo's 4 blocks counted as
    33 MFLOPs instead of 435, and removing a block changed nothing). The unfused path does the same
    matrix products, so its count is the arithmetic the fast path performs too. The caller's
    setting is restored after."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    saved = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(saved)


@contextlib.contextmanager
def _counting() -> Iterator[None]:
    with fused_kernels_visible(), torch.inference_mode():
        yield


def count_flops(model: nn.Module, inputs: Inputs) -> int:
    """FLOPs of one call `model(inputs)` (2 per multiply-accumulate), under inference mode."""
    counter = FlopCounterMode(display=False)
    with _counting(), counter:
        call_model(model, inputs)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, inputs: Inputs) -> int:
    return count_flops(model, inputs) // 2


def flops_by_module(model: nn.Module, inputs: Inputs, depth: int = 2) -> dict[str, Any]:
    """FLOPs per module path (to `depth` levels), for reports that show where compute goes."""
    counter = FlopCounterMode(display=False, depth=depth)
    with _counting(), counter:
        call_model(model, inputs)
    return {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
