"""Surgery: removing structure so that compute really drops. One import point for the pruning loop.

Every function takes a model and what to remove, works on a deep copy unless `inplace=True`, and
returns `(model, PruneRecord)`. Records add up with `+`, serialise to JSON, and `apply_record`
replays them on the original model.

| function | removes | module |
| --- | --- | --- |
| `remove_blocks(model, indices)` | whole transformer blocks | `blocks` |
| `remove_attention(model, indices)` | the attention sub-block of blocks | `blocks` |
| `prune_mlp_neurons(model, {mlp_path: indices})` | MLP hidden neurons | `neurons` |
| `remove_dead_neurons(model, {mlp_path: indices})` | the same, for always-OFF units (NEPENTHE) | `neurons` |
| `prune_channels(model, {producer_path: indices})` | conv/linear output channels in Sequential chains | `channels` |
| `prune_heads(model, {attention_path: groups})` | attention heads, one KV group at a time | `heads` |
| `prune_hidden(model, channels)` | hidden-size (embedding) channels, through every layer | `hidden` |
| `prune_channel_groups(model, {root_path: indices}, example)` | coupled channels of any CNN (residuals, depthwise, SE gates), traced with torch-pruning | `graph_channels` |
| `fold_activation(model, mlp_path)` | an MLP's activation, folding its two maps into one | `fold` |

Indices are always those of the model passed in (after earlier removals): block 3 becomes block 2
once block 0 is gone; `PruneRecord.map_path` translates paths of the original model.
"""

from __future__ import annotations

from energyprune.pruning.surgery.blocks import RemovedAttention, find_attention, remove_attention, remove_blocks
from energyprune.pruning.surgery.channels import prune_channels
from energyprune.pruning.surgery.fold import fold_activation
from energyprune.pruning.surgery.heads import AttentionSpec, find_attention_heads, find_attentions, prune_heads
from energyprune.pruning.surgery.hidden import HiddenSpec, find_hidden, prune_hidden
from energyprune.pruning.surgery.graph_channels import ChannelGroup, channel_groups, prune_channel_groups
from energyprune.pruning.surgery.neurons import MLPSpec, find_mlp, find_mlps, prune_mlp_neurons, remove_dead_neurons
from energyprune.pruning.surgery.record import PruneOp, PruneRecord
from energyprune.pruning.surgery.replay import apply_record
from energyprune.pruning.surgery.slicing import count_parameters

__all__ = [
    "HiddenSpec",
    "find_hidden",
    "prune_hidden",
    "AttentionSpec",
    "find_attention_heads",
    "find_attentions",
    "prune_heads",
    "ChannelGroup",
    "MLPSpec",
    "PruneOp",
    "PruneRecord",
    "RemovedAttention",
    "apply_record",
    "channel_groups",
    "count_parameters",
    "find_attention",
    "find_mlp",
    "find_mlps",
    "fold_activation",
    "prune_channel_groups",
    "prune_channels",
    "prune_mlp_neurons",
    "remove_attention",
    "remove_blocks",
    "remove_dead_neurons",
]
