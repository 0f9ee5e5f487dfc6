"""Removing hidden-size channels (embedding channels): one channel of the residual stream, through
every layer that reads or writes it.

Channel c of the hidden size lives in:

| role | layers (found, not named) | what goes |
| --- | --- | --- |
| embeddings | every `nn.Embedding` of width H (token, position, token type) | column c |
| norms | every LayerNorm / RMSNorm of width H (per block, final, BERT's embedding norm) | entry c of weight (and bias) |
| readers | each block's q/k/v (or GPT-2's fused `c_attn`) and MLP producers; `lm_head`, BERT's pooler | input c |
| writers | each block's attention output projection and MLP consumer | output c (and its bias) |

The blocks' attention and MLP layouts are those of `heads` and `neurons`. A tied `lm_head` shares
its weight with the token embedding: it is shrunk once and tied again. Before anything is cut,
every module holding a parameter with an axis of size H must be one of the above; otherwise the
model is refused, naming that module (a channel removed from the residual stream but not from it
would break the forward). Norms that normalise over the hidden axis (RMSNorm, LayerNorm) then
normalise over fewer channels: exact for what remains, as in Minitron.

The config's `hidden_size` is updated only where the config states `head_dim` itself (Llama
family), since GPT-2 and BERT derive the head size from hidden_size / heads; elsewhere the pruned
folder is rebuilt by replaying the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery.discovery import find_block_stack
from energyprune.pruning.surgery.heads import attention_paths, find_attention_heads
from energyprune.pruning.surgery.neurons import find_mlps
from energyprune.pruning.surgery.record import PruneOp, PruneRecord
from energyprune.pruning.surgery.slicing import (
    check_indices,
    count_parameters,
    get_module,
    in_size,
    is_linear_like,
    kept,
    shrink_inputs,
    shrink_outputs,
    working_copy,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HiddenSpec:
    """Every layer that holds the hidden channels of a model (paths from the root)."""

    size: int
    embeddings: tuple[str, ...]
    norms: tuple[str, ...]
    readers: tuple[str, ...]
    writers: tuple[str, ...]
    tied: bool  # lm_head's weight is the token embedding's


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.embedding_dim == value]
            if embeddings:
                return value
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    return embeddings[0].embedding_dim if embeddings else None


def _is_norm(module: nn.Module, size: int) -> bool:
    weight = getattr(module, "weight", None)
    return ("norm" in type(module).__name__.lower() and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (size,))


def find_hidden(model: nn.Module) -> HiddenSpec:
    """The layers of the hidden channels (see the module note), or a UsageError naming the first
    module this surgery cannot follow."""
    size = _hidden_size(model)
    stack = find_block_stack(model)
    if size is None or stack is None:
        raise UsageError(f"{type(model).__name__} has no token embedding and block stack: the hidden size "
                         "(embedding channels) cannot be pruned")
    readers: list[str] = []
    writers: list[str] = []
    attentions = attention_paths(model)
    for path in attentions:
        spec = find_attention_heads(model, path)
        if spec is None:
            raise UsageError(f"{path} ({type(get_module(model, path)).__name__}) is not an attention layout this "
                             "library knows: its hidden channels cannot be followed")
        readers += [spec.full(spec.fused)] if spec.fused else [spec.full(n) for n in (spec.query, spec.key, spec.value)]
        writers.append(spec.full(spec.output))
    mlps = find_mlps(model)
    if len(mlps) != len(stack) or len(attentions) != len(stack):
        raise UsageError(f"not every block of {stack.path} has an attention and an MLP of a known layout: the hidden "
                         "channels cannot be followed through all of them")
    for spec in mlps:
        if spec.feature_axis != -1 or spec.per_channel:
            raise UsageError(f"{spec.path} is a conv block: prune its channels instead of the hidden size")
        readers += [spec.full(n) for n in spec.producers]
        writers.append(spec.full(spec.consumer))
    inside = set(readers) | set(writers)
    embeddings, norms = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.embedding_dim == size:
            embeddings.append(name)
        elif _is_norm(module, size):
            norms.append(name)
        elif name not in inside and is_linear_like(module) and in_size(module) == size \
                and not name.startswith(stack.path + "."):
            readers.append(name)  # lm_head, a pooler: they read the final hidden state
    covered = set(readers) | set(writers) | set(embeddings) | set(norms)
    for name, module in model.named_modules():
        if name in covered:
            continue
        for pname, parameter in module.named_parameters(recurse=False):
            if size in parameter.shape:
                raise UsageError(f"{name or 'the model'} ({type(module).__name__}) holds {pname} of shape "
                                 f"{tuple(parameter.shape)}, sized by the hidden size {size}, and this surgery does not "
                                 "know its role: the hidden size cannot be pruned on this model; unit kinds that may "
                                 "apply: block, attention, head, neuron")
    input_embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    output_embeddings = getattr(model, "get_output_embeddings", lambda: None)()
    tied = (input_embeddings is not None and output_embeddings is not None
            and output_embeddings.weight is input_embeddings.weight)
    return HiddenSpec(size, tuple(embeddings), tuple(norms), tuple(readers), tuple(writers), tied)


def _shrink_norm(module: nn.Module, keep: list[int]) -> None:
    index = torch.as_tensor(keep, dtype=torch.long, device=module.weight.device)
    module.weight = nn.Parameter(module.weight.detach().index_select(0, index).clone(),
                                 requires_grad=module.weight.requires_grad)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        module.bias = nn.Parameter(bias.detach().index_select(0, index).clone(), requires_grad=bias.requires_grad)
    if hasattr(module, "normalized_shape"):
        module.normalized_shape = (len(keep),)


def _shrink_embedding(module: nn.Embedding, keep: list[int]) -> None:
    index = torch.as_tensor(keep, dtype=torch.long, device=module.weight.device)
    module.weight = nn.Parameter(module.weight.detach().index_select(1, index).clone(),
                                 requires_grad=module.weight.requires_grad)
    module.embedding_dim = len(keep)


def output_width_warning(model: nn.Module) -> str | None:
    """One line when the model's output is its hidden state (a Hugging Face base model, such as a
    sentence encoder): removing hidden channels then narrows the output itself, so vectors stored
    from the original stop comparing with the pruned model's. None for a model with a head
    (`lm_head`, a classifier) and for models that are not Hugging Face's, where it cannot be told."""
    if getattr(model, "base_model", None) is not model:
        return None
    return (f"the output of {type(model).__name__} is its hidden state: removing hidden channels narrows it from "
            f"{_hidden_size(model)} dimensions, so embeddings stored from the original no longer compare with the "
            "pruned model's and a head trained on them no longer fits; prune neuron,head to keep the output space")


