"""Enumerating the units a criterion scores, and the checks every criterion makes on them.

Paths are relative to the model root, as `model.named_modules()` names them:

| kind | path | index |
| --- | --- | --- |
| "block" | the block, e.g. "model.layers.3" | block index in the stack |
| "attention" | the block's attention module, e.g. "model.layers.3.self_attn" | block index |
| "neuron" | the MLP, as `pruning.neurons.find_mlps` names it ("model.layers.3.mlp"; BERT: "encoder.layer.3") | neuron index |
| "channel" | the producing conv / linear layer, as `prune_channels` takes it | output channel |

Block criteria read `Unit.index` as the block's index in the model they are given (after
earlier removals, as the surgery functions do); the path travels with the unit unchanged.
Neuron and channel criteria find their module by `Unit.path` in the model they are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Unit
from energyprune.pruning.observe.calibration import ATTENTION_NAMES
from energyprune.pruning.surgery.discovery import BlockStack, find_block_stack
from energyprune.pruning.surgery.neurons import find_mlp, find_mlps

BLOCK_KINDS = ("block", "attention")


def require_stack(model: nn.Module, what: str = "block criteria") -> BlockStack:
    stack = find_block_stack(model)
    if stack is None:
        raise UsageError(
            f"{type(model).__name__} has no stack of repeated blocks (no nn.ModuleList of two or more "
            f"same-class modules), which {what} need: score neurons or channels instead")
    return stack


def attention_of(block: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of a block's attention module, by the names `self_attn`, `attn`,
    `attention`, `self_attention`; None when it has none."""
    for name in ATTENTION_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return name, module
    return None


def block_units(model: nn.Module, kind: str = "block") -> list[Unit]:
    """One unit per block of the model's block stack (`kind="block"`), or per block that has an
    attention module (`kind="attention"`), in depth order."""
    if kind not in BLOCK_KINDS:
        raise UsageError(f"block_units: kind must be one of {', '.join(BLOCK_KINDS)}, got {kind!r}")
    stack = require_stack(model, "block units")
    units = []
    for i, block in enumerate(stack.blocks):
        if kind == "block":
            units.append(Unit("block", stack.block_path(i), i))
        else:
            found = attention_of(block)
            if found is not None:
                units.append(Unit("attention", f"{stack.block_path(i)}.{found[0]}", i))
    if not units:
        raise UsageError(f"no block of {stack.path} has an attention module named one of {', '.join(ATTENTION_NAMES)}")
    return units


def neuron_units(model: nn.Module) -> list[Unit]:
    """One unit per hidden neuron of every MLP of the block stack (`find_mlps`; for a CNN of MBConv
    blocks, one per expansion channel of every block that has an expansion), or of the model
    itself when it is a plain two-layer `nn.Sequential` MLP. Empty when no MLP is recognised."""
    specs = find_mlps(model)
    if not specs:
        spec = find_mlp(model, "")
        specs = [spec] if spec is not None else []
    return [Unit("neuron", spec.path, j) for spec in specs for j in range(spec.hidden_size)]


def check_units(units: Iterable[Unit], kind: str, criterion: str) -> list[Unit]:
    """The units as a list; a UsageError if one is not a Unit of `kind`."""
    out = list(units)
    for unit in out:
        if not isinstance(unit, Unit):
            raise UsageError(f"{criterion}: expected Unit objects, got {type(unit).__name__}")
        if unit.kind != kind:
            raise UsageError(
                f"{criterion} was set up for units of kind {kind!r} but got {unit.kind!r} ({unit.path}); "
                f"pass unit_kind={unit.kind!r} when creating it")
    return out


def check_block_indices(units: Sequence[Unit], n_blocks: int, criterion: str) -> None:
    for unit in units:
        if not 0 <= unit.index < n_blocks:
            raise UsageError(f"{criterion}: block index {unit.index} ({unit.path}) is out of range: the model has {n_blocks} blocks")


def resolve_protected(protect: Iterable[int], n_blocks: int) -> frozenset[int]:
    """Block indices to protect, negatives counted from the end (-1: the last block); indices
    outside the stack are ignored (a 2-block model has no block 2 to protect)."""
    out = set()
    for index in protect:
        resolved = index + n_blocks if index < 0 else index
        if 0 <= resolved < n_blocks:
            out.add(resolved)
    return frozenset(out)


def check_protect(protect: Iterable[int], criterion: str) -> tuple[int, ...]:
    try:
        values = tuple(protect)
    except TypeError:
        raise UsageError(f"{criterion}: protect must be a sequence of block indices, got {protect!r}") from None
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{criterion}: protect must hold integer block indices, got {value!r}")
    return values
