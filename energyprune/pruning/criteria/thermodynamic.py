"""Thermodynamic pruning (Lapenna, Faglioni, Fioresi, Front. Phys. 2023): a temperature per unit
from the fluctuation of its gradient, and a free-energy selection rule.

Lapenna et al. define a filter's temperature from the fluctuations SGD imprints on its parameters
and find that removing high-temperature filters costs little while removing low-temperature ones
hurts: the hottest go first. What this module implements, for a pruned model with no training run
to watch:

**Temperature.** For each calibration batch b, g_b = ∂L_b/∂w, the gradient of the batch's loss
with respect to the unit's weights. A unit's temperature is the variance across batches of that
gradient, averaged over the unit's weights:

    T_j = (1 / n_j) Σ_{e ∈ unit j} Var_b(g_b,e)        (unbiased variance over the B ≥ 2 batches)

The unit's weights: for a neuron, its row in every producer of its MLP (Llama `gate_proj` and
`up_proj`, GPT-2 `c_fc` (a column of the Conv1D weight), BERT `intermediate.dense`, ...; for an
MBConv expansion channel c, the filter c of `_expand_conv` (`weight[c]`, all its input channels
and kernel taps) and, with squeeze-and-excitation, of `_se_expand`); for a channel, the output
channel's filter of a conv (`weight[c]`) or row c of a Linear. Biases, BatchNorm parameters and
the depthwise filters of MBConv blocks are left out (they are not producer rows).

**Loss** L_b: a caller's `loss_fn(model, batch) -> scalar tensor` if given; otherwise, for a
language model (the batch holds token ids - a mapping with `input_ids`, or an integer (batch,
tokens) tensor - and the output holds (batch, tokens, vocabulary) logits), the mean next-token
cross entropy over the batch's counted positions (targets: the batch's `labels` if present, else
`input_ids`, shifted by one; `-100` and padding positions skipped); for any other model the mean
of the squares of its output (`logits`, `last_hidden_state`, or the first tensor it returns) - a
stand-in that makes every unit that shapes the output have a gradient, not a task loss.

**Free energy** (computed per layer = per MLP or per conv/linear path, so units of one layer are
put on one scale):

    E_j = ‖w_j‖² / mean_layer ‖w‖²             (weight energy, relative to the layer's mean)
    S_j = ln(T_j / mean_layer T)                (log temperature, relative to the layer's mean)
    F_j = E_j − T_anneal · S_j

and the score is F (lowest removed first): a hot unit (large S) and a small unit (small E) have a
low F and go first, as in Lapenna et al.'s finding. `t_anneal` trades the two: large values rank by
temperature alone (hottest first), 0 by magnitude alone; annealing means lowering it over a
pruning schedule (set `criterion.t_anneal` between steps). A unit with T = 0 but a non-zero
gradient (the same gradient on every batch: perfectly cold) has S = −inf and F = +inf, kept last.

**Inert units** are the one exception: a unit whose gradient is exactly zero on every batch
(its output is multiplied by zero downstream, or it is dead on all the data) cannot change the
loss at all; its temperature is 0 because it is disconnected, not because it is settled, and the
rule above would keep exactly the unit that matters least. Inert units score −inf (removed
first) and are listed in `last_inert`.

The model is not changed: gradients come from `torch.autograd.grad` (no `.grad` is written), the
`requires_grad` flag of every parameter is set for the pass (only the scored weights need one) and
restored after, and the model runs in eval mode (dropout off, batch-norm statistics frozen), each
submodule's mode restored after. Memory: one float64 accumulator per scored weight tensor.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Batch, Calibration, Unit
from energyprune.torch_io import call_model, model_device
from energyprune.pruning.observe.hooks import batches_of, check_max_batches, specs_of_units
from energyprune.torch_io import to_device
from energyprune.pruning.criteria.units import check_units
from energyprune.pruning.surgery.slicing import get_module, is_conv1d_hf

logger = logging.getLogger(__name__)

UNIT_KINDS = ("neuron", "channel")

LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass(frozen=True)
class LayerThermo:
    """Per-unit figures of one layer (MLP or conv/linear path), float64 on the CPU."""

    path: str
    temperature: torch.Tensor  # T_j
    energy: torch.Tensor  # ‖w_j‖² (not normalised)
    free_energy: torch.Tensor  # F_j (−inf for inert units)
    inert: tuple[int, ...]
    batches: int


# ------------------------------------------------------------------------------------ the loss
def _output_tensor(output: Any, names: tuple[str, ...]) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    for name in names:
        value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _token_ids(batch: Batch) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        ids = batch.get("input_ids")
    elif isinstance(batch, torch.Tensor):
        ids = batch
    else:
        ids = batch[0] if batch and isinstance(batch[0], torch.Tensor) else None
    if isinstance(ids, torch.Tensor) and ids.ndim == 2 and not ids.is_floating_point() and not ids.is_complex():
        return ids
    return None


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross entropy for a language model, else the mean square of the output (see the
    module note)."""
    call_batch: Batch = batch
    if isinstance(batch, Mapping) and "labels" in batch:
        call_batch = {k: v for k, v in batch.items() if k != "labels"}
    output = call_model(model, call_batch)
    ids = _token_ids(batch)
    logits = _output_tensor(output, ("logits",))
    if ids is not None and logits is not None and logits.ndim == 3 and tuple(logits.shape[:2]) == tuple(ids.shape):
        targets = batch.get("labels") if isinstance(batch, Mapping) and batch.get("labels") is not None else ids
        targets = targets.to(logits.device).clone()
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(ids.shape):
            mask = mask.to(logits.device).bool()
            targets[~mask] = -100
            predicting = mask[:, :-1]
        else:
            predicting = None
        shifted = targets[:, 1:].clone()
        if predicting is not None:
            shifted[~predicting] = -100
        if not bool((shifted != -100).any()):
            raise UsageError("thermodynamic: a batch has no token to predict (all masked, or sequences of length 1)")
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1),
                               ignore_index=-100)
    tensor = _output_tensor(output, ("logits", "last_hidden_state"))
    if tensor is None:
        raise UsageError(
            f"thermodynamic: cannot read a tensor from the model's output ({type(output).__name__}): pass loss_fn")
    return tensor.float().square().mean()


