"""A short recovery step for the budgeted loop: distil the pruned candidate toward the original.

After a removal the candidate has lost units the rest of the network was tuned around; a few steps
of knowledge distillation on the user's calibration data win back part of the damage at little cost
(the NetAdapt recipe: short-term fine-tuning between steps, long-term fine-tuning at the end).

    from energyprune.budget import Distillation, prune_to_energy
    recovery = Distillation(teacher=model, batches=calibration, steps=20, lr=1e-4)
    result = prune_to_energy(model, "-30%", "cosine-block", inputs=x, calibration=calibration,
                             recovery=recovery)

The loss is KL(teacher ‖ student) of the next-token (or class) distributions where the model returns
logits (times `kl_weight`, at `temperature`), plus `hidden_weight` times the mean squared error of
the last hidden states (Minitron's logit + intermediate-state distillation; a Hugging Face model is
asked for `output_hidden_states`), or the hidden-state MSE alone for encoders. Dropout stays off
(eval mode), so a recovery step is deterministic for given batches.

`lora_rank=r` trains low-rank adapters (LLM-Pruner's cheaper recovery) on every linear layer
instead of all weights, and merges them back into the weights when the call ends: the model that
comes out has exactly the shapes and the cost of the one that went in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import UsageError
# The fidelity measures' own batch helpers: a batch is called the same way when distilling.
from energyprune.torch_io import forward_batch, model_device
from energyprune.torch_io import to_device


def _output(out: Any) -> tuple[torch.Tensor, str]:
    """(tensor, "logits" | "hidden") from whatever the model returned."""
    if isinstance(out, torch.Tensor):
        return out, "logits"
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits, "logits"
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None and isinstance(out, dict):
        hidden = out.get("last_hidden_state")
    if hidden is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        hidden = out[0]
    if isinstance(hidden, torch.Tensor):
        return hidden, "hidden"
    raise UsageError(f"recovery: cannot find logits or a hidden state in the model's output ({type(out).__name__})")


def _hidden(out: Any) -> torch.Tensor | None:
    """The last hidden state of a Hugging Face output asked for `output_hidden_states`."""
    states = getattr(out, "hidden_states", None)
    if states is None and isinstance(out, dict):
        states = out.get("hidden_states")
    if isinstance(states, (tuple, list)) and states and isinstance(states[-1], torch.Tensor):
        return states[-1]
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if isinstance(hidden, torch.Tensor) else None


class _LoraLinear(nn.Module):
    """y = base(x) + scale · x Aᵀ Bᵀ with A (r × in) and B (out × r, zero at the start): the base
    weights stay frozen and only A and B learn (Hu et al., LoRA)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    # Modules that read their linears' weights directly (nn.TransformerEncoderLayer's fast-path
    # check) see the effective weight, which needs grad: they then call forward, not a fused kernel
    # that would bypass the adapter.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight + (self.lora_b @ self.lora_a) * self.scale

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


