"""The one table of unit kinds: what a kind's units are, which of them the surgery allows to go,
and how they are removed. `units_for`, `remove_units`, the budget loop and the CLI's choices all
read this table, so a new kind is one `UnitKind` here (and its surgery module).

| kind | a unit is | removed by | what always stays |
| --- | --- | --- | --- |
| block | a whole block of the stack | `remove_blocks` | one block |
| attention | a block's attention sub-block | `remove_attention` | one attention module |
| neuron | one hidden unit of an MLP (or an MBConv expansion channel) | `prune_mlp_neurons` | one neuron per MLP |
| head | one KV group of an attention module (a KV head and its query heads; one head without GQA) | `prune_heads` | one group per attention |
| hidden | one channel of the hidden size (embedding channel), through every norm, projection, embedding and a tied lm_head | `prune_hidden` | one channel |
| channel | one output channel of a conv / Linear: in a plain `nn.Sequential` chain, or of a group of coupled layers traced by torch-pruning in any other model | `prune_channels` / `prune_channel_groups` | one channel per layer or group; the model's outputs |
| activation | a foldable MLP's nonlinearity (NEPENTHE) | `fold_activation` | - |
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from energyprune.errors import UsageError

if TYPE_CHECKING:  # the table itself imports no torch: `--help` lists the kinds without it
    from torch import nn

    from energyprune.pruning.base import Calibration, Unit
    from energyprune.pruning.surgery.record import PruneRecord

Removal = tuple[Any, Any]  # (nn.Module, PruneRecord)


@dataclass(frozen=True)
class UnitKind:
    name: str
    describe: str
    enumerate: Callable[[nn.Module, Calibration | None], list[Unit]]
    remove: Callable[[nn.Module, Sequence[Unit], bool, Calibration | None], Removal]
    keep_per_group: int = 1  # how many units of each group (the model, an MLP, a layer) must stay
    grouped: bool = False  # whether the groups are the units' paths (neurons of one MLP...)
    #: A check without data that the model has units of this kind (None: enumerate without data).
    available: Callable[[nn.Module], bool] | None = None

    def eligible(self, ranked: Sequence[Unit], units: Sequence[Unit]) -> list[Unit]:
        """The units that may go, best candidate first, within what must stay."""
        if not self.grouped:
            return list(ranked[: max(0, len(units) - self.keep_per_group)]) if self.keep_per_group else list(ranked)
        size: dict[str, int] = defaultdict(int)
        for unit in units:
            size[unit.path] += 1
        taken: dict[str, int] = defaultdict(int)
        out = []
        for unit in ranked:
            if taken[unit.path] < size[unit.path] - self.keep_per_group:
                taken[unit.path] += 1
                out.append(unit)
        return out


# ---- enumeration ---------------------------------------------------------------------------------
def _blocks(model: nn.Module, calibration: Calibration | None) -> list[Unit]:
    import logging

    from energyprune.pruning.criteria.units import block_units
    from energyprune.pruning.observe.calibration import shape_changing_blocks

    units = block_units(model, "block")
    first = next(iter(calibration), None) if calibration is not None else None
    if first is not None:
        changing = set(shape_changing_blocks(model, first))
        if changing:
            logging.getLogger(__name__).info(
                "blocks %s change the shape of the hidden state: not offered for removal", sorted(changing))
            units = [u for u in units if u.index not in changing]
            if not units:
                raise UsageError("every block of the model changes the shape of its input: none can be removed; "
                                 "prune neurons or channels instead")
    return units


def _attention(model: nn.Module, calibration: Calibration | None) -> list[Unit]:
    from energyprune.pruning.criteria.units import block_units
    from energyprune.pruning.surgery import RemovedAttention
    from energyprune.pruning.surgery.slicing import get_module

    # An attention already removed is not offered again.
    return [u for u in block_units(model, "attention") if not isinstance(get_module(model, u.path), RemovedAttention)]


def _neurons(model: nn.Module, calibration: Calibration | None) -> list[Unit]:
    from energyprune.pruning.criteria.units import neuron_units

    units = neuron_units(model)
    if not units:
        raise UsageError("no MLP of a known layout was found in the model: neurons cannot be pruned")
    return units


def _heads(model: nn.Module, calibration: Calibration | None) -> list[Unit]:
    from energyprune.pruning.base import Unit
    from energyprune.pruning.surgery.heads import attention_paths, find_attention_heads

    paths = attention_paths(model)
    if not paths:
        raise UsageError(f"{type(model).__name__} has no block stack with attention modules: heads cannot be pruned; "
                         f"unit kinds that apply: {', '.join(applicable_kinds(model, skip='head')) or 'none'}")
    units = []
    for path in paths:
        spec = find_attention_heads(model, path)
        if spec is None:
            from energyprune.pruning.surgery.heads import describe_layouts
            from energyprune.pruning.surgery.slicing import get_module

            raise UsageError(
                f"{path} ({type(get_module(model, path)).__name__}) is not an attention layout whose heads this "
                f"library can map (known: {describe_layouts()}); unit kinds that apply to this model: "
                f"{', '.join(applicable_kinds(model, skip='head')) or 'none'}")
        units += [Unit("head", path, g) for g in range(spec.groups)]
    return units


def _hidden(model: nn.Module, calibration: Calibration | None) -> list[Unit]:
    from energyprune.pruning.base import Unit
    from energyprune.pruning.surgery.hidden import find_hidden

    try:
        spec = find_hidden(model)
    except UsageError as error:
        raise UsageError(f"{error}".split("; unit kinds that may apply")[0] + "; unit kinds that apply to this model: "
                         f"{', '.join(applicable_kinds(model, skip='hidden')) or 'none'}") from None
    return [Unit("hidden", "", c) for c in range(spec.size)]


def _channels(model: nn.Module, calibration: Calibration | None) -> list[Unit]:
    from energyprune.pruning.base import Unit
    from energyprune.pruning.surgery import graph_channels
    from energyprune.pruning.surgery.channels import channel_producers

    if graph_channels.uses_graph(model):
        graph_channels.require_torch_pruning()  # the install line before anything else
        example = graph_channels.first_batch(calibration, model)
        groups = graph_channels.channel_groups(model, example)
        units = [Unit("channel", g.root, c) for g in groups if g.refused is None for c in range(g.size)]
        if not units:
            reasons = "; ".join(f"{g.root}: {g.refused}" for g in groups[:3])
            raise UsageError(f"no group of channels of {type(model).__name__} can be pruned safely ({reasons}"
                             f"{'; ...' if len(groups) > 3 else ''}): prune blocks or neurons instead")
        return units
    units = [Unit("channel", path, c) for path, size in channel_producers(model) for c in range(size)]
    if not units:
        raise UsageError("no conv / Linear layer of the model has channels this surgery can follow (it needs "
                         "nn.Sequential chains): prune blocks or neurons instead")
    return units


def _channels_available(model: nn.Module) -> bool:
    from torch import nn

    from energyprune.pruning.surgery import graph_channels

    if not graph_channels.uses_graph(model):
        return bool(_channels(model, None))
    graph_channels.require_torch_pruning()
    return any(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in model.modules())


def _activations(model: nn.Module, calibration: Calibration | None) -> list[Unit]:
    from energyprune.pruning.criteria.nepenthe import activation_units

    units = activation_units(model)
    if not units:
        raise UsageError("no foldable MLP (Linear-activation-Linear, not gated) was found in the model")
    return units


# ---- removal -------------------------------------------------------------------------------------
def _by_path(units: Sequence[Unit]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for unit in units:
        out[unit.path].append(unit.index)
    return {p: sorted(i) for p, i in out.items()}


def _remove_blocks(model: nn.Module, units: Sequence[Unit], inplace: bool, calibration: Calibration | None) -> Removal:
    from energyprune.pruning.surgery import remove_blocks

    return remove_blocks(model, sorted(u.index for u in units), inplace=inplace)


def _remove_attention(model: nn.Module, units: Sequence[Unit], inplace: bool, calibration: Calibration | None) -> Removal:
    from energyprune.pruning.surgery import remove_attention

    return remove_attention(model, sorted(u.index for u in units), inplace=inplace)


def _remove_neurons(model: nn.Module, units: Sequence[Unit], inplace: bool, calibration: Calibration | None) -> Removal:
    from energyprune.pruning.surgery import prune_mlp_neurons

    return prune_mlp_neurons(model, _by_path(units), inplace=inplace)


def _remove_heads(model: nn.Module, units: Sequence[Unit], inplace: bool, calibration: Calibration | None) -> Removal:
    from energyprune.pruning.surgery import prune_heads

    return prune_heads(model, _by_path(units), inplace=inplace)


def _remove_hidden(model: nn.Module, units: Sequence[Unit], inplace: bool, calibration: Calibration | None) -> Removal:
    from energyprune.pruning.surgery.hidden import prune_hidden

    return prune_hidden(model, sorted(u.index for u in units), inplace=inplace)


def _remove_channels(model: nn.Module, units: Sequence[Unit], inplace: bool, calibration: Calibration | None) -> Removal:
    from energyprune.pruning.surgery import graph_channels, prune_channels

    if graph_channels.uses_graph(model):
        example = graph_channels.first_batch(calibration, model)
        return graph_channels.prune_channel_groups(model, _by_path(units), example, inplace=inplace)
    return prune_channels(model, _by_path(units), inplace=inplace)


def _fold(model: nn.Module, units: Sequence[Unit], inplace: bool, calibration: Calibration | None) -> Removal:
    from energyprune.pruning.surgery import fold_activation
    from energyprune.pruning.surgery.record import PruneRecord

    record = PruneRecord()
    current = model
    for n, unit in enumerate(sorted(units)):
        current, step = fold_activation(current, unit.path, inplace=inplace or n > 0)
        record = record + step
    return current, record


KINDS: dict[str, UnitKind] = {
    kind.name: kind for kind in (
        UnitKind("block", "a whole block of the block stack", _blocks, _remove_blocks),
        UnitKind("attention", "the attention sub-block of a block", _attention, _remove_attention),
        UnitKind("neuron", "one hidden unit of an MLP", _neurons, _remove_neurons, grouped=True),
        UnitKind("head", "one KV group of attention heads (a KV head with its query heads)", _heads, _remove_heads,
                 grouped=True),
        UnitKind("hidden", "one channel of the hidden size (embedding channel)", _hidden, _remove_hidden),
        UnitKind("channel", "one output channel of a conv / Linear layer (and of the layers coupled to it)",
                 _channels, _remove_channels, grouped=True, available=_channels_available),
        UnitKind("activation", "a foldable MLP's nonlinearity", _activations, _fold, keep_per_group=0),
    )
}
KIND_NAMES = tuple(KINDS)


def get_kind(name: str) -> UnitKind:
    kind = KINDS.get(name)
    if kind is None:
        raise UsageError(f"unknown unit kind {name!r}: use one of {', '.join(KIND_NAMES)}")
    return kind


_probing: list[bool] = []  # non-empty while applicable_kinds runs: its enumerations must not call it again


def applicable_kinds(model: nn.Module, skip: str = "") -> list[str]:
    """The unit kinds whose units the model offers (without calibration data), for messages that
    must say what does apply when one kind does not."""
    if _probing:
        return []
    out = []
    _probing.append(True)
    try:
        for name, kind in KINDS.items():
            if name == skip:
                continue
            try:
                if kind.enumerate(model, None):
                    out.append(name)
            except UsageError:
                continue
    finally:
        _probing.pop()
    return out


def units_for(model: nn.Module, kind: str, calibration: Calibration | None = None) -> list[Unit]:
    """Every unit of `kind` the model offers.

    Blocks: given calibration data (re-iterable: a list of batches, since the criterion reads it
    again), the first batch is run once and the blocks that change the shape of the hidden state
    (strided or widening CNN blocks, which no model survives losing) are left out; without data
    every block of the stack is offered."""
    if calibration is not None and iter(calibration) is calibration:
        raise UsageError("calibration must be re-iterable (a list of batches), not a one-shot iterator: "
                         "reading its first batch here would take it from the criterion")
    return get_kind(kind).enumerate(model, calibration)


def has_units(model: nn.Module, kind: str) -> bool:
    """Whether `model` has units of `kind`, checked without data where the kind needs data to
    enumerate them (channels of a CNN are traced)."""
    unit_kind = get_kind(kind)
    if unit_kind.available is not None:
        return unit_kind.available(model)
    return bool(unit_kind.enumerate(model, None))


def remove_units(model: nn.Module, units: Sequence[Unit], *, inplace: bool = False,
                 calibration: Calibration | None = None, bridge: bool = False) -> Removal:
    """Apply the surgery for `units` (all of one kind, paths and indices of `model`). Channels of a
    model that is not a plain nn.Sequential are traced on the first batch of `calibration`.
    `bridge`: blocks go with a least-squares linear bridge fitted on `calibration` and folded into
    the block before each removed run (`surgery.bridge`); other kinds are removed as usual."""
    kinds = {u.kind for u in units}
    if len(kinds) != 1:
        raise UsageError(f"remove_units takes units of one kind, got {sorted(kinds)}")
    if calibration is not None and iter(calibration) is calibration:
        raise UsageError("calibration must be re-iterable (a list of batches), not a one-shot iterator")
    kind = kinds.pop()
    if bridge and kind == "block":
        from energyprune.pruning.surgery.bridge import remove_blocks_bridged

        return remove_blocks_bridged(model, sorted(u.index for u in units), calibration or [], inplace=inplace)
    return get_kind(kind).remove(model, list(units), inplace, calibration)


def eligible(scores: Mapping[Unit, float], units: Sequence[Unit], kind: str) -> list[Unit]:
    """The units the loop may remove, best candidate first (lowest finite score), within what the
    surgery allows to go."""
    ranked = [u for s, u in sorted((s, u) for u, s in scores.items() if math.isfinite(s))]
    return get_kind(kind).eligible(ranked, units)
