"""Counting the arithmetic of one inference, with PyTorch's own FlopCounterMode.

FlopCounterMode counts the FLOPs of matrix products, convolutions and attention (2 per
multiply-accumulate) and ignores elementwise work, which is what the Landauer and hardware-floor
figures need: a multiply-accumulate is the unit of dense compute.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from energyprune.torch_io import Inputs, call_model


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


def _math_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                    scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """`scaled_dot_product_attention` written as the matrix products it performs, which
    FlopCounterMode counts exactly. The fused kernels are invisible to it on the CPU (0 FLOPs) and
    its formula asserts on grouped-query shapes on CUDA (`sdpa_flop_count: query/key/value shapes
    are incompatible`, seen on an H200 with 16 query / 4 KV heads): neither may drop a model's
    attention from its FLOPs. A KV head serves its group of query heads (grouped-query attention),
    as the fused kernel does with `enable_gqa`. Dropout is an inference no-op here."""
    heads, kv_heads = query.shape[-3], key.shape[-3]
    if kv_heads != heads:
        key = key.repeat_interleave(heads // kv_heads, dim=-3)
        value = value.repeat_interleave(heads // kv_heads, dim=-3)
    factor = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = (query @ key.transpose(-2, -1)) * factor
    if is_causal:
        causal = torch.ones(scores.shape[-2], scores.shape[-1], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores, dim=-1) @ value


@contextlib.contextmanager
def attention_as_matmuls() -> Iterator[None]:
    """`torch.nn.functional.scaled_dot_product_attention` replaced by `_math_attention` for the
    block (transformers and nn.MultiheadAttention look it up there at every call)."""
    saved = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _math_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = saved


@contextlib.contextmanager
def _counting() -> Iterator[None]:
    with fused_kernels_visible(), attention_as_matmuls(), torch.inference_mode():
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
