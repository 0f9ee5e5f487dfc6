"""NEPENTHE (Liao et al., arXiv 2404.16890): the ON/OFF entropy of rectifier units.

A rectifier unit (ReLU, GELU, SiLU, ... neuron of an MLP) is ON on a token when its
pre-activation is > 0. Over the calibration tokens (padding excluded),

    p_j = P(z_j > 0) = (tokens with z_j > 0) / (tokens),
    H_j = −p_j log2 p_j − (1 − p_j) log2(1 − p_j)      (bits; 0 log 0 = 0)

counted in one streaming pass by a forward hook on the layer producing the pre-activations
(`pruning.neurons.MLPSpec.preactivation_layer`): the first producer of a transformer MLP (GPT-2
`c_fc`, BERT `intermediate.dense`, OPT `fc1`, a Sequential's first Linear) - for gated MLPs (Llama
/ Qwen2 / Mistral `down(act(gate x) * up x)`) the gate's pre-activation (`gate_proj`); for the
expansion channels of an MBConv block, `_bn0` (its output feeds the first ReLU6), and a "token"
is then one position (n, y, x) of the feature map. Only integer counts are kept: memory is one
int64 per unit, whatever the amount of data.

What the criterion scores (lowest removed first):

| unit kind | unit | score |
| --- | --- | --- |
| "activation" (default) | `Unit("activation", mlp_path, 0)` | the layer's mean H over its units |
| "neuron" | `Unit("neuron", mlp_path, j)` | H_j |

A layer of zero mean entropy has every unit always ON (the activation is the identity on the
data: ReLU(z) = z) or always OFF. Removing its lowest-entropy activations is NEPENTHE's depth
reduction: `pruning.fold.fold_activation` replaces the activation by the identity and folds the two
linear maps into one, which is exact for always-ON units. Always-OFF units ("dead", p ≤
`threshold`) are removed instead (`dead_neurons` finds them, `remove_dead_neurons` removes them),
so by default (`exclude_dead=True`) the layer score is the mean over the units that are not dead:
a layer whose live units are all ON scores 0 even when some units are dead. A layer whose every
unit is dead scores +inf with a warning (its output is constant; neither folding nor neuron
removal fits - remove the block).

Gated MLPs cannot be folded (`fold_activation` refuses them: with the activation replaced by the
identity, `down((gate x) * (up x))` is still a product of two linear maps), nor can MBConv blocks
(BatchNorm, a depthwise conv and a second activation lie between expansion and projection), so
`activation_units` offers activation units for foldable MLPs only (`MLPSpec.foldable`), and
scoring an activation unit of another is a UsageError saying why. Their neurons can still be
scored (kind "neuron", from the gate's or `_bn0`'s pre-activation).

For MBConv channels two more things differ. ReLU6 is also flat above 6; the ON count is still
z > 0, as NEPENTHE defines it. And an OFF channel is not dead downstream: its zero goes through
the depthwise conv (no bias) and `_bn1`, which adds its shift β − γ·μ/σ, and the second ReLU6
passes that constant on when it is > 0. Removing such a channel then shifts the block's output
by a constant per output channel: `dead_neurons` / `remove_dead_neurons` are exact for those
channels only where `_bn1`'s shift is ≤ 0.

For GELU / SiLU an OFF unit's output is small, not exactly 0 (GELU(−3) ≈ −0.004), so removing a
dead unit of those changes the output slightly; for ReLU it is exact. An always-ON unit has H = 0
too: at neuron level it scores as low as a dead unit, though removing it (unlike folding its
layer) changes the function - prefer `dead_neurons` for the safe neuron removals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Calibration, Unit
from energyprune.torch_io import call_model, model_device, to_device
from energyprune.pruning.observe.hooks import (
    attention_mask_of,
    batches_of,
    check_max_batches,
    mlp_specs,
    observing,
    specs_of_units,
    valid_rows,
)
from energyprune.pruning.criteria.units import check_units
from energyprune.pruning.surgery.neurons import MLPSpec, require_mlp
from energyprune.pruning.surgery.slicing import get_module

logger = logging.getLogger(__name__)

UNIT_KINDS = ("activation", "neuron")


def onoff_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = −p log2 p − (1 − p) log2(1 − p) in bits, elementwise, with 0 log 0 = 0."""
    p = p.double()
    q = 1.0 - p
    h_on = torch.where(p > 0, -p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))
    h_off = torch.where(q > 0, -q * torch.log2(q.clamp_min(1e-300)), torch.zeros_like(q))
    return h_on + h_off


