"""Channel pruning of any CNN through its dependency graph, with torch-pruning's DependencyGraph as
the engine (`pip install 'energyprune[cnn]'`).

`surgery.channels` follows `nn.Sequential` chains only: it cannot see a residual `x + f(x)`, a
concatenation or a squeeze-excitation gate, so it refuses them. Torch-Pruning (DepGraph, Fang et al.,
arXiv 2301.12900) traces one forward pass through autograd and groups every parameter slice that
must shrink together: the convolutions whose outputs meet at a residual add, the BatchNorms after
them, depthwise convolutions (their in and out channels are one), the inputs of every consumer, the
columns of a Linear after a flatten. One *group* is one removable width; a unit here is one channel
of a group, named by the group's root layer (the first producer torch-pruning meets).

We checked it on ResNet-18, MobileNetV3-Small and EfficientNet-Lite0 (tests/pruning/test_graph_channels.py:
every pruned model runs, matches the original exactly when the removed channels were already dead,
and reloads by replay) and use it as is, with our own checks where it is unsafe:

* **the model's outputs never shrink**: a group holding the output channels of a layer whose
  output leaves the model (the final classifier) is never offered; torch-pruning would prune it
  unless told to ignore the layer;
* **nn.Parameters it cannot see**: a parameter used outside a module torch-pruning knows (a
  learnable scale `x * self.gamma`, the weights of a custom module) is pruned along a *guessed*
  axis (its last non-singleton dimension); a group that reaches one is refused, naming it;
* **unknown operations**: torch-pruning treats any operation it does not recognise as element-wise;
  a group that passes through an operation outside `PER_CHANNEL_OPS` is refused, naming it;
* **grouped convolutions** (1 < groups, not depthwise): torch-pruning slices their weights as if
  ungrouped, which unbalances the groups; a group that touches one is refused;
* **how the model is called**: torch-pruning traces `model(*inputs)` and falls back to
  `model(inputs)` only where that raises, so a one-sample batch is unpacked into an unbatched
  input that convolutions accept, and the groups come out wrong (seen on a three-conv model); we
  always give it the call the model gets at inference;
* **a dry run**: one channel of every offered group is removed on a copy and the copy is run on the
  traced inputs; where it fails or an output changes shape, each group is tried alone and the
  failing ones are refused.

A removal is recorded (`PruneOp` kind `prune_channel_groups`) with the roots, the indices, and the
shapes and dtypes of the inputs that were traced, so that `apply_record` replays it on a freshly
built model by tracing zeros of those shapes: a pruned folder reloads without running any code.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery.record import PruneOp, PruneRecord
from energyprune.pruning.surgery.slicing import check_indices, count_parameters, get_module, working_copy

logger = logging.getLogger(__name__)

#: The install line every refusal for a missing engine prints.
INSTALL = "pip install 'energyprune[cnn]'  (torch-pruning>=1.6,<1.7)"

#: Autograd operations (their grad_fn names without the "Backward<n>" tail) that act on every
#: channel alike, so a channel removed before them is removed after them. Torch-pruning treats every
#: operation it does not know as element-wise; we only believe it for these.
PER_CHANNEL_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Exp", "Pow", "Sqrt", "Rsqrt", "Abs", "Clamp", "ClampMin", "ClampMax",
    "Relu", "Relu6", "LeakyRelu", "Elu", "Gelu", "Silu", "Mish", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid",
    "Hardtanh", "Softplus", "Threshold", "Prelu",
    "MaxPool2DWithIndices", "MaxPool1DWithIndices", "MaxPool3DWithIndices", "AvgPool1D", "AvgPool2D", "AvgPool3D",
    "AdaptiveAvgPool1D", "AdaptiveAvgPool2D", "AdaptiveAvgPool3D", "AdaptiveMaxPool2D", "Mean",
    "ConstantPadNd", "ReflectionPad1D", "ReflectionPad2D", "ReplicationPad2D", "UpsampleNearest2D",
    "UpsampleBilinear2D", "Clone", "NativeDropout", "Dropout", "T",
})


def uses_graph(model: nn.Module) -> bool:
    """Whether channel units of `model` come from its dependency graph: every model but a plain
    nn.Sequential, whose chains `surgery.channels` follows without tracing (and without
    torch-pruning)."""
    return not (isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward)


def first_batch(calibration: Any, model: nn.Module) -> Any:
    """The batch to trace: the first of the calibration data; a UsageError when there is none."""
    batch = next(iter(calibration), None) if calibration is not None else None
    if batch is None:
        raise UsageError(
            f"channel units of a {type(model).__name__} come from tracing it: give calibration data "
            "(one batch of inputs is enough to trace)")
    return batch


def require_torch_pruning() -> Any:
    """The torch_pruning module; a UsageError with the install line when it is missing."""
    try:
        import torch_pruning
    except ImportError:
        raise UsageError(
            "channel pruning of a model that is not a plain nn.Sequential follows its dependency graph with "
            f"torch-pruning, which is not installed: {INSTALL}") from None
    return torch_pruning


# ---- example inputs: what was traced, as JSON -----------------------------------------------------
def input_spec(batch: Any) -> Any:
    """The shapes and dtypes of one calibration batch, first sample only (tracing needs the layout,
    not the values): a tensor, a tuple/list of them, or a mapping of them, as JSON."""
    if isinstance(batch, torch.Tensor):
        shape = list(batch.shape)
        if shape:
            shape[0] = min(shape[0], 1) or 1
        return {"tensor": shape, "dtype": str(batch.dtype).removeprefix("torch.")}
    if isinstance(batch, (tuple, list)):
        return {"sequence": [input_spec(b) for b in batch]}
    if isinstance(batch, Mapping):
        return {"mapping": {str(k): input_spec(v) for k, v in batch.items()}}
    raise UsageError(f"cannot trace a model with a {type(batch).__name__} as input: give tensors "
                     "(a tensor, a tuple of tensors or a mapping of tensors)")


def inputs_from_spec(spec: Any, device: torch.device | str | None = None) -> Any:
    """Zeros of the recorded shapes and dtypes. Zeros trace the same graph as real data wherever the
    forward has no branch that depends on the values (a replay whose sizes differ from the record's
    is refused by `apply_record`, so a model that does branch fails loudly, not silently)."""
    if not isinstance(spec, Mapping):
        raise UsageError(f"not an input description: {spec!r}")
    if "tensor" in spec:
        dtype = getattr(torch, str(spec.get("dtype", "float32")), None)
        if not isinstance(dtype, torch.dtype):
            raise UsageError(f"unknown dtype in an input description: {spec.get('dtype')!r}")
        return torch.zeros([int(s) for s in spec["tensor"]], dtype=dtype, device=device)
    if "sequence" in spec:
        return tuple(inputs_from_spec(s, device) for s in spec["sequence"])
    if "mapping" in spec:
        return {k: inputs_from_spec(v, device) for k, v in spec["mapping"].items()}
    raise UsageError(f"not an input description: {spec!r}")


def _slice(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:1] if batch.ndim else batch
    if isinstance(batch, (tuple, list)):
        return tuple(_slice(b) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _slice(v) for k, v in batch.items()}
    return batch


def _call(model: nn.Module, example: Any) -> Any:
    if isinstance(example, Mapping):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


def _shapes_after_run(model: nn.Module, example: Any) -> list[tuple[int, ...]]:
    """The shapes of the model's outputs on `example`, run in eval mode without gradients (a run in
    training mode would move BatchNorm's running statistics)."""
    training = model.training
    try:
        with torch.no_grad():
            return _output_shapes(_call(model.eval(), example))
    finally:
        model.train(training)