def _tied(model: nn.Module) -> set[int]:
    """ids of weights shared with an embedding (a tied lm_head): an adapter there would change both."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def _add_lora(model: nn.Module, rank: int, alpha: float) -> list[_LoraLinear]:
    tied = _tied(model)
    adapters = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and id(child.weight) not in tied and min(child.in_features,
                                                                                    child.out_features) > rank:
                adapter = _LoraLinear(child, rank, alpha)
                setattr(parent, name, adapter)
                adapters.append(adapter)
    return adapters


def _merge_lora(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _LoraLinear):
                setattr(parent, name, child.merged())


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters, made trainable. Surgery may build weights under inference mode, and
    such tensors cannot take part in autograd: replace them by ordinary copies first."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_inference():
                module._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=True)
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    return params


@dataclass(frozen=True)
class Distillation:
    """`recovery=` for `prune_to_energy`: `steps` AdamW steps of distillation toward `teacher`,
    cycling over `batches`, in place on the candidate."""

    teacher: nn.Module
    batches: Sequence[Any]
    steps: int = 20
    lr: float = 1e-4
    temperature: float = 1.0
    kl_weight: float = 1.0
    hidden_weight: float = 0.0
    lora_rank: int = 0  # 0: every weight learns; r > 0: rank-r adapters, merged back at the end
    lora_alpha: float | None = None  # default 2 x rank

    def __post_init__(self) -> None:
        if not self.batches:
            raise UsageError("recovery needs data: give at least one calibration batch")
        if self.steps < 1:
            raise UsageError(f"recovery steps must be at least 1, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"the recovery learning rate must be a positive number, got {self.lr}")
        if not self.temperature > 0:
            raise UsageError(f"the distillation temperature must be positive, got {self.temperature}")
        if self.kl_weight < 0 or self.hidden_weight < 0 or self.kl_weight + self.hidden_weight == 0:
            raise UsageError("recovery: kl_weight and hidden_weight must be >= 0, and one of them > 0")
        if self.lora_rank < 0:
            raise UsageError(f"recovery: lora_rank must be >= 0 (0: no adapters), got {self.lora_rank}")

    def __call__(self, student: nn.Module) -> nn.Module:
        device = model_device(student)
        was_training = student.training
        student.eval()
        self.teacher.eval()
        with torch.inference_mode(False), torch.enable_grad():
            params = _trainable(student)
            if self.lora_rank:
                for p in params:
                    p.requires_grad_(False)
                adapters = _add_lora(student, self.lora_rank, self.lora_alpha or 2.0 * self.lora_rank)
                if not adapters:
                    raise UsageError(f"recovery: no linear layer wider than lora_rank {self.lora_rank} to adapt")
                params = [p for a in adapters for p in (a.lora_a, a.lora_b)]
            optimiser = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
            try:
                for step in range(self.steps):
                    batch = to_device(self.batches[step % len(self.batches)], device)
                    with torch.no_grad():
                        teacher_out = forward_batch(self.teacher, self._asking_hidden(batch))
                    student_out = forward_batch(student, self._asking_hidden(batch))
                    loss = self.total_loss(student_out, teacher_out)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
            finally:
                if self.lora_rank:
                    _merge_lora(student)  # the saved model carries no adapter
        for p in student.parameters():
            p.requires_grad_(False)
        student.train(was_training)
        return student

    def _asking_hidden(self, batch: Any) -> Any:
        """A Hugging Face batch that also asks for the hidden states, where their MSE counts."""
        if self.hidden_weight > 0 and isinstance(batch, dict):
            return {**batch, "output_hidden_states": True}
        return batch

    def total_loss(self, student_out: Any, teacher_out: Any) -> torch.Tensor:
        output, kind = _output(student_out)
        target, _ = _output(teacher_out)
        if kind == "hidden":
            return self.loss(output, target.detach(), kind)
        loss = self.kl_weight * self.loss(output, target.detach(), kind) if self.kl_weight else 0.0
        if self.hidden_weight:
            mine, theirs = _hidden(student_out), _hidden(teacher_out)
            if mine is None or theirs is None:
                raise UsageError("recovery: hidden_weight > 0 needs the models' hidden states (a Hugging Face "
                                 "model, or one that returns last_hidden_state); set hidden_weight=0")
            if mine.shape != theirs.shape:
                raise UsageError(f"recovery: the hidden states differ in shape ({tuple(mine.shape)} against "
                                 f"{tuple(theirs.shape)}: the hidden size was pruned); set hidden_weight=0")
            loss = loss + self.hidden_weight * F.mse_loss(mine.float(), theirs.detach().float())
        return loss

    def loss(self, output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
        if output.shape != target.shape:
            raise UsageError(f"recovery: the pruned model's output {tuple(output.shape)} does not match the "
                             f"original's {tuple(target.shape)}")
        if kind == "hidden":
            return F.mse_loss(output.float(), target.float())
        t = self.temperature
        vocab = output.shape[-1]
        student_log_p = F.log_softmax(output.float().reshape(-1, vocab) / t, dim=-1)
        teacher_log_p = F.log_softmax(target.float().reshape(-1, vocab) / t, dim=-1)
        # KL(teacher || student), scaled by t² so that the gradient size does not depend on t (Hinton et al.).
        return F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean") * t * t
