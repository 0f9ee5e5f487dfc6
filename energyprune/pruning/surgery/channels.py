"""Removing output channels of a convolution (or output features of a Linear) in an nn.Sequential
chain, together with everything downstream that reads them.

Dependencies are read from `nn.Sequential` chains only, not traced: inside a plain Sequential
(one whose `forward` is `nn.Sequential.forward`, nested Sequentials flattened) the output of each
module goes to the next one and nowhere else, so who consumes a channel is known without running
the model. Anything else (a custom `forward` with a residual add, a concatenation, a
squeeze-excitation gate) could read the channels in ways hooks cannot see, so it is refused
with a UsageError naming the module, rather than guessed. A forward-hook trace would see the
order modules run in, but not a residual `x + f(x)`, and would prune ResNets into wrong models.

Walking forward from the producer, a chain may hold:
* BatchNorm / InstanceNorm (1d/2d/3d): affine parameters and running statistics lose the channels;
* parameter-free modules that act per channel: activations, dropout, pooling, Identity
  (PReLU with one weight per channel loses those weights);
* `nn.Flatten(start_dim=1)`: channel c then owns the columns [c*S, (c+1)*S) of the next Linear,
  S = in_features / channels (the spatial size after pooling);
* a depthwise convolution (groups == in_channels, EfficientNet/MobileNet style): its groups,
  input and output channels shrink with the producer's, and the walk goes on through it;
* then the consumer: a convolution with groups == 1 (input channels removed) or a Linear
  (input columns removed), which ends the walk.
A grouped convolution with 1 < groups < in_channels, LayerNorm/GroupNorm (they mix channels),
or any other module is refused. So is a producer whose channels leave the Sequential (they are
its output: pruning them would change what its caller receives).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery.record import PruneOp, PruneRecord
from energyprune.pruning.surgery.slicing import (
    check_indices,
    count_parameters,
    get_module,
    in_size,
    join,
    kept,
    out_size,
    shrink_batchnorm,
    shrink_depthwise,
    shrink_inputs,
    shrink_outputs,
    working_copy,
)

logger = logging.getLogger(__name__)

#: Parameter-free modules that act on each channel separately (or only on spatial positions).
PER_CHANNEL = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Identity,
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.ZeroPad2d, nn.Upsample,
)


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def _leaves(module: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """The modules of a plain Sequential in execution order, nested plain Sequentials flattened."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        child_path = join(path, name)
        if _plain_sequential(child):
            out.extend(_leaves(child, child_path))
        else:
            out.append((child_path, child))
    return out


def _chain_of(model: nn.Module, path: str) -> tuple[str, list[tuple[str, nn.Module]]]:
    """(path of the outermost plain Sequential holding `path`, its flattened leaves)."""
    parts = path.split(".")
    outer: str | None = None
    for k in range(len(parts) - 1, -1, -1):
        ancestor = ".".join(parts[:k])
        if _plain_sequential(get_module(model, ancestor)):
            outer = ancestor
        else:
            break
    if outer is None:
        parent = ".".join(parts[:-1])
        raise UsageError(
            f"{path} is not inside an nn.Sequential: its parent {parent or 'the model'} "
            f"({type(get_module(model, parent)).__name__}) has its own forward, so which layers read its "
            "channels is not visible without tracing; channel pruning follows nn.Sequential chains only "
            "(for transformer MLPs use prune_mlp_neurons)")
    return outer, _leaves(get_module(model, outer), outer)


