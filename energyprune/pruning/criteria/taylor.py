"""First-order Taylor importance (LLM-Pruner arXiv 2305.11627, Torch-Pruning's TaylorImportance):
the loss change a unit's removal would cause to first order, |Σ w · ∂L/∂w| taken element by
element and summed over every weight the unit owns:

    score(unit) = Σ_{w ∈ unit} |w · g_w|,   g = ∂L/∂w summed over the calibration batches

The loss is the language-model loss (next-token cross-entropy, padding excluded) for a causal LM
called with `input_ids`, else the mean squared norm of the output (an encoder's hidden states, a
classifier's logits): a model without labels still has a first-order sensitivity of what it says.

What a unit owns is the kind's business, one scorer per kind in `TAYLOR_SCORERS`:

| unit kind | elements summed |
| --- | --- |
| "neuron" | its rows of every producer (gate_proj + up_proj, c_fc, ...), per-channel conv filters, its columns of the consumer and readers (as `magnitude` counts them) |
| "head" | its KV group's rows of q/k/v (GPT-2: of c_attn) and columns of the output projection |
| "hidden" | its embedding columns, norm gains, reader input columns, writer output rows (`hidden.per_channel_sum`) |
| "channel" | a CNN channel's slices in every coupled layer, with the cross-entropy against the model's own answers as the loss (`taylor_channels`) |

`estimator="fo-squared"`, the default for neurons, heads and hidden channels, is Molchanov et
al.'s Taylor-FO (CVPR 2019, "Importance Estimation for Neural Network Pruning"): per calibration
batch b, the *signed* first-order change of the loss when the unit's output is zeroed, squared,
then averaged over batches:

    score(unit) = mean_b ( Σ_{w ∈ what reads the unit} w · ∂L_b/∂w )²

For a neuron the signed sum over its columns of the consumer (down_proj) is exactly Σ_t a_j(t) ·
∂L/∂a_j(t), the activation-times-gradient of that neuron; for a head group, its columns of the
output projection; for a hidden channel, everything it owns. Signs cancel inside a batch (a unit
whose removal helps on some tokens and hurts on others), and squaring per batch keeps the variance
across batches that |Σ| over all batches at once would average away. `estimator="abs"` is
LLM-Pruner's and Torch-Pruning's Σ|w · g| (the only one for CNN channels). Why fo-squared is the
default, on SmolLM2 held-out text (exp(-KL), scores ranked raw across layers as `prune` ranks
them, equal size per row; benchmarks/width_benchmark.py): neurons 0.847 against 0.843 at 10%,
0.571 against 0.519 at 25%, 0.309 against 0.245 at 40%; 30 of 90 KV groups 0.607 against 0.254;
hidden channels 0.304 against 0.138 at 10% (where `activation` does better still, 0.357).

A new kind is one entry: a function `(model, path) -> tensor of per-unit scores`, reading each
parameter's `.grad` (filled here) beside its weight. Gradients are accumulated on the model's own
parameters and cleared afterwards; each parameter's `requires_grad` and `.grad` are restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import UsageError
from energyprune.metrics.flops import fused_kernels_visible
from energyprune.pruning.base import Calibration, Unit
from energyprune.pruning.criteria.units import check_units
from energyprune.pruning.observe.hooks import batches_of, check_max_batches
from energyprune.pruning.surgery.heads import require_attention_heads
from energyprune.pruning.surgery.neurons import require_mlp
from energyprune.pruning.surgery.slicing import get_module, weight_by_input, weight_by_output
from energyprune.torch_io import call_model, model_device, to_device


def _salience(module: nn.Module) -> torch.Tensor:
    """|w · g| of a layer's weight (zeros where no gradient reached it)."""
    weight = module.weight
    grad = weight.grad
    if grad is None:
        return torch.zeros_like(weight, dtype=torch.float64)
    return (weight.detach().double() * grad.double()).abs()


def _signed(module: nn.Module) -> torch.Tensor:
    """w · g of a layer's weight, signed (zeros where no gradient reached it)."""
    grad = module.weight.grad
    if grad is None:
        return torch.zeros_like(module.weight, dtype=torch.float64)
    return module.weight.detach().double() * grad.double()