# --------------------------------------------------------------------------- weights of units
def _unit_view(module: nn.Module, tensor: torch.Tensor, path: str) -> torch.Tensor:
    """The weight-shaped `tensor` of `module` as (units, elements): output rows / channels."""
    if isinstance(module, nn.Linear):
        return tensor
    if is_conv1d_hf(module):
        return tensor.t()
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            if module.groups != 1:
                raise UsageError(f"thermodynamic: {path} is a grouped transposed convolution: its channels are not rows")
            tensor = tensor.transpose(0, 1)
        return tensor.reshape(tensor.shape[0], -1)
    raise UsageError(f"thermodynamic: {path} ({type(module).__name__}) is not a Linear, Conv1D or convolution")


def _weights_of(model: nn.Module, units: Sequence[Unit], kind: str) -> dict[str, list[tuple[str, nn.Module]]]:
    """{layer path: [(module path, module)] whose weight rows make up the units}."""
    if kind == "neuron":
        specs = specs_of_units(model, units, "thermodynamic")
        return {path: [(spec.full(p), get_module(model, spec.full(p))) for p in spec.producers]
                for path, spec in specs.items()}
    out: dict[str, list[tuple[str, nn.Module]]] = {}
    for unit in units:
        if unit.path not in out:
            module = get_module(model, unit.path)
            if not isinstance(getattr(module, "weight", None), torch.Tensor):
                raise UsageError(f"thermodynamic: {unit.path} ({type(module).__name__}) has no weight")
            _unit_view(module, module.weight, unit.path)  # type check
            out[unit.path] = [(unit.path, module)]
    return out


