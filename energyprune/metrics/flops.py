"""Counting the arithmetic of one inference, with PyTorch's own FlopCounterMode.

FlopCounterMode counts the FLOPs of matrix products, convolutions and attention (2 per
multiply-accumulate) and ignores elementwise work, which is what the Landauer and hardware-floor
figures need: a multiply-accumulate is the unit of dense compute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from energyprune.models import Inputs, call_model


def count_flops(model: nn.Module, inputs: Inputs) -> int:
    """FLOPs of one call `model(inputs)` (2 per multiply-accumulate), under inference mode."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        call_model(model, inputs)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, inputs: Inputs) -> int:
    return count_flops(model, inputs) // 2


def flops_by_module(model: nn.Module, inputs: Inputs, depth: int = 2) -> dict[str, Any]:
    """FLOPs per module path (to `depth` levels), for reports that show where compute goes."""
    counter = FlopCounterMode(display=False, depth=depth)
    with torch.inference_mode(), counter:
        call_model(model, inputs)
    return {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