@dataclass(frozen=True)
class OnOffStats:
    """ON counts of one MLP's rectifier units over the calibration tokens.

    on_counts: (h,) int64 on the CPU, tokens with pre-activation > 0 per unit. tokens: tokens seen
    (padding excluded; feature-map positions for a conv block). producer: the hooked layer (the gate
    for a gated MLP, `_bn0` for an MBConv block).
    """

    path: str
    producer: str
    gated: bool
    on_counts: torch.Tensor
    tokens: int

    @property
    def p(self) -> torch.Tensor:
        """P(ON) per unit, float64."""
        return self.on_counts.double() / max(self.tokens, 1)

    @property
    def entropy_bits(self) -> torch.Tensor:
        """ON/OFF entropy per unit, bits."""
        return onoff_entropy(self.p)

    def dead(self, threshold: float = 0.0) -> list[int]:
        """Indices of the units with p ≤ threshold (always OFF for threshold 0)."""
        return [int(i) for i in torch.nonzero(self.p <= threshold).flatten()]

    def mean_entropy(self, exclude_dead: bool = True, threshold: float = 0.0) -> float:
        """Mean unit entropy in bits; over the units that are not dead when `exclude_dead`
        (NaN when every unit is dead)."""
        entropy = self.entropy_bits
        if exclude_dead:
            entropy = entropy[self.p > threshold]
        return float(entropy.mean()) if entropy.numel() else math.nan


