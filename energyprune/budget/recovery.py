"""A short recovery step for the budgeted loop: distil the pruned candidate toward the original.

After a removal the candidate has lost units the rest of the network was tuned around; a few steps
of knowledge distillation on the user's calibration data win back part of the damage at little cost
(the NetAdapt recipe: short-term fine-tuning between steps, long-term fine-tuning at the end).

    from energyprune.budget import Distillation, prune_to_energy
    recovery = Distillation(teacher=model, batches=calibration, steps=20, lr=1e-4)
    result = prune_to_energy(model, "-30%", "cosine-block", inputs=x, calibration=calibration,
                             recovery=recovery)

The loss is KL(teacher ‖ student) of the next-token (or class) distributions where the model returns
logits, else the mean squared error of its last hidden state (encoders). Dropout stays off (eval
mode), so a recovery step is deterministic for given batches.
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

    def __post_init__(self) -> None:
        if not self.batches:
            raise UsageError("recovery needs data: give at least one calibration batch")
        if self.steps < 1:
            raise UsageError(f"recovery steps must be at least 1, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"the recovery learning rate must be a positive number, got {self.lr}")
        if not self.temperature > 0:
            raise UsageError(f"the distillation temperature must be positive, got {self.temperature}")

    def __call__(self, student: nn.Module) -> nn.Module:
        device = model_device(student)
        was_training = student.training
        student.eval()
        self.teacher.eval()
        with torch.inference_mode(False), torch.enable_grad():
            params = _trainable(student)
            optimiser = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
            for step in range(self.steps):
                batch = to_device(self.batches[step % len(self.batches)], device)
                with torch.no_grad():
                    target, kind = _output(forward_batch(self.teacher, batch))
                output, _ = _output(forward_batch(student, batch))
                loss = self.loss(output, target.detach(), kind)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        for p in params:
            p.requires_grad_(False)
        student.train(was_training)
        return student

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
