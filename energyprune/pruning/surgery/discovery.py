"""Finding the repeated blocks of a model without per-model code.

The rule: of the `nn.ModuleList`s whose children are all of one class, the one holding the most
parameters is the stack of transformer blocks (GPT-2 `transformer.h`, Llama/Qwen/Mistral `model.layers`, BERT
`encoder.layer`, OPT `model.decoder.layers`, GPT-NeoX `gpt_neox.layers`). Parameters, not length, decide, so a
long list of small heads never beats the real stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class BlockStack:
    path: str  # module path of the ModuleList, e.g. "model.layers"
    blocks: nn.ModuleList

    def __len__(self) -> int:
        return len(self.blocks)

    def block_path(self, index: int) -> str:
        return f"{self.path}.{index}" if self.path else str(index)


def find_block_stack(model: nn.Module) -> BlockStack | None:
    """The model's stack of repeated blocks, or None when it has no ModuleList of >= 2 same-class
    modules (an MLP or a CNN has no blocks to drop; prune its neurons or channels instead)."""
    best: tuple[int, int, str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        classes = {type(child) for child in module}
        if len(classes) != 1:
            continue
        n_params = sum(p.numel() for p in module.parameters())
        key = (n_params, len(module))
        if best is None or key > best[:2]:
            best = (n_params, len(module), path, module)
    if best is None:
        return None
    return BlockStack(path=best[2], blocks=best[3])
