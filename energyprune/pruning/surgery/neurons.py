"""Removing hidden neurons of MLPs: the weight tensors really shrink, so the matmuls do too.

An MLP is found by the names of its layers inside the module at `mlp_path`:

| family | mlp_path | producers (rows removed) | consumer (columns removed) |
| --- | --- | --- | --- |
| Llama / Qwen2 / Mistral | `model.layers.i.mlp` | `gate_proj`, `up_proj` | `down_proj` |
| GPT-2 (HF `Conv1D`, weight (in, out)) | `transformer.h.i.mlp` | `c_fc` | `c_proj` |
| BERT / RoBERTa / ViT | `encoder.layer.i` | `intermediate.dense` | `output.dense` |
| OPT / CLIP | `model.decoder.layers.i` | `fc1` | `fc2` |
| GPT-NeoX | `gpt_neox.layers.i.mlp` | `dense_h_to_4h` | `dense_4h_to_h` |
| GPT-J | `transformer.h.i.mlp` | `fc_in` | `fc_out` |
| PyTorch `nn.TransformerEncoderLayer` / `DecoderLayer` | `layers.i` | `linear1` | `linear2` |
| plain `nn.Sequential(Linear, act, [Dropout,] Linear)` | its path | first Linear | last Linear |
| EfficientNet / efficientnet-pytorch MBConv | `_blocks.i` | `_expand_conv` (+ `_se_expand`) | `_project_conv` |

A neuron is one hidden unit: one row of each producer (and its bias), one column of the consumer.
The consumer's input is the vector of neuron activations, so a forward pre-hook on the consumer
sees exactly what a neuron criterion scores. Where the units lie in that tensor is the spec's
`feature_axis`: the last axis for the MLPs of transformers (tokens, features), axis 1 for conv
maps (N, C, H, W), whose rows are then the N·H·W positions.

Inverted-residual (MBConv) blocks with an expansion (`expand_ratio != 1`; EfficientNet-Lite's
first block has none and is skipped) are MLPs whose neurons are the expansion channels:

    x -> _expand_conv -> _bn0 -> act -> _depthwise_conv -> _bn1 -> act [-> SE gate] -> _project_conv

Hidden channel c flows only through that chain, so removing it removes output channel c of
`_expand_conv`, entry c of `_bn0` and `_bn1` and channel c of the depthwise conv (the spec's
`per_channel` layers), input channel c of `_project_conv` (the consumer) and, with squeeze-and-
excitation, input channel c of `_se_reduce` (a `reader`) and output channel c of `_se_expand`
(a producer: its output gates the channel, so an SE block is `gated`). The layout is recognised
by those attribute names, with channel counts checked: the depthwise conv has groups == in ==
out == hidden, producer and consumer groups == 1 (any kernel size). Such a block is not foldable
(`fold_activation` refuses it): BatchNorm, a depthwise conv and a second activation sit between
expansion and projection. The NEPENTHE pre-activation is `_bn0`'s output (it feeds the first
activation). `_block_args` (expand_ratio, filters) are left as they were: forward reads only
`expand_ratio != 1` and the skip condition, which pruning does not change.

The config's intermediate size (`intermediate_size`, `ffn_dim` or `n_inner`) is updated only when
every MLP of the block stack still has the same width; otherwise it is left as it was and the
per-layer widths are in the record (`detail["layer_sizes"]`): rebuild such a model with
`apply_record`, since `from_pretrained` would build equal widths from the config.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery.discovery import find_block_stack
from energyprune.pruning.surgery.record import PruneOp, PruneRecord
from energyprune.pruning.surgery.slicing import (
    check_indices,
    count_parameters,
    get_module,
    in_size,
    is_linear_like,
    join,
    kept,
    out_size,
    shrink_inputs,
    shrink_outputs,
    shrink_per_channel,
    working_copy,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MLPSpec:
    """Where the parts of one MLP are. Names are relative to `path` ("" means the module itself).

    Removing neuron j shrinks output j of every producer, entry j of every per-channel layer, and
    input j of the consumer and of every reader; nothing else sees the hidden units.
    """

    path: str
    producers: tuple[str, ...]  # layers whose outputs are the hidden neurons (or gate them)
    consumer: str  # the layer that reads the hidden neurons
    activation: tuple[str, ...]  # the nonlinearity between them (several for a Sequential)
    gated: bool  # down(act(gate(x)) * up(x)), or an SE gate: a product, not one linear map
    hidden_size: int
    # Axis of the hidden units in the activation tensors: -1 (tokens, features) for transformer
    # MLPs, 1 for conv maps (N, C, H, W).
    feature_axis: int = -1
    # Layers between producers and consumer that hold one entry per hidden unit (BatchNorm, a
    # depthwise conv), in forward order; they shrink with the hidden units.
    per_channel: tuple[str, ...] = ()
    # Layers besides the consumer whose input channels are the hidden units (SE's _se_reduce).
    readers: tuple[str, ...] = ()
    # The layer whose output is the pre-activation of the nonlinearity (None: producers[0]).
    preactivation: str | None = None

    def full(self, name: str) -> str:
        return join(self.path, name)

    @property
    def preactivation_layer(self) -> str:
        """The layer (relative to `path`) whose output the nonlinearity reads: what NEPENTHE counts."""
        return self.preactivation if self.preactivation is not None else self.producers[0]

    @property
    def fold_refusal(self) -> str | None:
        """Why `fold_activation` cannot fold this MLP into one linear map, or None when it can.

        Derived from the layout rather than stored, so it cannot disagree with it."""
        if self.per_channel or self.readers or self.feature_axis != -1:
            return ("an inverted-residual (MBConv) conv block: between expansion and projection its hidden "
                    "channels pass BatchNorm, a depthwise convolution and a second activation (and an SE gate "
                    "where it has one), so with one activation replaced by the identity there is still no single "
                    "linear map to fold into; prune its neurons instead")
        if self.gated:
            return ("a gated MLP (down(act(gate x) * up x)): with the activation replaced by the identity it is "
                    "still the product of two linear maps, not one linear map, so it cannot be folded exactly; "
                    "prune its neurons instead")
        return None

    @property
    def foldable(self) -> bool:
        """True when `fold_activation` folds it: Linear -> act -> Linear, not gated, no layer between."""
        return self.fold_refusal is None


#: (producers, consumer, activation attribute, gated), tried in this order.
MLP_PATTERNS: tuple[tuple[tuple[str, ...], str, str, bool], ...] = (
    (("gate_proj", "up_proj"), "down_proj", "act_fn", True),
    (("w1", "w3"), "w2", "act_fn", True),
    (("c_fc",), "c_proj", "act", False),
    (("intermediate.dense",), "output.dense", "intermediate.intermediate_act_fn", False),
    (("fc1",), "fc2", "activation_fn", False),
    (("dense_h_to_4h",), "dense_4h_to_h", "act", False),
    (("fc_in",), "fc_out", "act", False),
    (("up_proj",), "down_proj", "act_fn", False),
    (("linear1",), "linear2", "activation", False),  # torch's nn.TransformerEncoderLayer / DecoderLayer
)

#: Attribute names under which a config holds the MLP width.
INTERMEDIATE_SIZE_KEYS = ("intermediate_size", "ffn_dim", "n_inner")

_NAMES_OF_MLP_CHILD = ("mlp", "feed_forward", "ffn")


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _lookup(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


#: Attribute names of an efficientnet-pytorch MBConvBlock, in forward order.
MBCONV_LAYERS = ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_project_conv")
MBCONV_SE = ("_se_reduce", "_se_expand")


def _is_conv(module: object) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def _find_inverted_residual(module: nn.Module, path: str) -> MLPSpec | None:
    """The expansion channels of an MBConv block as an MLP (see the module note), or None when
    `module` does not have that layout with agreeing channel counts."""
    expand, bn0, depthwise, bn1, project = (getattr(module, name, None) for name in MBCONV_LAYERS)
    if not (_is_conv(expand) and _is_conv(depthwise) and _is_conv(project)):
        return None
    if not all(isinstance(bn, nn.modules.batchnorm._BatchNorm) for bn in (bn0, bn1)):
        return None
    hidden = expand.out_channels
    if expand.groups != 1 or project.groups != 1 or project.in_channels != hidden:
        return None
    if bn0.num_features != hidden or bn1.num_features != hidden:
        return None
    # One filter per channel, no channel multiplier: channel c of the depthwise output is channel c.
    if not depthwise.groups == depthwise.in_channels == depthwise.out_channels == hidden:
        return None
    se_reduce, se_expand = (getattr(module, name, None) for name in MBCONV_SE)
    producers: tuple[str, ...] = ("_expand_conv",)
    readers: tuple[str, ...] = ()
    if se_reduce is not None or se_expand is not None:
        # Present SE layers are shrunk even when `has_se` is False: unused layers do not mind, and
        # a used pair left at the old width would break the forward.
        if not (_is_conv(se_reduce) and _is_conv(se_expand)):
            return None
        if (se_reduce.groups != 1 or se_expand.groups != 1 or se_reduce.in_channels != hidden
                or se_expand.out_channels != hidden or se_expand.in_channels != se_reduce.out_channels):
            return None
        producers += ("_se_expand",)
        readers = ("_se_reduce",)
    activation = ("_swish",) if hasattr(module, "_swish") else ()
    return MLPSpec(
        path, producers, "_project_conv", activation, gated=bool(readers), hidden_size=hidden,
        feature_axis=1, per_channel=("_bn0", "_depthwise_conv", "_bn1"), readers=readers,
        preactivation="_bn0")


def find_mlp(model: nn.Module, path: str) -> MLPSpec | None:
    """The MLP whose container is at `path`, or None where none of `MLP_PATTERNS`, a plain
    Sequential of two linear layers, nor an MBConv block with an expansion matches."""
    module = get_module(model, path)
    if _plain_sequential(module):
        children = list(module.named_children())
        linear = [i for i, (_, m) in enumerate(children) if is_linear_like(m)]
        with_params = [i for i, (_, m) in enumerate(children) if any(True for _ in m.parameters())]
        if len(linear) == 2 and with_params == linear:
            first, last = linear
            between = tuple(children[i][0] for i in range(first + 1, last)
                            if not isinstance(children[i][1], nn.modules.dropout._DropoutNd))
            hidden = out_size(children[first][1])
            if in_size(children[last][1]) == hidden:
                return MLPSpec(path, (children[first][0],), children[last][0], between, False, hidden)
        return None
    for producers, consumer, activation, gated in MLP_PATTERNS:
        layers = [_lookup(module, name) for name in (*producers, consumer)]
        if not all(layer is not None and is_linear_like(layer) for layer in layers):
            continue
        hidden = out_size(layers[0])  # type: ignore[arg-type]
        if any(out_size(p) != hidden for p in layers[:-1]) or in_size(layers[-1]) != hidden:  # type: ignore[arg-type]
            continue
        return MLPSpec(path, producers, consumer, (activation,), gated, hidden)
    return _find_inverted_residual(module, path)


def require_mlp(model: nn.Module, path: str) -> MLPSpec:
    spec = find_mlp(model, path)
    if spec is None:
        module = get_module(model, path)
        known = "; ".join(f"{'/'.join(p)} -> {c}" for p, c, _, _ in MLP_PATTERNS)
        raise UsageError(
            f"{path or 'the model'} ({type(module).__name__}) is not an MLP this library recognises: "
            f"expected layers named {known}, an nn.Sequential of exactly two Linear layers, or an MBConv block "
            f"with an expansion ({', '.join(MBCONV_LAYERS)})")
    return spec


def find_mlps(model: nn.Module) -> list[MLPSpec]:
    """One MLP per block of the block stack, in block order (the block itself, or its child named
    mlp / feed_forward / ffn); empty when there is no stack or no block has a recognised MLP."""
    stack = find_block_stack(model)
    if stack is None:
        return []
    out = []
    for i in range(len(stack)):
        block_path = stack.block_path(i)
        spec = find_mlp(model, block_path)
        if spec is None:
            for name in _NAMES_OF_MLP_CHILD:
                if _lookup(model, join(block_path, name)) is not None:
                    spec = find_mlp(model, join(block_path, name))
                    if spec is not None:
                        break
        if spec is not None:
            out.append(spec)
    return out


def _sync_config(model: nn.Module, old_size: dict[str, int]) -> dict[str, object]:
    """Set the config's MLP width where all stack MLPs agree; report the per-layer widths."""
    specs = find_mlps(model)
    sizes = {s.path: s.hidden_size for s in specs}
    detail: dict[str, object] = {"layer_sizes": sizes}
    config = getattr(model, "config", None)
    if config is None or not sizes:
        return detail
    widths = set(sizes.values())
    if len(widths) != 1:
        detail["config"] = {}
        logger.info("MLP widths now differ between layers (%s): config left as it is", sorted(widths))
        return detail
    width = widths.pop()
    changed = {}
    for key in INTERMEDIATE_SIZE_KEYS:
        if key in vars(config) and (getattr(config, key) is not None or key == "n_inner"):
            if getattr(config, key) != width:
                setattr(config, key, width)
                changed[key] = width
    detail["config"] = changed
    # Module attributes that mirror the width (LlamaMLP.intermediate_size); kept truthful.
    for spec in specs:
        module = get_module(model, spec.path)
        if getattr(module, "intermediate_size", None) == old_size.get(spec.path):
            module.intermediate_size = spec.hidden_size
    return detail


