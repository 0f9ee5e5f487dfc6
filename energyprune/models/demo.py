"""The built-in demo model: a small transformer encoder built in code, so `energyprune measure`
works on a fresh install with no download. Its blocks sit in an `nn.ModuleList`, so the pruning
half finds and removes them like those of a Hugging Face model."""

from __future__ import annotations

import torch
from torch import nn


class DemoTransformer(nn.Module):
    """Token ids (batch, seq) -> logits (batch, seq, vocab). 4 blocks, d_model 256: 3.8 M
    parameters, a few milliseconds per 1x128 inference on a laptop CPU."""

    def __init__(self, vocab_size: int = 1000, d_model: int = 256, n_heads: int = 4,
                 n_layers: int = 4, d_ff: int = 1024, max_seq_len: int = 512) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_seq_len, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.position(positions)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))

    def example_inputs(self, batch_size: int, seq_len: int = 128, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.vocab_size, (batch_size, seq_len), generator=generator)
        return ids.to(self.embed.weight.device)


def build_demo_model(seed: int = 0) -> DemoTransformer:
    torch.manual_seed(seed)
    return DemoTransformer().eval()