def _output_shapes(output: Any) -> list[tuple[int, ...]]:
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, Mapping):
        return [s for v in output.values() for s in _output_shapes(v)]
    if isinstance(output, (tuple, list)):
        return [s for v in output for s in _output_shapes(v)]
    logits = getattr(output, "logits", None)
    return _output_shapes(logits) if logits is not None else []


# ---- the graph -------------------------------------------------------------------------------------
class _Graph:
    """A traced model: torch-pruning's DependencyGraph and our names for its parts."""

    def __init__(self, model: nn.Module, example: Any) -> None:
        tp = require_torch_pruning()
        self.tp = tp
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        training = model.training
        try:
            with torch.enable_grad():  # the trace follows autograd
                # forward_fn: torch-pruning calls `model(*example)` first and falls back to
                # `model(example)` only if that raises, so a one-sample batch (1, C, H, W) is
                # unpacked into an unbatched (C, H, W) input, which convolutions accept: the trace
                # then follows unbatched convolutions and wrong groups come out. We call the model
                # the way it is called for inference instead.
                self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=_call,
                                                                verbose=False)
        except UsageError:
            raise
        except Exception as error:  # torch-pruning and the model raise many types: one line for the user
            raise UsageError(f"torch-pruning could not trace {type(model).__name__} on inputs of shape "
                             f"{input_spec(example)}: {type(error).__name__}: {error}") from None
        finally:
            model.train(training)  # the trace sets eval mode; give the caller's mode back

    def out_fn(self, module: nn.Module) -> Any:
        return self.dg.get_pruner_of_module(module).prune_out_channels

    def size(self, module: nn.Module) -> int:
        return int(self.dg.get_out_channels(module))

    def group(self, module: nn.Module, idxs: Sequence[int]) -> Any:
        return self.dg.get_pruning_group(module, self.out_fn(module), list(idxs))

    def name(self, target: Any) -> str:
        module = target.module
        if isinstance(module, nn.Parameter):
            return self.param_names.get(id(module), "an nn.Parameter")
        return self.names.get(module, target.name)

    def roots(self) -> list[nn.Module]:
        """One root layer per group (torch-pruning's choice: the first producer in trace order)."""
        tp = self.tp
        return [g[0].dep.target.module for g in self.dg.get_all_groups(
            root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR))]

    def refusal(self, group: Any) -> str | None:
        """Why a group may not be pruned (our checks on top of torch-pruning's), or None."""
        tp = self.tp
        for item in group:
            node, handler = item.dep.target, item.dep.handler
            module = node.module
            if node.type == tp.ops.OPTYPE.PARAMETER:
                return (f"the nn.Parameter {self.name(node)} reads these channels outside any layer torch-pruning "
                        "knows; it would prune a guessed axis")
            if node.type == tp.ops.OPTYPE.CUSTOMIZED:
                return f"{self.name(node)} is a customised layer"
            if node.type == tp.ops.OPTYPE.ELEMENTWISE:
                op = node.name.rpartition("(")[2].rstrip(")")
                base = op.split("Backward")[0]
                if base not in PER_CHANNEL_OPS:
                    return (f"the operation {op} reads these channels; torch-pruning treats operations it does not "
                            "know as element-wise, which is not checked for this one")
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and \
                    node.type != tp.ops.OPTYPE.DEPTHWISE_CONV:
                return (f"{self.name(node)} is a grouped convolution (groups={module.groups}): removing channels "
                        "would unbalance its groups")
            if self.dg.is_out_channel_pruning_fn(handler) and not node.outputs and isinstance(module, nn.Module):
                return f"{self.name(node)} produces the model's output, which never shrinks"
            if node.type in (tp.ops.OPTYPE.LN, tp.ops.OPTYPE.GN, tp.ops.OPTYPE.LSTM, tp.ops.OPTYPE.MHA,
                             tp.ops.OPTYPE.EMBED, tp.ops.OPTYPE.UNBIND):
                return f"{self.name(node)} ({type(module).__name__}) is outside what this surgery was tested on"
        return None

    def members(self, group: Any) -> list[str]:
        """The layers whose parameters the group changes, as `path:out` / `path:in`."""
        out = []
        for item in group:
            module = item.dep.target.module
            if isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)):
                side = "out" if self.dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
                entry = f"{self.names.get(module, '?')}:{side}"
                if entry not in out:
                    out.append(entry)
        return sorted(out)


