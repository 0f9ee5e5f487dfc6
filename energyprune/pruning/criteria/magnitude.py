"""Magnitude: the size of a unit's weights (the "traditional pruning" baseline). No data needed.

| unit kind | score (p = 1: L1, p = 2: L2) |
| --- | --- |
| "block", "attention" | per-parameter magnitude of the module's weight matrices (parameters with ≥ 2 dims; norms' gains and biases excluded): p=1 mean |w|, p=2 root-mean-square w - a sum of norms normalised by the parameter count, so blocks of different sizes compare |
| "neuron" | norm of everything the neuron owns: its row in each producer (Llama gate_proj + up_proj, GPT-2 c_fc, BERT intermediate.dense, ...) and its column in the consumer (down_proj, c_proj, output.dense, ...); HF Conv1D weights are read transposed; biases excluded. MBConv expansion channel c: filter c of `_expand_conv` (and of `_se_expand`), the depthwise filter c, and the input-c weights of `_project_conv` (and `_se_reduce`); BatchNorm gains and shifts excluded, like biases |
| "head" | norm of everything one KV group owns: its rows of the query, key and value projections (GPT-2: of the fused `c_attn`) and its columns of the output projection; biases excluded |
| "hidden" | norm of everything a hidden channel owns: its embedding columns, norm gains, the input weights of every reader (q/k/v, MLP producers, lm_head once if tied) and output rows of every writer (o_proj, down_proj) |
| "channel" | in a plain nn.Sequential: norm of the output channel's filter, `weight[c]` of a conv, row c of a Linear (column c of a Conv1D); in any other model (a group traced by torch-pruning, see `surgery.graph_channels`): norm of every conv / Linear weight slice the group removes with channel c - the filters of every producer coupled to it (all the convolutions meeting at a residual add), depthwise filters, and the consumers' input weights |

Lowest first: the smallest weights are removed first. Neuron units name their MLP as
`pruning.neurons.find_mlps` does (the path `prune_mlp_neurons` takes).

A caveat for conv blocks: a BatchNorm right after a conv undoes the scale of the conv's filters
(with statistics measured on the scaled filters, BN(a·w * x) = BN(w * x)), so the size of an
`_expand_conv` or depthwise filter says little about the channel; the projection's input weights
(after the last BatchNorm) carry the meaningful part of the score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Unit
from energyprune.pruning.criteria.units import (
    attention_of,
    check_block_indices,
    check_protect,
    check_units,
    require_stack,
    resolve_protected,
)
from energyprune.pruning.surgery.heads import require_attention_heads
from energyprune.pruning.surgery import graph_channels
from energyprune.pruning.surgery.neurons import require_mlp
from energyprune.pruning.surgery.slicing import (
    get_module,
    is_conv1d_hf,
    linear_weight_bias,
    weight_by_input,
    weight_by_output,
)

UNIT_KINDS = ("block", "attention", "neuron", "head", "hidden", "channel")


def _per_element(values: torch.Tensor, p: int) -> torch.Tensor:
    return values.abs() if p == 1 else values.square()


def _finish(total: torch.Tensor | float, p: int) -> float:
    value = float(total)
    return value if p == 1 else value ** 0.5


def graph_channel_totals(model: nn.Module, example: object, roots: Sequence[str],
                         per_element: Callable[[torch.Tensor], torch.Tensor],
                         weight_of: Callable[[nn.Module], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per root: a float64 tensor with, for each channel c, the sum of `per_element` over every weight
    slice of its traced group that c owns (`graph_channels.group_slices`). `weight_of(layer)` gives
    the tensor to read (default: the layer's weight); Taylor passes weight x gradient."""
    totals: dict[str, torch.Tensor] = {}
    for root, slices in graph_channels.group_slices(model, example, roots).items():
        size = graph_channels.group_size(model, root)
        total = torch.zeros(size, dtype=torch.float64)
        for layer, _, axis, idxs, root_idxs in slices:
            tensor = layer.weight if weight_of is None else weight_of(layer)
            values = per_element(tensor).movedim(axis, 0)
            per_index = values.reshape(values.shape[0], -1).sum(dim=1).double().cpu()
            total.index_add_(0, torch.tensor(root_idxs, dtype=torch.long), per_index[torch.tensor(idxs, dtype=torch.long)])
        totals[root] = total
    return totals