def _plan_one(
    model: nn.Module, path: str, indices: Iterable[int]
) -> tuple[nn.Module, tuple[int, ...], int, list[tuple[str, str, nn.Module, list[int]]], str]:
    """What removing `indices` from `path` would change, without changing anything:
    (producer, removed, size, plan, consumer). Raises UsageError naming what cannot be followed."""
    producer = get_module(model, path)
    if not (_is_conv(producer) or isinstance(producer, nn.Linear)):
        raise UsageError(
            f"{path} is a {type(producer).__name__}; prune_channels takes a Conv1d/2d/3d or Linear producer")
    if _is_conv(producer) and producer.groups != 1:
        raise UsageError(
            f"{path} is a grouped/depthwise convolution (groups={producer.groups}): its output channels are "
            "tied to its input channels; prune the layer that produces its input instead")
    size = out_size(producer)
    removed = check_indices(indices, size, "channel", path)
    if len(removed) == size:
        raise UsageError(f"cannot remove all {size} output channels of {path}")
    outer, leaves = _chain_of(model, path)
    position = next(i for i, (p, _) in enumerate(leaves) if p == path)

    keep = kept(size, removed)
    channels = size  # channel count flowing along the chain before removal
    flattened = False
    plan: list[tuple[str, str, nn.Module, list[int]]] = []  # (action, path, module, keep)
    consumer: str | None = None
    for leaf_path, leaf in leaves[position + 1:]:
        if isinstance(leaf, nn.modules.batchnorm._NormBase):  # BatchNorm, InstanceNorm: per channel
            if flattened or leaf.num_features != channels:
                raise UsageError(f"{leaf_path} ({leaf}) does not normalise the {channels} channels of {path}")
            plan.append(("norm", leaf_path, leaf, keep))
        elif isinstance(leaf, PER_CHANNEL):
            continue
        elif isinstance(leaf, nn.PReLU):
            if leaf.num_parameters not in (1, channels) or (flattened and leaf.num_parameters != 1):
                raise UsageError(f"{leaf_path} ({leaf}) does not act per channel of {path}")
            if leaf.num_parameters == channels:
                plan.append(("prelu", leaf_path, leaf, keep))
        elif isinstance(leaf, nn.Flatten):
            if leaf.start_dim != 1 or leaf.end_dim != -1:
                raise UsageError(f"{leaf_path} flattens from dim {leaf.start_dim} to {leaf.end_dim}; only "
                                 "nn.Flatten(start_dim=1, end_dim=-1) is followed")
            flattened = True
        elif _is_conv(leaf) and not flattened:
            if leaf.in_channels != channels:
                raise UsageError(f"{leaf_path} takes {leaf.in_channels} channels, not the {channels} of {path}")
            if leaf.groups == 1:
                plan.append(("inputs", leaf_path, leaf, keep))
                consumer = leaf_path
                break
            if leaf.groups == leaf.in_channels:  # depthwise: its channels follow the producer's
                plan.append(("depthwise", leaf_path, leaf, keep))
                k = leaf.out_channels // leaf.groups
                keep = [g * k + j for g in keep for j in range(k)]
                channels = leaf.out_channels
                continue
            raise UsageError(
                f"{leaf_path} is a grouped convolution (groups={leaf.groups}, in_channels={leaf.in_channels}) "
                f"reading the channels of {path}: removing channels would unbalance its groups; not supported")
        elif isinstance(leaf, nn.Linear):
            if flattened and not _is_conv(producer) and leaf.in_features != channels:
                raise UsageError(f"{leaf_path}: the features of the Linear {path} were flattened with other "
                                 "dimensions; their order is not channel-major, so columns cannot be matched")
            if flattened:
                if leaf.in_features % channels:
                    raise UsageError(f"{leaf_path} takes {leaf.in_features} features, not a multiple of the "
                                     f"{channels} channels of {path} after flattening")
                spatial = leaf.in_features // channels
                columns = [c * spatial + s for c in keep for s in range(spatial)]
            else:
                if _is_conv(producer) or leaf.in_features != channels:
                    raise UsageError(f"{leaf_path} (Linear) acts on the last dimension, which is not the "
                                     f"channels of {path}")
                columns = keep
            plan.append(("inputs", leaf_path, leaf, columns))
            consumer = leaf_path
            break
        else:
            raise UsageError(
                f"{leaf_path} ({type(leaf).__name__}) reads the channels of {path} in a way channel pruning "
                "does not follow (supported between producer and consumer: BatchNorm, per-channel activations, "
                "dropout, pooling, Flatten, depthwise convolutions)")
    if consumer is None:
        raise UsageError(
            f"the channels of {path} reach the end of the nn.Sequential {outer or 'model'}: they are its output, "
            "and pruning them would change what its caller receives")
    return producer, removed, size, plan, consumer


def channel_producers(model: nn.Module) -> list[tuple[str, int]]:
    """(path, output channels) of every conv / Linear whose channels this surgery can remove."""
    out = []
    for path, module in model.named_modules():
        if not path or not (_is_conv(module) or isinstance(module, nn.Linear)):
            continue
        if out_size(module) < 2:
            continue
        try:
            _plan_one(model, path, [0])
        except UsageError:
            continue
        out.append((path, out_size(module)))
    return out


def _prune_one(
    model: nn.Module, path: str, indices: Iterable[int]
) -> tuple[tuple[int, ...], int, int, dict[str, Any]]:
    producer, removed, size, plan, consumer = _plan_one(model, path, indices)
    shrink_outputs(producer, kept(size, removed))
    for action, _, module, keep_here in plan:
        if action == "norm":
            shrink_batchnorm(module, keep_here)  # type: ignore[arg-type]
        elif action == "prelu":
            module.weight = nn.Parameter(module.weight.detach()[keep_here].clone(),
                                         requires_grad=module.weight.requires_grad)
            module.num_parameters = len(keep_here)
        elif action == "depthwise":
            shrink_depthwise(module, keep_here)  # type: ignore[arg-type]
        else:
            shrink_inputs(module, keep_here)
    detail = {"consumer": consumer, "touched": [p for _, p, _, _ in plan], "consumer_in": in_size(
        get_module(model, consumer))}
    return removed, size, size - len(removed), detail


def prune_channels(
    model: nn.Module, channels: Mapping[str, Iterable[int]], *, inplace: bool = False
) -> tuple[nn.Module, PruneRecord]:
    """Remove output channels: `channels` maps a producer path (a Conv1d/2d/3d with groups=1, or a
    Linear, inside an nn.Sequential) to the channel indices to remove there.

    The producer's output channels, the BatchNorm statistics, depthwise convolutions and the
    consumer's input channels shrink together (see the module docstring for what a chain may hold).
    Producers are handled one after another; indices are those of the model as given. Works on a
    deep copy unless `inplace`. Raises UsageError naming the module it cannot follow.
    """
    if not isinstance(channels, Mapping) or not channels:
        raise UsageError("channels must be a non-empty mapping {producer_path: [channel indices]}")
    model = working_copy(model, inplace)
    params_before = count_parameters(model)
    paths, removed_all, before, after, details = [], [], [], [], {}
    for path, indices in channels.items():
        removed, size, new_size, detail = _prune_one(model, path, indices)
        paths.append(path)
        removed_all.append(removed)
        before.append(size)
        after.append(new_size)
        details[path] = detail
    op = PruneOp(
        kind="prune_channels",
        paths=tuple(paths),
        indices=tuple(removed_all),
        sizes_before=tuple(before),
        sizes_after=tuple(after),
        params_before=params_before,
        params_after=count_parameters(model),
        detail=details,
    )
    logger.info("pruned channels: %s", {p: f"{b} -> {a}" for p, b, a in zip(paths, before, after)})
    return model, PruneRecord((op,), type(model).__name__)