@dataclass(frozen=True)
class ChannelGroup:
    """One removable width: the channels of `root` and everything that shrinks with them.
    `refused` says why it is not offered (None: it is)."""

    root: str
    size: int
    members: tuple[str, ...]
    refused: str | None = None


def _dry_run(model: nn.Module, example: Any, roots: Sequence[str], reference: list[tuple[int, ...]]) -> str | None:
    """Remove channel 0 of every root on a copy and run it: None when it runs and every output keeps
    its shape, else what went wrong."""
    trial = copy.deepcopy(model)
    try:
        graph = _Graph(trial, example)
        for root in roots:
            graph.group(get_module(trial, root), [0]).prune(record_history=False)
        shapes = _shapes_after_run(trial, example)
    except UsageError as error:
        return str(error)
    except Exception as error:  # the model's own forward failing is the finding
        return f"the pruned copy fails to run: {type(error).__name__}: {error}"
    if shapes != reference:
        return f"an output changes shape ({reference} -> {shapes})"
    return None


def channel_groups(model: nn.Module, example: Any, *, dry_run: bool = True) -> list[ChannelGroup]:
    """Every group of coupled channels of `model` traced on `example` (a batch; its first sample is
    used), with the reason for each one that is refused."""
    example = _slice(example)
    graph = _Graph(model, example)
    groups = []
    for root in graph.roots():
        size = graph.size(root)
        group = graph.group(root, range(size))
        reason = graph.refusal(group)
        if reason is None and size < 2:
            reason = "it has a single channel"
        groups.append(ChannelGroup(graph.names[root], size, tuple(graph.members(group)), reason))
    offered = [g.root for g in groups if g.refused is None]
    if dry_run and offered:
        reference = _shapes_after_run(model, example)
        if _dry_run(model, example, offered, reference) is not None:  # find the culprits one by one
            failing = {root: why for root in offered if (why := _dry_run(model, example, [root], reference))}
            groups = [ChannelGroup(g.root, g.size, g.members, f"the dry run failed: {failing[g.root]}")
                      if g.root in failing else g for g in groups]
    for g in groups:
        if g.refused:
            logger.info("channels of %s not offered: %s", g.root, g.refused)
    return groups


