"""Tiny models for the loop's tests: every FLOP visible to FlopCounterMode, blocks and neurons."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """A residual MLP block whose layers `find_mlps` knows (the OPT names fc1 / fc2)."""

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.activation_fn = nn.ReLU()
        self.fc2 = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.activation_fn(self.fc1(x)))


class Tiny(nn.Module):
    """(batch, 8) -> (batch, 8): an input layer, `n` residual MLP blocks, a head."""

    def __init__(self, d: int = 16, h: int = 32, n: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.layers = nn.ModuleList(Block(d, h) for _ in range(n))
        self.head = nn.Linear(d, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def tiny(seed: int = 0, **kwargs: int) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(**kwargs).eval()


def tiny_inputs(batch: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 8, generator=torch.Generator().manual_seed(seed))


def build() -> tuple[Tiny, torch.Tensor]:
    """A `module:factory` for the CLI: the model and its inputs."""
    return tiny(), tiny_inputs()
