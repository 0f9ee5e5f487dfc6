"""Removing whole blocks, or the attention sub-block of a block, from a model's block stack.

The stack is the one `find_block_stack` finds (GPT-2 `transformer.h`, Llama/Qwen2/Mistral
`model.layers`, BERT `encoder.layer`, OPT `model.decoder.layers`, GPT-NeoX `gpt_neox.layers`).

After `remove_blocks` the model still runs forward and `generate` with a KV cache: the remaining
blocks are renumbered (every `layer_idx` attribute inside a block, which Hugging Face attention
modules use to find their slot in the cache), `config.num_hidden_layers` is set to the new depth
(Llama-style models loop over `layers[:config.num_hidden_layers]`), and per-layer config lists
(`layer_types`, `mlp_layer_types`, ...) are cut to match.

`remove_attention` replaces the attention module of a block with `RemovedAttention`, which costs
no multiply-accumulates. What "removed" means depends on where the family puts its residual:

* Llama / Qwen2 / Mistral (`self_attn`), GPT-2 (`attn`), OPT (`self_attn`), GPT-NeoX (`attention`),
  and any family whose attention module returns `(output, weights)` and whose block adds the
  output to the residual stream: the attention returns zeros, so the residual stream passes the
  attention sub-block unchanged (pre-LN blocks: exactly `x + 0`; post-LN blocks such as OPT-350m:
  the layer norm after the residual still applies). Mode "zero".
* BERT-style encoders (BERT, RoBERTa, ELECTRA...), whose attention module holds the residual and
  its LayerNorm (`BertSelfOutput`: LayerNorm(dense(attn) + x)): a zero attention would still apply
  that LayerNorm, so the whole attention sub-layer is skipped and its output is its input. Mode
  "skip".

KV cache: a removed attention neither reads nor writes the cache. The attention modules that
remain are given consecutive cache slots (their `layer_idx`, which Hugging Face attention uses only
to find its slot) in block order, so slot 0 always belongs to a real attention layer: the cache's
sequence length and mask sizes, which transformers reads from the first slot, stay right. This
relies on nothing but `cache.update(key, value, layer_idx)`, the one call every family and every
transformers release since 4.36 makes, so it does not depend on the cache's internal layer classes
(a placeholder layer, tried before, broke when transformers 5.25 dropped its `get_seq_length`).
A model whose blocks mix attention types (`config.layer_types`: full and sliding) types its cache
slots by position; where moving slots would give an attention a slot of another type, the removal
is refused with a clear error (remove whole blocks instead).

Caveats: with `output_attentions=True` the removed layers have no entry (the tuple is shorter).
A model with removed attention saved with `save_pretrained` does not reload as itself (the config
cannot say "no attention in block i" for these families; `from_pretrained` would build fresh
random attention): rebuild it with `apply_record` on the original and load the pruned state_dict.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery.discovery import BlockStack, find_block_stack
from energyprune.pruning.surgery.record import PruneOp, PruneRecord
from energyprune.pruning.surgery.slicing import check_indices, count_parameters, join, working_copy

logger = logging.getLogger(__name__)

#: Names under which a block holds its (self-)attention module, tried in this order.
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")

#: Config lists with one entry per layer, besides any attribute whose name ends in "layer_types".
PER_LAYER_CONFIG_LISTS = ("kv_sharing_modes", "no_rope_layers", "layers_block_type", "block_types")


def _require_stack(model: nn.Module) -> BlockStack:
    stack = find_block_stack(model)
    if stack is None:
        raise UsageError(
            f"{type(model).__name__} has no stack of repeated blocks (no nn.ModuleList of two or more "
            "modules of one class): prune its neurons or channels instead")
    return stack


def _configs(model: nn.Module) -> list[Any]:
    """The distinct config objects of the model (the model's, and a text config if separate)."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    out = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            text = get_text(decoder=True)
        except Exception:  # noqa: BLE001 - an odd config; the main config is enough
            text = None
        if text is not None and text is not config:
            out.append(text)
    return out


def _refuse_heterogeneous(model: nn.Module, what: str) -> None:
    for config in _configs(model):
        if getattr(config, "is_heterogeneous", False):
            raise UsageError(
                f"{what}: the model's config is heterogeneous (per_layer_config); remapping its per-layer "
                "overrides is not supported")


# ------------------------------------------------------------------------------------- blocks
def _renumber(block: nn.Module, old: int, new: int, block_path: str) -> None:
    """Set every `layer_idx` attribute equal to `old` inside `block` to `new`, except inside a
    live attention module, whose `layer_idx` is a cache slot (`_assign_cache_slots`)."""
    found = find_attention(block)
    skip = set()
    if found is not None and not isinstance(found[1], RemovedAttention):
        skip = {id(m) for m in found[1].modules()}
    for name, module in block.named_modules():
        if id(module) in skip:
            continue
        value = getattr(module, "layer_idx", None)
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if value == old:
            module.layer_idx = new
        elif value != new:
            logger.warning(
                "%s.layer_idx is %d, not the block's index %d: left as it is",
                join(block_path, name), value, old)


def _live_attention_blocks(blocks: Iterable[nn.Module]) -> list[int]:
    """Positions of the blocks whose attention has not been removed."""
    out = []
    for i, block in enumerate(blocks):
        found = find_attention(block)
        if found is not None and not isinstance(found[1], RemovedAttention):
            out.append(i)
    return out


def _check_slot_types(model: nn.Module, live: Sequence[int], layer_types_after: Sequence[Any] | None = None) -> None:
    """Refuse cache slots whose type (config.layer_types, by position) differs from the type of the
    attention that would use them: a full attention in a sliding-window slot would lose tokens."""
    for config in _configs(model):
        types = layer_types_after if layer_types_after is not None else getattr(config, "layer_types", None)
        if not isinstance(types, (list, tuple)) or len(set(types)) < 2:
            continue
        mismatched = [(slot, i) for slot, i in enumerate(live) if i < len(types) and types[i] != types[slot]]
        if mismatched:
            slot, i = mismatched[0]
            raise UsageError(
                f"cannot remove this attention: the model mixes attention types ({', '.join(sorted(set(map(str, types))))}) "
                f"and its KV cache types slots by position, so block {i}'s {types[i]} attention would use a "
                f"{types[slot]} slot; remove whole blocks instead")


def _assign_cache_slots(blocks: Iterable[nn.Module]) -> None:
    """Give the live attention modules consecutive `layer_idx` cache slots, in block order."""
    for slot, i in enumerate(_live_attention_blocks(blocks)):
        _, attention = find_attention(list(blocks)[i])  # type: ignore[misc]  # live: found
        for module in attention.modules():
            value = getattr(module, "layer_idx", None)
            if isinstance(value, int) and not isinstance(value, bool):
                module.layer_idx = slot


def _fix_config_depth(model: nn.Module, removed: tuple[int, ...], old_len: int) -> dict[str, Any]:
    """Update num_hidden_layers and per-layer lists of the model's config(s); return what changed."""
    changed: dict[str, Any] = {}
    new_len = old_len - len(removed)
    gone = set(removed)
    for config in _configs(model):
        n = getattr(config, "num_hidden_layers", None)
        if n == old_len:
            config.num_hidden_layers = new_len
            changed["num_hidden_layers"] = new_len
        elif n is not None:
            logger.warning(
                "config.num_hidden_layers is %s but the block stack had %d blocks: config left as it is",
                n, old_len)
            continue
        for key in list(vars(config)):
            if not (key.endswith("layer_types") or key in PER_LAYER_CONFIG_LISTS):
                continue
            value = getattr(config, key, None)
            if isinstance(value, (list, tuple)) and len(value) == old_len:
                new_value = type(value)(v for i, v in enumerate(value) if i not in gone)
                setattr(config, key, new_value)
                changed[key] = list(new_value)
    return changed


def remove_blocks(
    model: nn.Module, indices: Iterable[int], *, inplace: bool = False
) -> tuple[nn.Module, PruneRecord]:
    """Delete the blocks at `indices` (positions in the current stack) from the model's block stack.

    Works on a deep copy unless `inplace`. Remaining blocks are renumbered (`layer_idx`), the
    config's depth and per-layer lists are updated, and the model keeps running forward and
    `generate` with a KV cache. Raises UsageError when there is no stack, an index is out of range,
    or every block would go.
    """
    model = working_copy(model, inplace)
    params_before = count_parameters(model)
    stack = _require_stack(model)
    n = len(stack)
    removed = check_indices(indices, n, "block", stack.path or "the block stack")
    if not removed:
        raise UsageError("no block indices given")
    if len(removed) == n:
        raise UsageError(f"cannot remove all {n} blocks of {stack.path or 'the model'}: at least one must stay")
    _refuse_heterogeneous(model, "remove_blocks")

    survivors = [i for i in range(n) if i not in set(removed)]
    live = _live_attention_blocks(stack.blocks)
    if len(live) < n:  # some attention was removed before: its slots move with the blocks
        kept_live = [survivors.index(i) for i in live if i in survivors]
        for config in _configs(model):
            types = getattr(config, "layer_types", None)
            if isinstance(types, (list, tuple)) and len(types) == n:
                _check_slot_types(model, kept_live, [types[i] for i in survivors])
    for index in reversed(removed):
        del stack.blocks[index]
    for new, old in enumerate(survivors):
        _renumber(stack.blocks[new], old, new, stack.block_path(new))
    _assign_cache_slots(stack.blocks)
    changed = _fix_config_depth(model, removed, n)

    op = PruneOp(
        kind="remove_blocks",
        paths=(stack.path,),
        indices=(removed,),
        sizes_before=(n,),
        sizes_after=(n - len(removed),),
        params_before=params_before,
        params_after=count_parameters(model),
        detail={"config": changed, "survivors": survivors},
    )
    logger.info("removed blocks %s of %s (%d -> %d)", list(removed), stack.path, n, n - len(removed))
    return model, PruneRecord((op,), type(model).__name__)


# ---------------------------------------------------------------------------------- attention
class RemovedAttention(nn.Module):
    """Stands where an attention module was; no parameters, no multiply-accumulates.

    mode "zero": returns `(zeros like the input, None)`, so `x + attn(x)` is `x`.
    mode "skip": returns `(input, None)`, for BERT-style attention modules that add the residual
    and apply a LayerNorm themselves.
    It never touches a KV cache passed in: the remaining attention layers own every slot.
    `layer_idx` is the block it stands in (for reports), not a cache slot.
    """

    def __init__(self, mode: str, layer_idx: int | None = None, replaced: str = "") -> None:
        super().__init__()
        if mode not in ("zero", "skip"):
            raise UsageError(f"RemovedAttention mode must be 'zero' or 'skip', got {mode!r}")
        self.mode = mode
        self.layer_idx = layer_idx
        self.replaced = replaced  # class name of the module it replaced, for repr and reports

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, layer_idx={self.layer_idx}, replaced={self.replaced!r}"

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if self.mode == "skip":
            return hidden_states, None
        return torch.zeros_like(hidden_states), None


def find_attention(block: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of a block's self-attention, by the names of `ATTENTION_NAMES`."""
    for name in ATTENTION_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return name, module
    return None


def _attention_mode(attention: nn.Module) -> str:
    """"skip" where the attention module applies the residual and a LayerNorm itself (BERT's
    BertAttention -> BertSelfOutput.LayerNorm), else "zero"."""
    output = getattr(attention, "output", None)
    if isinstance(output, nn.Module) and any(isinstance(m, nn.LayerNorm) for m in output.modules()):
        return "skip"
    return "zero"


def _can_generate(model: nn.Module) -> bool:
    can = getattr(model, "can_generate", None)
    try:
        return bool(can()) if callable(can) else False
    except Exception:  # noqa: BLE001 - a model whose can_generate fails cannot generate
        return False


def remove_attention(
    model: nn.Module, indices: Iterable[int], *, inplace: bool = False
) -> tuple[nn.Module, PruneRecord]:
    """Replace the attention sub-block of the blocks at `indices` with `RemovedAttention`.

    See the module docstring for what "removed" means per family. Works on a deep copy unless
    `inplace`. Raises UsageError for a block without a recognisable attention module, an attention
    already removed, or (for a model that generates) removing the attention of every block: the KV
    cache would then have no layer left to count the tokens seen.
    """
    model = working_copy(model, inplace)
    params_before = count_parameters(model)
    stack = _require_stack(model)
    n = len(stack)
    chosen = check_indices(indices, n, "block", stack.path or "the block stack")
    if not chosen:
        raise UsageError("no block indices given")

    present = []
    for i, block in enumerate(stack.blocks):
        found = find_attention(block)
        if found is not None and not isinstance(found[1], RemovedAttention):
            present.append(i)
    for i in chosen:
        found = find_attention(stack.blocks[i])
        if found is None:
            raise UsageError(
                f"{stack.block_path(i)} ({type(stack.blocks[i]).__name__}) has no attention module under "
                f"any of the names {', '.join(ATTENTION_NAMES)}")
        if isinstance(found[1], RemovedAttention):
            raise UsageError(f"the attention of {stack.block_path(i)} is already removed")
    left = [i for i in present if i not in set(chosen)]
    if not left and _can_generate(model):
        raise UsageError(
            "cannot remove the attention of every block of a generating model: its KV cache needs one "
            "attention layer to count the tokens seen; remove blocks instead")
    _check_slot_types(model, left)

    paths, modes = [], []
    for i in chosen:
        block = stack.blocks[i]
        name, attention = find_attention(block)  # type: ignore[misc]  # checked above
        mode = _attention_mode(attention)
        replacement = RemovedAttention(mode, i, type(attention).__name__)
        setattr(block, name, replacement)
        paths.append(join(stack.block_path(i), name))
        modes.append(mode)
    _assign_cache_slots(stack.blocks)

    op = PruneOp(
        kind="remove_attention",
        paths=(stack.path,),
        indices=(chosen,),
        sizes_before=(len(present),),
        sizes_after=(len(left),),
        params_before=params_before,
        params_after=count_parameters(model),
        detail={"attention_paths": paths, "modes": modes},
    )
    logger.info("removed the attention of blocks %s of %s (modes %s)", list(chosen), stack.path, modes)
    return model, PruneRecord((op,), type(model).__name__)