def neuron_taylor(model: nn.Module, path: str) -> torch.Tensor:
    spec = require_mlp(model, path)
    total = torch.zeros(spec.hidden_size, dtype=torch.float64)
    for name in spec.producers:
        module = get_module(model, spec.full(name))
        total += weight_by_output(module, _salience(module)).sum(dim=1).cpu()
    for name in spec.per_channel:
        module = get_module(model, spec.full(name))
        if isinstance(module, nn.modules.conv._ConvNd):
            total += weight_by_output(module, _salience(module)).sum(dim=1).cpu()
    for name in (*spec.readers, spec.consumer):
        module = get_module(model, spec.full(name))
        total += weight_by_input(module, _salience(module)).sum(dim=1).cpu()
    return total


def head_taylor(model: nn.Module, path: str) -> torch.Tensor:
    spec = require_attention_heads(model, path)
    total = torch.zeros(spec.groups, dtype=torch.float64)
    salience: dict[str, torch.Tensor] = {}
    for group in range(spec.groups):
        for layer, side, indices in spec.parts(group):
            module = get_module(model, spec.full(layer))
            if layer not in salience:
                salience[layer] = _salience(module)
            view = (weight_by_output if side == "out" else weight_by_input)(module, salience[layer])
            total[group] += float(view[indices].sum())
    return total


def hidden_taylor(model: nn.Module, path: str) -> torch.Tensor:
    from energyprune.pruning.surgery.hidden import find_hidden, per_channel_sum

    return per_channel_sum(model, find_hidden(model), _salience)


def neuron_first_order(model: nn.Module, path: str) -> torch.Tensor:
    """Σ w · g over each neuron's columns of the consumer and readers: Σ_t a_j ∂L/∂a_j, signed."""
    spec = require_mlp(model, path)
    total = torch.zeros(spec.hidden_size, dtype=torch.float64)
    for name in (*spec.readers, spec.consumer):
        module = get_module(model, spec.full(name))
        total += weight_by_input(module, _signed(module)).sum(dim=1).cpu()
    return total


def head_first_order(model: nn.Module, path: str) -> torch.Tensor:
    """Σ w · g over each KV group's columns of the output projection, signed."""
    spec = require_attention_heads(model, path)
    total = torch.zeros(spec.groups, dtype=torch.float64)
    signed: dict[str, torch.Tensor] = {}
    for group in range(spec.groups):
        for layer, side, indices in spec.parts(group):
            if side == "out":
                continue  # q/k/v rows feed the group; its output columns are what the rest reads
            module = get_module(model, spec.full(layer))
            if layer not in signed:
                signed[layer] = _signed(module)
            total[group] += float(weight_by_input(module, signed[layer])[indices].sum())
    return total


def hidden_first_order(model: nn.Module, path: str) -> torch.Tensor:
    from energyprune.pruning.surgery.hidden import find_hidden, per_channel_sum

    return per_channel_sum(model, find_hidden(model), _signed)


#: Per unit kind, the per-unit scores of the module at a path from weights and their gradients.
TAYLOR_SCORERS: dict[str, Callable[[nn.Module, str], torch.Tensor]] = {
    "neuron": neuron_taylor,
    "head": head_taylor,
    "hidden": hidden_taylor,
}

#: Per unit kind, the signed first-order loss change per unit of one batch (`estimator="fo-squared"`).
FIRST_ORDER_SCORERS: dict[str, Callable[[nn.Module, str], torch.Tensor]] = {
    "neuron": neuron_first_order,
    "head": head_first_order,
    "hidden": hidden_first_order,
}

#: How the per-unit scores are estimated (module note).
ESTIMATORS = ("abs", "fo-squared")
#: Of neurons, heads and hidden channels (measured against "abs": module note).
DEFAULT_ESTIMATOR = "fo-squared"