def prune_mlp_neurons(
    model: nn.Module, neurons: Mapping[str, Iterable[int]], *, inplace: bool = False
) -> tuple[nn.Module, PruneRecord]:
    """Remove hidden neurons: `neurons` maps an MLP path to the neuron indices to remove there.

    Producers lose those output rows (weights and biases), per-channel layers (BatchNorm, depthwise
    conv) those entries, the consumer and any readers those input columns / channels.
    Works on a deep copy unless `inplace`. Raises UsageError for a path that is not a recognised
    MLP, an index out of range, or removing every neuron of an MLP (remove the block or fold it).
    """
    if not isinstance(neurons, Mapping) or not neurons:
        raise UsageError("neurons must be a non-empty mapping {mlp_path: [neuron indices]}")
    model = working_copy(model, inplace)
    params_before = count_parameters(model)
    paths, removed_all, before, after = [], [], [], []
    old_size: dict[str, int] = {}
    for path, indices in neurons.items():
        spec = require_mlp(model, path)
        removed = check_indices(indices, spec.hidden_size, "neuron", path or "the model")
        if len(removed) == spec.hidden_size:
            raise UsageError(
                f"cannot remove all {spec.hidden_size} neurons of {path or 'the model'}: remove the block, "
                "or fold the MLP with fold_activation")
        keep = kept(spec.hidden_size, removed)
        if removed:
            for name in spec.producers:
                shrink_outputs(get_module(model, spec.full(name)), keep)
            for name in spec.per_channel:
                shrink_per_channel(get_module(model, spec.full(name)), keep)
            for name in (*spec.readers, spec.consumer):
                shrink_inputs(get_module(model, spec.full(name)), keep)
        old_size[path] = spec.hidden_size
        paths.append(path)
        removed_all.append(removed)
        before.append(spec.hidden_size)
        after.append(len(keep))
    detail = _sync_config(model, old_size)
    op = PruneOp(
        kind="prune_mlp_neurons",
        paths=tuple(paths),
        indices=tuple(removed_all),
        sizes_before=tuple(before),
        sizes_after=tuple(after),
        params_before=params_before,
        params_after=count_parameters(model),
        detail=detail,
    )
    logger.info("pruned MLP neurons: %s", {p: f"{b} -> {a}" for p, b, a in zip(paths, before, after)})
    return model, PruneRecord((op,), type(model).__name__)


def remove_dead_neurons(
    model: nn.Module, dead: Mapping[str, Iterable[int]], *, inplace: bool = False
) -> tuple[nn.Module, PruneRecord]:
    """NEPENTHE's second step: remove units that are always OFF (their rectifier output is 0 on
    all calibration data). Identical to `prune_mlp_neurons`; the name says why."""
    return prune_mlp_neurons(model, dead, inplace=inplace)
