"""Activation importance (Minitron, arXiv 2407.14679): how strongly a unit fires on calibration
data. Lowest first: units that are nearly silent on real inputs go first.

| unit kind | score |
| --- | --- |
| "neuron" | mean over calibration tokens of \\|a_j\\|, a_j the neuron's value where the consumer reads it (`act(gate x) * up x` for a gated MLP; conv maps: every position) |
| "head" | mean over tokens of the L2 norm of the KV group's slice of the output projection's input (its query heads' attention outputs) |
| "hidden" | Σ over the model's norms (LayerNorm / RMSNorm of the hidden size) of the mean \\|output\\| of channel c: the normalised residual stream every sub-block reads |

One forward pass per batch, no gradient; forward pre-hooks on the layer that reads the units
(the MLP's consumer, the attention's output projection), padding tokens left out. Scores of
different layers share one scale (activations, not ranks), so a global ranking compares them
directly, as Minitron does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Unit
from energyprune.pruning.criteria.units import check_units
from energyprune.pruning.observe.hooks import attention_mask_of, batches_of, check_max_batches, observing, valid_rows
from energyprune.pruning.surgery.heads import AttentionSpec, require_attention_heads
from energyprune.pruning.surgery.neurons import require_mlp
from energyprune.pruning.surgery.slicing import get_module
from energyprune.torch_io import call_model, model_device, to_device

UNIT_KINDS = ("neuron", "head", "hidden")


def reader_of(model: nn.Module, kind: str, path: str) -> tuple[str, int]:
    """(path of the layer whose input holds the units, axis of the units in that input)."""
    if kind == "neuron":
        spec = require_mlp(model, path)
        return spec.full(spec.consumer), spec.feature_axis
    spec = require_attention_heads(model, path)
    return spec.full(spec.output), -1


def group_norms(rows: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """(rows, groups): the L2 norm of each KV group's columns in every row."""
    width = spec.group_size * spec.head_dim
    return rows.reshape(rows.shape[0], spec.groups, width).norm(dim=-1)


class ActivationCriterion:
    """Minitron's activation importance for neurons and head groups (see the module note).

    unit_kind: "neuron" or "head". max_batches: calibration batches used (default all).
    """

    name = "activation"

    def __init__(self, unit_kind: str = "neuron", *, max_batches: int | None = None) -> None:
        if unit_kind not in UNIT_KINDS:
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(UNIT_KINDS)}, got {unit_kind!r}")
        self.unit_kind = unit_kind
        self.max_batches = check_max_batches(max_batches, self.name)

    def __repr__(self) -> str:
        return f"ActivationCriterion(unit_kind={self.unit_kind!r})"

    def score(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        if self.unit_kind == "hidden":
            return self._score_hidden(model, units, calibration)
        paths = list(dict.fromkeys(u.path for u in units))
        heads = {p: require_attention_heads(model, p) for p in paths} if self.unit_kind == "head" else {}
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = dict.fromkeys(paths, 0)
        mask_holder: list[torch.Tensor | None] = [None]
        handles = []

        def hook_for(path: str, axis: int):  # noqa: ANN202
            def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
                if not args or not isinstance(args[0], torch.Tensor):
                    raise UsageError(f"{self.name}: the layer reading the units of {path} got no tensor input")
                rows = valid_rows(args[0], mask_holder[0], axis).double()
                values = group_norms(rows, heads[path]) if path in heads else rows.abs()
                total = values.sum(dim=0).cpu()
                sums[path] = total if path not in sums else sums[path] + total
                counts[path] += rows.shape[0]
            return hook

        device = model_device(model)
        try:
            for path in paths:
                reader, axis = reader_of(model, self.unit_kind, path)
                handles.append(get_module(model, reader).register_forward_pre_hook(hook_for(path, axis)))
            with observing(model):
                for batch in batches_of(calibration, self.max_batches, self.name):
                    batch = to_device(batch, device)
                    mask_holder[0] = attention_mask_of(batch)
                    call_model(model, batch)
        finally:
            mask_holder[0] = None
            for handle in handles:
                handle.remove()
        missing = [p for p in paths if not counts[p]]
        if missing:
            raise UsageError(f"{self.name}: {', '.join(missing)} did not run on the calibration data")
        means = {p: sums[p] / counts[p] for p in paths}
        out = {}
        for unit in units:
            values = means[unit.path]
            if not 0 <= unit.index < values.numel():
                raise UsageError(f"{self.name}: {unit.kind} index {unit.index} of {unit.path} is out of range "
                                 f"(it has {values.numel()})")
            out[unit] = float(values[unit.index])
        return out

    def _score_hidden(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        from energyprune.pruning.surgery.hidden import find_hidden

        spec = find_hidden(model)
        total = torch.zeros(spec.size, dtype=torch.float64)
        mask_holder: list[torch.Tensor | None] = [None]

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.shape[-1] == spec.size:
                rows = valid_rows(output, mask_holder[0]).double()
                if rows.shape[0]:
                    total.add_(rows.abs().mean(dim=0).cpu() / n_batches[0])

        n_batches = [1]
        batches = list(batches_of(calibration, self.max_batches, self.name))
        n_batches[0] = len(batches)
        handles = [get_module(model, name).register_forward_hook(hook) for name in spec.norms]
        device = model_device(model)
        try:
            with observing(model):
                for batch in batches:
                    batch = to_device(batch, device)
                    mask_holder[0] = attention_mask_of(batch)
                    call_model(model, batch)
        finally:
            for handle in handles:
                handle.remove()
        out = {}
        for unit in units:
            if not 0 <= unit.index < spec.size:
                raise UsageError(f"{self.name}: hidden channel {unit.index} is out of range (hidden size {spec.size})")
            out[unit] = float(total[unit.index])
        return out