def prune_hidden(model: nn.Module, channels: Iterable[int], *, inplace: bool = False
                 ) -> tuple[nn.Module, PruneRecord]:
    """Remove hidden channels `channels` everywhere they live (see the module note). Works on a
    deep copy unless `inplace`. A UsageError for a model whose layers this cannot follow, an index
    out of range, or every channel."""
    model = working_copy(model, inplace)
    spec = find_hidden(model)
    removed = check_indices(channels, spec.size, "hidden channel", "the model")
    if len(removed) == spec.size:
        raise UsageError(f"cannot remove all {spec.size} hidden channels")
    params_before = count_parameters(model)
    keep = kept(spec.size, removed)
    if removed:
        head = getattr(model, "get_output_embeddings", lambda: None)() if spec.tied else None
        for name in spec.embeddings:
            _shrink_embedding(get_module(model, name), keep)
        for name in spec.norms:
            _shrink_norm(get_module(model, name), keep)
        for name in spec.readers:
            module = get_module(model, name)
            if spec.tied and module is head:
                continue  # tied again below, to the shrunk token embedding
            shrink_inputs(module, keep)
        for name in spec.writers:
            shrink_outputs(get_module(model, name), keep)
        if spec.tied and head is not None:
            head.weight = model.get_input_embeddings().weight
            if hasattr(head, "in_features"):
                head.in_features = len(keep)
        _sync_config(model, len(keep))
    op = PruneOp(kind="prune_hidden", paths=("",), indices=(removed,), sizes_before=(spec.size,),
                 sizes_after=(len(keep),), params_before=params_before, params_after=count_parameters(model),
                 detail={"tied_lm_head": spec.tied, "config": _config_detail(model, len(keep))})
    logger.info("pruned hidden channels: %d -> %d", spec.size, len(keep))
    return model, PruneRecord((op,), type(model).__name__)


def _config_states_head_dim(config: object) -> bool:
    return isinstance(getattr(config, "head_dim", None), int)


def _sync_config(model: nn.Module, size: int) -> None:
    config = getattr(model, "config", None)
    if config is not None and _config_states_head_dim(config) and hasattr(config, "hidden_size"):
        config.hidden_size = size
    for module in model.modules():  # attributes that mirror the width (LlamaMLP.hidden_size...)
        if module is not model and isinstance(getattr(module, "hidden_size", None), int) \
                and not isinstance(module, nn.Embedding):
            try:
                module.hidden_size = size
            except (AttributeError, TypeError):
                pass


def _config_detail(model: nn.Module, size: int) -> dict[str, int]:
    config = getattr(model, "config", None)
    if config is not None and _config_states_head_dim(config) and getattr(config, "hidden_size", None) == size:
        return {"hidden_size": size}
    return {}


def per_channel_sum(model: nn.Module, spec: HiddenSpec, measure: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
    """Σ over every weight hidden channel c owns of `measure(module)` (a tensor shaped like the
    module's weight: |w|, |w · g|...), as a float64 vector of the hidden size. A tied lm_head is
    the token embedding's weight and counts once; biases are left out, as magnitude does."""
    from energyprune.pruning.surgery.slicing import weight_by_input, weight_by_output

    total = torch.zeros(spec.size, dtype=torch.float64)
    seen: set[int] = set()
    for role, names in (("embedding", spec.embeddings), ("norm", spec.norms), ("reader", spec.readers),
                        ("writer", spec.writers)):
        for name in names:
            module = get_module(model, name)
            if id(module.weight) in seen:
                continue
            seen.add(id(module.weight))
            values = measure(module).double()
            if role == "embedding":
                total += values.sum(dim=0).cpu()
            elif role == "norm":
                total += values.cpu()
            elif role == "reader":
                total += weight_by_input(module, values).sum(dim=1).cpu()
            else:
                total += weight_by_output(module, values).sum(dim=1).cpu()
    return total
