"""Replaying a `PruneRecord` on the original model: the same surgery, in the same order."""

from __future__ import annotations

import copy
import logging

from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery import blocks, channels, fold, graph_channels, heads, hidden, neurons
from energyprune.pruning.surgery.record import PruneRecord

logger = logging.getLogger(__name__)


def apply_record(original_model: nn.Module, record: PruneRecord, *, inplace: bool = False) -> nn.Module:
    """Replay `record` on `original_model` (a deep copy of it unless `inplace`) and return the pruned
    model: same architecture, same parameter shapes as the model the record came from.

    The replayed weights are those of `original_model`, sliced; to get the pruned weights, load the
    pruned model's state_dict into the result. Raises UsageError where the model does not match the
    record (another class, or a step whose sizes differ from the recorded ones).
    """
    if record.model_class and type(original_model).__name__ != record.model_class:
        raise UsageError(
            f"the record was made on a {record.model_class}, not a {type(original_model).__name__}")
    model = original_model if inplace else copy.deepcopy(original_model)
    for step, op in enumerate(record.ops):
        if op.kind == "remove_blocks":
            model, replay = blocks.remove_blocks(model, op.indices[0], inplace=True)
        elif op.kind == "remove_attention":
            model, replay = blocks.remove_attention(model, op.indices[0], inplace=True)
        elif op.kind == "prune_mlp_neurons":
            model, replay = neurons.prune_mlp_neurons(model, dict(zip(op.paths, op.indices)), inplace=True)
        elif op.kind == "prune_channels":
            model, replay = channels.prune_channels(model, dict(zip(op.paths, op.indices)), inplace=True)
        elif op.kind == "prune_heads":
            model, replay = heads.prune_heads(model, dict(zip(op.paths, op.indices)), inplace=True)
        elif op.kind == "prune_hidden":
            model, replay = hidden.prune_hidden(model, op.indices[0], inplace=True)
        elif op.kind == "prune_channel_groups":  # traced again on zeros of the recorded input shapes
            model, replay = graph_channels.replay_channel_groups(model, op)
        else:  # fold_activation
            model, replay = fold.fold_activation(model, op.paths[0], inplace=True)
        if len(replay.ops) != 1 or not replay.ops[0].same_structure(op):
            got = replay.ops[0] if replay.ops else None
            raise UsageError(
                f"step {step} ({op.kind} on {', '.join(op.paths) or 'the model'}) does not match this "
                f"model: recorded sizes {op.sizes_before} -> {op.sizes_after}, replayed "
                f"{got.sizes_before if got else '?'} -> {got.sizes_after if got else '?'}")
        logger.debug("replayed step %d: %s", step, op.kind)
    return model