def group_size(model: nn.Module, root: str) -> int:
    """The channel count of a group: the output channels (features) of its root layer."""
    module = get_module(model, root)
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels)
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    raise UsageError(f"{root} ({type(module).__name__}) is not a convolution or Linear layer: not a group's root")


def group_slices(model: nn.Module, example: Any, roots: Iterable[str]) -> dict[str, list[tuple[nn.Module, str, int, list[int], list[int]]]]:
    """For each root: the weight slices of its group, as (layer, parameter name, axis, indices in
    that layer, the root channel each index belongs to). Convolution and Linear weights only (the
    BatchNorm after them undoes their scale, and biases are not weights of a channel's filter):
    producers along their output axis, consumers along their input axis (a Linear after a flatten
    has several columns per channel, all mapped to it)."""
    graph = _Graph(model, _slice(example))
    tp = graph.tp
    out: dict[str, list[tuple[nn.Module, str, int, list[int], list[int]]]] = {}
    for root_path in roots:
        root = get_module(model, root_path)
        if root not in graph.dg.module2node:
            raise UsageError(f"{root_path} is not a layer of the traced graph")
        slices = []
        for item in graph.group(root, range(graph.size(root))):
            node = item.dep.target
            module = node.module
            if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                continue
            is_out = graph.dg.is_out_channel_pruning_fn(item.dep.handler)
            if node.type == tp.ops.OPTYPE.DEPTHWISE_CONV:
                axis = 0  # a depthwise filter is both the channel's input and its output
            elif isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
                axis = 1 if is_out else 0
            else:
                axis = 0 if is_out else 1
            pairs = [(i, r) for i, r in zip(item.idxs, item.root_idxs or []) if r is not None]
            entry = (module, "weight", axis, [i for i, _ in pairs], [r for _, r in pairs])
            if not any(s[0] is module and s[2] == axis for s in slices):
                slices.append(entry)
        out[root_path] = slices
    return out