@contextlib.contextmanager
def _gradient_pass(model: nn.Module, wanted: Sequence[nn.Parameter]) -> Iterator[None]:
    """Eval mode, grad mode on, requires_grad only on `wanted`; everything restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    wanted_ids = {id(p) for p in wanted}
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(id(parameter) in wanted_ids)
        for parameter in wanted:
            parameter.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, flag in modes:
            module.training = flag


# ------------------------------------------------------------------------------ the criterion
class ThermodynamicCriterion:
    """Temperature from gradient fluctuations, free-energy selection (see the module note); lowest
    removed first.

    unit_kind: "neuron" (MLP hidden units, default) or "channel" (output channels of a conv/linear).
    t_anneal: the T of F = E − T·S (default 1.0); larger ranks more by temperature.
    loss_fn: loss_fn(model, batch) -> scalar tensor; default: next-token cross entropy for language
      models, the mean square of the output otherwise.
    max_batches: use at most this many calibration batches (at least 2 are needed).
    """

    name = "thermodynamic"

    def __init__(
        self,
        unit_kind: str = "neuron",
        *,
        t_anneal: float = 1.0,
        loss_fn: LossFn | None = None,
        max_batches: int | None = None,
    ) -> None:
        if unit_kind not in UNIT_KINDS:
            raise UsageError(f"{self.name}: unit_kind must be one of {', '.join(UNIT_KINDS)}, got {unit_kind!r}")
        if isinstance(t_anneal, bool) or not isinstance(t_anneal, (int, float)) or not (t_anneal >= 0 and math.isfinite(t_anneal)):
            raise UsageError(f"{self.name}: t_anneal must be a finite number >= 0, got {t_anneal!r}")
        if loss_fn is not None and not callable(loss_fn):
            raise UsageError(f"{self.name}: loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}")
        self.unit_kind = unit_kind
        self.t_anneal = float(t_anneal)
        self.loss_fn = loss_fn
        self.max_batches = check_max_batches(max_batches, self.name, minimum=2)
        self.last_layers: dict[str, LayerThermo] = {}
        self.last_inert: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        return f"ThermodynamicCriterion(unit_kind={self.unit_kind!r}, t_anneal={self.t_anneal})"

    def temperatures(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[str, LayerThermo]:
        """Temperature, weight energy and free energy of every unit of the layers `units` name."""
        layers = _weights_of(model, units, self.unit_kind)
        entries: dict[int, tuple[str, nn.Module, nn.Parameter]] = {}  # by parameter id: tied weights once
        for parts in layers.values():
            for name, module in parts:
                weight = module.weight
                if not isinstance(weight, nn.Parameter):
                    raise UsageError(f"{self.name}: {name}.weight is not a parameter")
                if weight.is_inference():
                    raise UsageError(
                        f"{self.name}: {name}.weight was created under torch.inference_mode() and cannot have a gradient")
                entries.setdefault(id(weight), (name, module, weight))
        params = [weight for _, _, weight in entries.values()]
        loss_fn = self.loss_fn or default_loss
        device = model_device(model)
        batches = 0
        with _gradient_pass(model, params):  # also outside any inference mode of the caller's
            sum1 = {key: torch.zeros_like(weight, dtype=torch.float64) for key, (_, _, weight) in entries.items()}
            sumsq = {key: torch.zeros(_unit_view(module, weight, name).shape[0], dtype=torch.float64,
                                      device=weight.device)
                     for key, (name, module, weight) in entries.items()}
            for batch in batches_of(calibration, self.max_batches, self.name):
                batch = to_device(batch, device)
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise UsageError(f"{self.name}: the loss must be a scalar tensor, got {type(loss).__name__}")
                if not loss.requires_grad:
                    raise UsageError(f"{self.name}: the loss does not depend on the scored weights (no gradient)")
                grads = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
                for (key, (name, module, _)), grad in zip(entries.items(), grads):
                    if grad is None:  # the weight is not used: a zero gradient
                        continue
                    grad = grad.detach().double()
                    sum1[key] += grad
                    sumsq[key] += _unit_view(module, grad, name).square().sum(dim=1)
                batches += 1
                del loss, grads
        if batches < 2:
            raise UsageError(
                f"{self.name}: the temperature is a variance across batches: give at least 2 calibration batches")
        out: dict[str, LayerThermo] = {}
        for path, parts in layers.items():
            variance = torch.zeros(0)
            energy = torch.zeros(0)
            inert_mask = torch.zeros(0, dtype=torch.bool)
            elements = 0
            for number, (name, module) in enumerate(parts):
                key = id(module.weight)
                s1 = _unit_view(module, sum1[key], name)
                s2 = sumsq[key]
                part_var = ((s2 - s1.square().sum(dim=1) / batches) / (batches - 1)).cpu()
                part_energy = _unit_view(module, module.weight.detach().double(), name).square().sum(dim=1).cpu()
                part_inert = (s2 == 0).cpu()
                variance = part_var if number == 0 else variance + part_var
                energy = part_energy if number == 0 else energy + part_energy
                inert_mask = part_inert if number == 0 else inert_mask & part_inert
                elements += s1.shape[1]
            temperature = (variance / elements).clamp_min(0.0)
            out[path] = self._free_energy(path, temperature, energy, inert_mask, batches)
        return out

    def _free_energy(self, path: str, temperature: torch.Tensor, energy: torch.Tensor,
                     inert_mask: torch.Tensor, batches: int) -> LayerThermo:
        mean_e = float(energy.mean())
        e_rel = energy / mean_e if mean_e > 0 else torch.zeros_like(energy)
        alive = ~inert_mask
        mean_t = float(temperature[alive].mean()) if bool(alive.any()) else 0.0
        with torch.no_grad():
            if mean_t > 0:
                s = torch.log(temperature / mean_t)  # −inf where T = 0
            else:
                s = torch.full_like(temperature, -math.inf)
            if self.t_anneal == 0:
                free = e_rel.clone()
            else:
                free = e_rel - self.t_anneal * s
            free[inert_mask] = -math.inf
        inert = tuple(int(i) for i in torch.nonzero(inert_mask).flatten())
        if inert:
            logger.info("%s: %d unit(s) of %s have a zero gradient on every batch (inert): scored -inf",
                        self.name, len(inert), path or "the model")
        return LayerThermo(path, temperature, energy, free, inert, batches)

    def score(self, model: nn.Module, units: Sequence[Unit], calibration: Calibration) -> dict[Unit, float]:
        units = check_units(units, self.unit_kind, self.name)
        if not units:
            return {}
        layers = self.temperatures(model, units, calibration)
        self.last_layers = layers
        self.last_inert = {path: list(layer.inert) for path, layer in layers.items() if layer.inert}
        scores = {}
        for unit in units:
            free = layers[unit.path].free_energy
            if not 0 <= unit.index < free.numel():
                raise UsageError(
                    f"{self.name}: {self.unit_kind} index {unit.index} of {unit.path or 'the model'} is out of range "
                    f"(it has {free.numel()})")
            scores[unit] = float(free[unit.index])
        return scores
