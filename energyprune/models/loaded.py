"""A model as energyprune loaded it: the module, where it came from, and how to rebuild it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from energyprune.torch_io import Inputs


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    spec: str  # what the user gave ("demo" for none)
    kind: str  # "demo", "factory", "huggingface" or "pruned"
    description: str
    factory_inputs: Inputs | None = None  # inputs a factory returned with its model
    #: How to rebuild the unpruned architecture without running code from a file we load (see
    #: `budget.saved`): {"kind": "huggingface", "model_class", "config"}, {"kind": "demo"} or
    #: {"kind": "factory", "spec"}.
    base: Mapping[str, Any] | None = None
    #: For a pruned folder: the pruning applied to `base` to get `module`.
    record: Any = None
    #: For a pruned folder: the levers (names in `energyprune.levers`) it is to run with; data only,
    #: applied by the caller (`energyprune.levers.run_with_levers`), never by the loader.
    levers: tuple[str, ...] = ()


