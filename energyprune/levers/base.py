"""The lever protocol: a change to how a model runs that keeps what it computes.

A lever is a plain object with a `name`, `applies_to(model, context)` (None when it applies, else
the reason it does not) and `apply(model, context)` (a model that computes the same outputs, within
the lever's own rounding). `recipe()` is the data that rebuilds it from the registry when a saved
model is loaded (a compiled model cannot be saved; its recipe can). A user's lever needs only
these four members:

    class Channels_last:
        name = "channels-last"
        lossy = False
        def applies_to(self, model, context): return None if context.device.type == "cuda" else "GPU only"
        def apply(self, model, context): return model.to(memory_format=torch.channels_last)
        def recipe(self): return {"lever": self.name}

A lever may also set `batch_size`: it is then measured at that batch size and compared per
sample, since J/sample is what batching buys (`BatchSize`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from energyprune.torch_io import Inputs


@dataclass(frozen=True)
class LeverContext:
    """What a lever may need to know about where and how the model runs."""

    device: torch.device
    inputs: Inputs  # one call's inputs at the measured batch size
    batch_size: int
    #: Builds inputs of another batch size, or None where the inputs are fixed (a factory's own).
    make_inputs: Callable[[int], Inputs] | None = None


@runtime_checkable
class Lever(Protocol):
    name: str
    #: True where outputs may change beyond float reordering (a lower precision): such a lever is
    #: never called lossless, and its fidelity decides.
    lossy: bool

    def applies_to(self, model: nn.Module, context: LeverContext) -> str | None: ...

    def apply(self, model: nn.Module, context: LeverContext) -> nn.Module: ...

    def recipe(self) -> Mapping[str, Any]: ...


class LeverSkipped(Exception):
    """A lever that could not apply to this model here (raised by `apply` or its first call)."""