def is_causal_lm(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel") or bool(getattr(config, "is_decoder", False))


def calibration_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Next-token cross-entropy for a causal LM given `input_ids`, else the mean squared output."""
    if isinstance(batch, Mapping):
        batch = {k: v for k, v in batch.items() if k != "labels"}
    output = call_model(model, batch)
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    logits = getattr(output, "logits", None)
    if is_causal_lm(model) and isinstance(ids, torch.Tensor) and isinstance(logits, torch.Tensor) \
            and logits.shape[:2] == ids.shape and ids.shape[1] > 1:
        targets = ids[:, 1:].clone()
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
            targets[mask[:, 1:] == 0] = -100
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-100)
    tensor = output
    if not isinstance(tensor, torch.Tensor):
        tensor = getattr(output, "last_hidden_state", None)
        if tensor is None:
            tensor = logits
        if tensor is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            tensor = output[0]
    if not isinstance(tensor, torch.Tensor):
        raise UsageError(f"taylor: the model returned {type(output).__name__}, with no logits, hidden states or "
                         "tensor to take a loss of")
    return tensor.float().square().mean()


@contextlib.contextmanager
def gradients_on(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad and starts from no gradient; flags, gradients and train
    modes are given back afterwards."""
    params = list(model.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()  # dropout off: the gradient of the model that will be deployed
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with fused_kernels_visible(), torch.enable_grad():
            yield
    finally:
        for p, flag, grad in saved:
            p.grad = grad
            p.requires_grad_(flag)
        for module, flag in modes:
            module.training = flag


class TaylorCriterion:
    """First-order Taylor importance of neurons, head groups and hidden channels (module note).

    unit_kind: any kind of `TAYLOR_SCORERS`. max_batches: calibration batches used (default all).
    estimator: "fo-squared" (Molchanov's Taylor-FO: the signed sum per batch, squared, averaged;
    the default for neurons, heads and hidden channels, module note) or "abs" (Σ|w·g| over the
    batches' summed gradient, as LLM-Pruner and Torch-Pruning; the default and only one for CNN
    channels).
    """

    name = "taylor"
    #: A score is the loss change the unit's removal would cause (or its square): nats in every
    #: layer, so a global ranking takes the scores as they are (`pruning.ranking`).
    scores_compare_across_groups = True

    def __init__(self, unit_kind: str = "neuron", *, max_batches: int | None = None,
                 estimator: str | None = None) -> None:
        if unit_kind not in TAYLOR_SCORERS and unit_kind != "channel":
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(TAYLOR_SCORERS)} or channel, "
                             f"got {unit_kind!r}")
        if estimator is None:
            estimator = "abs" if unit_kind == "channel" else DEFAULT_ESTIMATOR
        if estimator not in ESTIMATORS:
            raise UsageError(f"{self.name}: estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        if estimator != "abs" and unit_kind == "channel":
            raise UsageError(f"{self.name}: estimator {estimator!r} is for neurons, heads and hidden channels; "
                             "CNN channels use 'abs'")
        self.estimator = estimator
        self.unit_kind = unit_kind
        self.max_batches = check_max_batches(max_batches, self.name)
        self.last_loss: float | None = None

    def __repr__(self) -> str:
        return f"TaylorCriterion(unit_kind={self.unit_kind!r}, estimator={self.estimator!r})"

    def score(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        if self.unit_kind == "channel":
            # A CNN's channels: the loss is the cross-entropy against the model's own answers, the
            # slices those of the coupled group (`taylor_channels`).
            from energyprune.pruning.criteria.taylor_channels import channel_taylor_scores

            return channel_taylor_scores(model, units, calibration)
        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        scorer = TAYLOR_SCORERS[self.unit_kind]
        paths = list(dict.fromkeys(u.path for u in units))
        device = model_device(model)
        per_path: dict[str, torch.Tensor] = {}
        total, n = 0.0, 0
        squared = self.estimator == "fo-squared"
        with gradients_on(model):
            for batch in batches_of(calibration, self.max_batches, self.name):
                if squared:  # each batch's own gradient
                    for parameter in model.parameters():
                        parameter.grad = None
                loss = calibration_loss(model, to_device(batch, device))
                if not torch.isfinite(loss):
                    raise UsageError(f"{self.name}: the calibration loss is {float(loss)}: scores would be meaningless")
                loss.backward()
                total += float(loss.detach())
                n += 1
                if squared:
                    for path in paths:
                        change = FIRST_ORDER_SCORERS[self.unit_kind](model, path).square()
                        per_path[path] = per_path[path] + change if path in per_path else change
            if squared:
                per_path = {path: values / n for path, values in per_path.items()}
            else:
                per_path = {path: scorer(model, path) for path in paths}
        self.last_loss = total / n
        out = {}
        for unit in units:
            values = per_path[unit.path]
            if not 0 <= unit.index < values.numel():
                raise UsageError(f"{self.name}: {unit.kind} index {unit.index} of {unit.path} is out of range "
                                 f"(it has {values.numel()})")
            out[unit] = float(values[unit.index])
        return out
