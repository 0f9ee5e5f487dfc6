"""Plumbing shared by the data-driven MLP criteria (`nepenthe`, `mipp`, `thermodynamic`,
`energy_aware`): which MLPs a model has, how a calibration batch reaches the model, which token
rows count.

* `mlp_specs(model)`: the MLPs `neuron_units` offers - one per block of the block stack
  (`pruning.neurons.find_mlps`), or the model itself when it is a plain `nn.Sequential(Linear,
  act, [Dropout,] Linear)`.
* `observing(model)`: eval mode and `torch.inference_mode()` for a pass, with PyTorch's fused
  transformer fast path off so that hooks inside its layers fire; every submodule's train flag
  restored after (hooks are the caller's to remove).
* `batches_of(calibration, max_batches)`: the batches, at most `max_batches`, a UsageError when
  there are none.
* `valid_rows(tensor, mask, feature_axis)`: the (rows, features) of a hooked tensor. Features on
  the last axis (transformer MLPs): one row per token, only the real ones - where a dict batch's
  `attention_mask` is 1, when the mask has one entry per row. Features on another axis (conv maps
  (N, C, H, W), `MLPSpec.feature_axis` 1): one row per position N·H·W, every one counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.metrics.flops import fused_kernels_visible
from energyprune.pruning.base import Batch, Unit
from energyprune.pruning.surgery.neurons import MLPSpec, find_mlp, find_mlps, require_mlp


def mlp_specs(model: nn.Module) -> list[MLPSpec]:
    """The MLPs whose neurons `neuron_units` enumerates, in depth order (empty when none)."""
    specs = find_mlps(model)
    if not specs:
        spec = find_mlp(model, "")
        specs = [spec] if spec is not None else []
    return specs


def specs_of_units(model: nn.Module, units: Sequence[Unit], criterion: str) -> dict[str, MLPSpec]:
    """The MLP named by each unit's path (a UsageError for a path that is not one), in first-seen
    order; for neuron units, their indices are checked against the MLP's width."""
    specs: dict[str, MLPSpec] = {}
    for unit in units:
        if unit.path not in specs:
            specs[unit.path] = require_mlp(model, unit.path)
        spec = specs[unit.path]
        if unit.kind == "neuron" and not 0 <= unit.index < spec.hidden_size:
            raise UsageError(
                f"{criterion}: neuron index {unit.index} of {unit.path or 'the model'} is out of range "
                f"(it has {spec.hidden_size})")
    return specs


def attention_mask_of(batch: Batch) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            return mask
    return None


def valid_rows(hidden: torch.Tensor, mask: torch.Tensor | None, feature_axis: int = -1) -> torch.Tensor:
    """(rows, features): every position of `hidden` but the feature axis, as rows; for features on
    the last axis, padding tokens (mask 0) left out."""
    if hidden.ndim > 1 and feature_axis % hidden.ndim != hidden.ndim - 1:
        # A conv map: positions are pixels, not tokens; an attention mask does not describe them.
        moved = hidden.movedim(feature_axis, -1)
        return moved.reshape(-1, moved.shape[-1])
    flat = hidden.reshape(-1, hidden.shape[-1])
    if mask is not None and mask.numel() == flat.shape[0]:
        keep = mask.reshape(-1).to(flat.device) != 0
        flat = flat[keep]
    return flat


def batches_of(calibration: Iterable[Batch] | None, max_batches: int | None, criterion: str) -> Iterator[Batch]:
    """Iterate the calibration data once, at most `max_batches` batches; UsageError if empty."""
    if calibration is None:
        raise UsageError(f"{criterion} needs calibration data: pass an iterable of batches")
    if isinstance(calibration, (torch.Tensor, Mapping)):
        raise UsageError(f"{criterion}: calibration must be an iterable of batches (e.g. a list of one tensor or dict)")
    seen = 0
    for batch in calibration:
        if max_batches is not None and seen >= max_batches:
            break
        seen += 1
        yield batch
    if seen == 0:
        raise UsageError(f"{criterion}: the calibration data holds no batch")


def check_max_batches(max_batches: int | None, criterion: str, minimum: int = 1) -> int | None:
    if max_batches is None:
        return None
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < minimum:
        raise UsageError(f"{criterion}: max_batches must be an integer >= {minimum} or None, got {max_batches!r}")
    return max_batches


@contextlib.contextmanager
def observing(model: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode for the block; each submodule's train flag restored after."""
    saved = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        # nn.TransformerEncoderLayer's fused fast path runs its MLP inside one kernel, where hooks
        # on linear1 / linear2 cannot fire. Recent PyTorch leaves that path by itself when it sees
        # hooks; switching it off here makes sure of it whatever the version (same arithmetic).
        with fused_kernels_visible(), torch.inference_mode():
            yield
    finally:
        for module, flag in saved:
            module.training = flag