# ---- removal -------------------------------------------------------------------------------------
def prune_channel_groups(
    model: nn.Module, channels: Mapping[str, Iterable[int]], example: Any, *, inplace: bool = False,
    check: bool = True,
) -> tuple[nn.Module, PruneRecord]:
    """Remove channels group by group: `channels` maps a group's root layer (a path as
    `channel_groups` names it) to the channel indices to remove there; `example` is a batch to trace
    (its first sample is used; the record keeps only its shapes). Works on a deep copy unless
    `inplace`. With `check` (the default) a group our checks refuse raises a UsageError naming why;
    replaying a record skips the checks it passed when it was made."""
    if not isinstance(channels, Mapping) or not channels:
        raise UsageError("channels must be a non-empty mapping {root_layer_path: [channel indices]}")
    example = _slice(example)
    spec = input_spec(example)
    model = working_copy(model, inplace)
    reference = _shapes_after_run(model, example) if check else []
    graph = _Graph(model, example)
    params_before = count_parameters(model)
    pruned_modules: set[int] = set()
    paths, removed_all, before, after, touched = [], [], [], [], {}
    for path, indices in channels.items():
        root = get_module(model, path)
        if root not in graph.dg.module2node:
            raise UsageError(f"{path} is not a layer the traced graph reaches: it cannot be a group's root")
        size = graph.size(root)
        removed = check_indices(indices, size, "channel", path)
        if len(removed) == size:
            raise UsageError(f"cannot remove all {size} channels of {path}")
        full = graph.group(root, range(size))
        if check and (reason := graph.refusal(full)) is not None:
            raise UsageError(f"the channels of {path} cannot be pruned: {reason}")
        outs = {id(item.dep.target.module) for item in full if graph.dg.is_out_channel_pruning_fn(item.dep.handler)}
        if outs & pruned_modules:
            raise UsageError(f"{path} belongs to a group already pruned in this operation: give each group once, "
                             "by the root `channel_groups` names")
        pruned_modules |= outs
        members = graph.members(full)
        graph.group(root, removed).prune(record_history=False)
        paths.append(path)
        removed_all.append(removed)
        before.append(size)
        after.append(size - len(removed))
        touched[path] = members
    if check:
        try:
            shapes = _shapes_after_run(model, example)
        except Exception as error:  # the model's own forward failing is the finding
            raise UsageError(f"the pruned model fails to run ({type(error).__name__}: {error})") from None
        if shapes != reference:
            raise UsageError(f"pruning changed the shape of the model's output ({reference} -> {shapes})")
    tp = require_torch_pruning()
    op = PruneOp(
        kind="prune_channel_groups",
        paths=tuple(paths),
        indices=tuple(removed_all),
        sizes_before=tuple(before),
        sizes_after=tuple(after),
        params_before=params_before,
        params_after=count_parameters(model),
        detail={"engine": f"torch-pruning {getattr(tp, '__version__', '?')}", "inputs": spec, "touched": touched},
    )
    logger.info("pruned channel groups: %s", {p: f"{b} -> {a}" for p, b, a in zip(paths, before, after)})
    return model, PruneRecord((op,), type(model).__name__)


def replay_channel_groups(model: nn.Module, op: PruneOp) -> tuple[nn.Module, PruneRecord]:
    """Replay a recorded `prune_channel_groups` on `model` in place, tracing zeros of the recorded
    input shapes."""
    spec = op.detail.get("inputs")
    if spec is None:
        raise UsageError("the record of a channel-group removal lacks the shapes of its traced inputs")
    device = next((p.device for p in model.parameters()), None)
    example = inputs_from_spec(spec, device)
    return prune_channel_groups(model, dict(zip(op.paths, op.indices)), example, inplace=True, check=False)