def _check_threshold(threshold: float, what: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise UsageError(f"{what}: threshold must be a number in [0, 1), got {threshold!r}")
    return float(threshold)


def on_off_statistics(
    model: nn.Module,
    calibration: Calibration,
    paths: Iterable[str] | None = None,
    *,
    max_batches: int | None = None,
) -> dict[str, OnOffStats]:
    """Count, per unit, the calibration tokens on which each MLP's pre-activation is > 0.

    paths: the MLPs to watch (default: every MLP `mlp_specs` finds). One pass under
    `torch.inference_mode()` in eval mode; modes restored and hooks removed after."""
    max_batches = check_max_batches(max_batches, "nepenthe")
    specs = [require_mlp(model, p) for p in paths] if paths is not None else mlp_specs(model)
    if not specs:
        raise UsageError(
            f"{type(model).__name__}: no MLP of a known layout was found (see pruning.neurons); "
            "NEPENTHE needs rectifier units to count")
    counts: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {s.path: 0 for s in specs}
    mask_holder: list[torch.Tensor | None] = [None]
    handles = []

    def hook_for(spec: MLPSpec):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            axis = spec.feature_axis
            if (not isinstance(output, torch.Tensor) or output.ndim <= max(axis, -axis - 1)
                    or output.shape[axis] != spec.hidden_size):
                expected = f"(..., {spec.hidden_size})" if axis == -1 else f"{spec.hidden_size} features on axis {axis}"
                raise UsageError(
                    f"nepenthe: {spec.full(spec.preactivation_layer)} returned "
                    f"{tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__}, "
                    f"expected {expected} pre-activations")
            rows = valid_rows(output, mask_holder[0], axis)
            on = (rows > 0).sum(dim=0, dtype=torch.int64)
            counts[spec.path] = on if spec.path not in counts else counts[spec.path] + on
            tokens[spec.path] += int(rows.shape[0])
        return hook

    device = model_device(model)
    try:
        for spec in specs:
            producer = get_module(model, spec.full(spec.preactivation_layer))
            handles.append(producer.register_forward_hook(hook_for(spec)))
        with observing(model):
            for batch in batches_of(calibration, max_batches, "nepenthe"):
                batch = to_device(batch, device)
                mask_holder[0] = attention_mask_of(batch)
                call_model(model, batch)
    finally:
        mask_holder[0] = None
        for handle in handles:
            handle.remove()
    out = {}
    for spec in specs:
        if tokens[spec.path] == 0:
            raise UsageError(f"nepenthe: the MLP at {spec.path or 'the model'} never ran on the calibration data")
        out[spec.path] = OnOffStats(spec.path, spec.full(spec.preactivation_layer), spec.gated,
                                    counts[spec.path].cpu().clone(), tokens[spec.path])
    return out


def dead_neurons(
    model: nn.Module, calibration: Calibration, threshold: float = 0.0, *, max_batches: int | None = None
) -> dict[str, list[int]]:
    """{mlp_path: indices of the units ON on at most a fraction `threshold` of the calibration
    tokens} (threshold 0: never ON, p = 0), for every MLP that has such units - ready for
    `remove_dead_neurons` (which refuses to remove every unit of an MLP)."""
    threshold = _check_threshold(threshold, "dead_neurons")
    stats = on_off_statistics(model, calibration, max_batches=max_batches)
    out = {}
    for path, stat in stats.items():
        dead = stat.dead(threshold)
        if dead:
            out[path] = dead
    return out


def activation_units(model: nn.Module) -> list[Unit]:
    """One `Unit("activation", mlp_path, 0)` per foldable MLP (`fold_activation` works on it: not
    gated, not a conv block; `MLPSpec.foldable`), in depth order."""
    return [Unit("activation", spec.path, 0) for spec in mlp_specs(model) if spec.foldable]


class NepentheCriterion:
    """NEPENTHE's ON/OFF entropy (see the module note); lowest removed first.

    unit_kind: "activation" (default: layers to fold, scored by mean unit entropy) or "neuron"
      (units scored by their entropy).
    threshold: a unit is dead when p ≤ threshold (default 0: never ON).
    exclude_dead: activation scores average over the units that are not dead (default True).
    max_batches: use at most this many calibration batches.
    """

    name = "nepenthe"

    def __init__(
        self,
        unit_kind: str = "activation",
        *,
        threshold: float = 0.0,
        exclude_dead: bool = True,
        max_batches: int | None = None,
    ) -> None:
        if unit_kind not in UNIT_KINDS:
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(UNIT_KINDS)}, got {unit_kind!r}")
        self.unit_kind = unit_kind
        self.threshold = _check_threshold(threshold, self.name)
        self.exclude_dead = bool(exclude_dead)
        self.max_batches = check_max_batches(max_batches, self.name)
        self.last_stats: dict[str, OnOffStats] = {}

    def __repr__(self) -> str:
        return f"NepentheCriterion(unit_kind={self.unit_kind!r}, threshold={self.threshold})"

    def score(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        specs = specs_of_units(model, units, self.name)
        if self.unit_kind == "activation":
            refused = [f"{p or 'the model'} is {s.fold_refusal}" for p, s in specs.items() if not s.foldable]
            if refused:
                raise UsageError(
                    f"{self.name}: an activation unit is a layer for fold_activation to fold, but "
                    f"{'; '.join(refused)}. Take activation units from activation_units(model), or score neurons "
                    "(unit_kind='neuron')")
        stats = on_off_statistics(model, calibration, list(specs), max_batches=self.max_batches)
        self.last_stats = stats
        scores: dict[Unit, float] = {}
        for unit in units:
            stat = stats[unit.path]
            if self.unit_kind == "neuron":
                scores[unit] = float(stat.entropy_bits[unit.index])
                continue
            value = stat.mean_entropy(self.exclude_dead, self.threshold)
            if math.isnan(value):
                logger.warning(
                    "%s: every unit of %s is always OFF on the calibration data (its output is constant): "
                    "scored +inf - folding it would change it; remove the block instead",
                    self.name, unit.path or "the model")
                value = math.inf
            scores[unit] = value
        return scores
