"""NEPENTHE's linearisation: replace an MLP's activation by the identity and fold its two linear
maps into one.

With the activation gone, `W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)`: one d_in -> d_out
`nn.Linear` with `W = W2 W1`, `b = W2 b1 + b2`, computed in float64 and cast back. A d -> h -> d
MLP costs 2 d h multiply-accumulates per token before and d^2 after (h = 4d: 8x fewer).

The fold is exact when the activation really is the identity on the data: NEPENTHE folds layers
whose rectifiers are always ON (every pre-activation > 0), where ReLU(z) = z. Elsewhere it changes
the function, which is the point of the method's entropy criterion: pick layers where it does not
much.

The producer layer is replaced by the folded `nn.Linear`, the activation and the consumer by
`nn.Identity`, so module paths stay valid (GPT-2's `mlp.c_fc` becomes an `nn.Linear`, `mlp.act`
and `mlp.c_proj` identities; BERT's `intermediate.dense` the folded map, `output.dense` an identity
before the residual and LayerNorm that stay). Dropout between the two maps stays (it is the
identity in eval mode).

Gated MLPs (Llama / Qwen2 / Mistral: `down(act(gate x) * up x)`) are refused: with the activation
replaced by the identity they compute `down((gate x) * (up x))`, a product of two linear maps (a
quadratic form), which no single linear map equals. So are inverted-residual (MBConv) conv blocks
(`MLPSpec.foldable` is False): BatchNorm, a depthwise convolution and a second activation sit
between their expansion and projection, so removing one activation leaves no single linear map.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery.neurons import require_mlp
from energyprune.pruning.surgery.record import PruneOp, PruneRecord
from energyprune.pruning.surgery.slicing import (
    count_parameters,
    get_module,
    linear_weight_bias,
    set_module,
    working_copy,
)

logger = logging.getLogger(__name__)


def fold_activation(model: nn.Module, mlp_path: str, *, inplace: bool = False) -> tuple[nn.Module, PruneRecord]:
    """Replace the activation of the MLP at `mlp_path` by the identity and fold its two linear maps
    into one `nn.Linear` (see the module docstring). Works on a deep copy unless `inplace`."""
    model = working_copy(model, inplace)
    params_before = count_parameters(model)
    spec = require_mlp(model, mlp_path)
    where = mlp_path or "the model"
    if not spec.foldable:
        raise UsageError(f"{where} is {spec.fold_refusal}")
    container = get_module(model, mlp_path)
    for name in spec.activation:
        parent_name, _, leaf = name.rpartition(".")
        if not hasattr(get_module(container, parent_name), leaf):
            raise UsageError(f"{where}: no activation at {name!r} to replace by the identity")
    producer = get_module(model, spec.full(spec.producers[0]))
    consumer = get_module(model, spec.full(spec.consumer))
    w1, b1 = linear_weight_bias(producer)
    w2, b2 = linear_weight_bias(consumer)
    dtype, device = w1.dtype, w1.device
    with torch.no_grad():
        w = w2.double() @ w1.double()
        b = None
        if b1 is not None or b2 is not None:
            b = torch.zeros(w.shape[0], dtype=torch.float64, device=device)
            if b1 is not None:
                b += w2.double() @ b1.double()
            if b2 is not None:
                b += b2.double()
        folded = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=device, dtype=dtype)
        folded.weight.copy_(w.to(dtype))
        if b is not None:
            folded.bias.copy_(b.to(dtype))
    folded.weight.requires_grad_(w1.requires_grad)
    if folded.bias is not None:
        folded.bias.requires_grad_(w1.requires_grad)

    set_module(model, spec.full(spec.producers[0]), folded)
    for name in spec.activation:
        parent_name, _, leaf = name.rpartition(".")
        parent = get_module(container, parent_name)
        if isinstance(parent, nn.Sequential) and leaf.isdigit():
            parent[int(leaf)] = nn.Identity()
        else:  # a module, or a plain function (BERT with a callable hidden_act): Identity works as both
            setattr(parent, leaf, nn.Identity())
    set_module(model, spec.full(spec.consumer), nn.Identity())
    if hasattr(container, "activation_relu_or_gelu"):
        # nn.TransformerEncoderLayer's fused fast path applies ReLU/GELU by this flag and reads
        # linear2.weight itself, ignoring the modules just replaced: 0 sends it down the unfused
        # path, which calls linear1 -> activation -> linear2 (now folded -> identity -> identity).
        container.activation_relu_or_gelu = 0
        # nn.TransformerEncoder decides on its own nested-tensor fast path from its layers' weights
        # (it reads layers[0].linear2.weight): off for an encoder holding the folded layer.
        for module in model.modules():
            if isinstance(module, nn.TransformerEncoder) and any(layer is container for layer in module.layers):
                module.use_nested_tensor = False

    op = PruneOp(
        kind="fold_activation",
        paths=(mlp_path,),
        indices=((),),
        sizes_before=(spec.hidden_size,),
        sizes_after=(0,),
        params_before=params_before,
        params_after=count_parameters(model),
        detail={
            "producer": spec.full(spec.producers[0]),
            "consumer": spec.full(spec.consumer),
            "activation": [spec.full(a) for a in spec.activation],
            "folded_shape": [int(w.shape[0]), int(w.shape[1])],
        },
    )
    logger.info("folded %s: %d hidden neurons -> one %dx%d linear map", where, spec.hidden_size,
                int(w.shape[0]), int(w.shape[1]))
    return model, PruneRecord((op,), type(model).__name__)
