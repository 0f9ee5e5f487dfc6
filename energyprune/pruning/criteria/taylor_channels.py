"""First-order Taylor importance of channels: |weight x gradient| on calibration data.

Removing a weight w changes the loss by about -w * dL/dw (Molchanov et al., "Importance Estimation
for Neural Network Pruning", CVPR 2019; LeCun's optimal brain damage to first order). A channel's
score is the sum of |w * g| over every weight slice that goes with it: its filter in each producer,
every producer coupled to it at a residual add, its depthwise filter, and the consumers' input
weights (`graph_channels.group_slices`; in a plain nn.Sequential, the producer's filter). `g` is the
gradient averaged over the calibration batches.

The loss needs no labels: the cross-entropy of the model's logits against its own top-1 answers
(the unpruned model's predictions are the targets, which is what "agreement with the original"
measures). A model whose output is not logits (a float tensor, or an object with `.logits`, of
at least two dimensions, classes last) gets a UsageError.

`channel_taylor_scores` is the function; the registry entry `taylor` (`criteria.taylor`) calls it
for channel units and its own scorers for neurons, heads and hidden channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Unit
from energyprune.pruning.criteria.magnitude import graph_channel_totals
from energyprune.pruning.criteria.units import check_units
from energyprune.pruning.surgery import graph_channels
from energyprune.pruning.surgery.slicing import get_module

UNIT_KINDS = ("channel",)


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, tuple):
        return model(*batch)
    return model(batch)


def pseudo_label_loss(output: Any) -> torch.Tensor:
    """Cross-entropy of the logits against their own argmax (no labels needed)."""
    logits = getattr(output, "logits", output)
    if isinstance(logits, (tuple, list)) and logits:
        logits = logits[0]
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim < 2:
        raise UsageError("taylor needs a model whose output is logits (a float tensor of at least two "
                         f"dimensions, classes last), got {type(logits).__name__}")
    flat = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, flat.argmax(dim=-1).detach())


def _layers(model: nn.Module, paths: Sequence[str], example: Any) -> list[nn.Module]:
    if graph_channels.uses_graph(model):
        slices = graph_channels.group_slices(model, example, paths)
        layers: list[nn.Module] = []
        for entries in slices.values():
            layers += [layer for layer, *_ in entries if all(layer is not seen for seen in layers)]
        return layers
    return [get_module(model, p) for p in paths]


def channel_taylor_scores(model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
    """|w x g| per channel unit, summed over its group's weight slices (see the module docstring)."""
    batches = list(calibration or [])
    if not batches:
        raise UsageError("taylor needs calibration data: the gradient is taken on it")
    paths = sorted({u.path for u in units})
    layers = _layers(model, paths, batches[0])
    weights = [layer.weight for layer in layers]
    sums = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    training = model.training
    flags = [w.requires_grad for w in weights]
    try:
        model.eval()  # BatchNorm with its running statistics, dropout off: the model as it infers
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                loss = pseudo_label_loss(_call(model, batch))
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for total, grad in zip(sums, grads):
                    if grad is not None:
                        total += grad.detach().double()
    finally:
        model.train(training)
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    product = {id(layer): (layer.weight.detach().double() * (total / len(batches))).abs()
               for layer, total in zip(layers, sums)}
    if graph_channels.uses_graph(model):
        totals = graph_channel_totals(model, batches[0], paths, lambda t: t, weight_of=lambda layer: product[id(layer)])
    else:
        totals = {}
        for path, layer in zip(paths, layers):
            values = product[id(layer)]
            if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
                values = values.transpose(0, 1)
            totals[path] = values.reshape(values.shape[0], -1).sum(dim=1)
    scores = {}
    for unit in units:
        values = totals[unit.path]
        if not 0 <= unit.index < values.numel():
            raise UsageError(f"taylor: channel {unit.index} of {unit.path} is out of range (it has {values.numel()})")
        scores[unit] = float(values[unit.index])
    return scores