class MagnitudeCriterion:
    """Scores units by the magnitude of their weights; lowest removed first.

    unit_kind: "block", "attention", "neuron" or "channel".
    p: 1 (L1, default) or 2 (L2).
    protect: for block kinds, block indices scored +inf (default none).
    """

    name = "magnitude"

    def __init__(self, unit_kind: str = "block", *, p: int = 1, protect: Sequence[int] = ()) -> None:
        if unit_kind not in UNIT_KINDS:
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(UNIT_KINDS)}, got {unit_kind!r}")
        if p not in (1, 2) or isinstance(p, bool):
            raise UsageError(f"{self.name}: p must be 1 (L1) or 2 (L2), got {p!r}")
        self.unit_kind = unit_kind
        self.p = p
        self.protect = check_protect(protect, self.name)

    def __repr__(self) -> str:
        return f"MagnitudeCriterion(unit_kind={self.unit_kind!r}, p={self.p})"

    # ---------------------------------------------------------------------------- per kind
    def module_magnitude(self, module: nn.Module) -> float:
        """Per-parameter L1 (mean |w|) or L2 (RMS w) magnitude of a module's weight matrices."""
        total = 0.0
        count = 0
        for parameter in module.parameters():
            if parameter.ndim < 2:
                continue
            total += float(_per_element(parameter.detach().double(), self.p).sum())
            count += parameter.numel()
        if count == 0:
            raise UsageError(f"{self.name}: {type(module).__name__} has no weight matrices to measure")
        return _finish(total / count, self.p)

    def neuron_magnitudes(self, model: nn.Module, path: str) -> torch.Tensor:
        """Per-neuron sums of |w|^p (before the final root for p = 2) of the MLP at `path`."""
        spec = require_mlp(model, path)
        total = torch.zeros(spec.hidden_size, dtype=torch.float64)
        # Each view is (hidden, elements): the weights that make neuron j, or that read it.
        views = [weight_by_output(get_module(model, spec.full(name))) for name in spec.producers]
        views += [weight_by_output(module) for name in spec.per_channel
                  if isinstance(module := get_module(model, spec.full(name)), nn.modules.conv._ConvNd)]
        views += [weight_by_input(get_module(model, spec.full(name))) for name in (*spec.readers, spec.consumer)]
        for weight in views:
            total += _per_element(weight.detach().double(), self.p).sum(dim=1).cpu()
        return total

    def head_magnitudes(self, model: nn.Module, path: str) -> torch.Tensor:
        """Per-group sums of |w|^p (before the final root for p = 2) of the attention at `path`."""
        spec = require_attention_heads(model, path)
        total = torch.zeros(spec.groups, dtype=torch.float64)
        for group in range(spec.groups):
            for layer, side, indices in spec.parts(group):
                module = get_module(model, spec.full(layer))
                view = weight_by_output(module) if side == "out" else weight_by_input(module)
                total[group] += float(_per_element(view.detach()[indices].double(), self.p).sum())
        return total

    def hidden_magnitudes(self, model: nn.Module, path: str) -> torch.Tensor:
        """Per hidden channel sums of |w|^p (before the final root for p = 2); `path` is ""."""
        from energyprune.pruning.surgery.hidden import find_hidden, per_channel_sum

        return per_channel_sum(model, find_hidden(model), lambda m: _per_element(m.weight.detach().double(), self.p))

    def channel_magnitudes(self, model: nn.Module, path: str) -> torch.Tensor:
        module = get_module(model, path)
        if isinstance(module, nn.modules.conv._ConvNd):
            weight = module.weight.detach()
            if module.transposed:  # (in, out / groups, ...): output channels on dim 1
                weight = weight.transpose(0, 1)
        elif isinstance(module, nn.Linear) or is_conv1d_hf(module):
            weight, _ = linear_weight_bias(module)
            weight = weight.detach()
        else:
            raise UsageError(f"{self.name}: {path} ({type(module).__name__}) is not a convolution or linear layer")
        return _per_element(weight.double(), self.p).reshape(weight.shape[0], -1).sum(dim=1).cpu()

    # ------------------------------------------------------------------------------ score
    def score(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration | None = None) -> dict[Unit, float]:
        """Scores from the weights alone; `calibration` is read only to trace a CNN's channel groups."""
        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        if self.unit_kind in ("block", "attention"):
            stack = require_stack(model, self.name)
            check_block_indices(units, len(stack), self.name)
            protected = resolve_protected(self.protect, len(stack))
            scores = {}
            for unit in units:
                block = stack.blocks[unit.index]
                if self.unit_kind == "attention":
                    found = attention_of(block)
                    if found is None:
                        raise UsageError(f"{self.name}: block {unit.index} ({stack.block_path(unit.index)}) has no attention module")
                    block = found[1]
                scores[unit] = float("inf") if unit.index in protected else self.module_magnitude(block)
            return scores
        per_path: dict[str, torch.Tensor] = {}
        measure = {"neuron": self.neuron_magnitudes, "head": self.head_magnitudes,
                   "hidden": self.hidden_magnitudes}.get(self.unit_kind, self.channel_magnitudes)
        if self.unit_kind == "channel" and graph_channels.uses_graph(model):
            example = graph_channels.first_batch(calibration, model)
            per_path = graph_channel_totals(model, example, sorted({u.path for u in units}),
                                            lambda weight: _per_element(weight.detach().double(), self.p))
        scores = {}
        for unit in units:
            if unit.path not in per_path:
                per_path[unit.path] = measure(model, unit.path)
            values = per_path[unit.path]
            if not 0 <= unit.index < values.numel():
                raise UsageError(
                    f"{self.name}: {self.unit_kind} index {unit.index} of {unit.path} is out of range "
                    f"(it has {values.numel()})")
            scores[unit] = _finish(values[unit.index], self.p)
        return scores
