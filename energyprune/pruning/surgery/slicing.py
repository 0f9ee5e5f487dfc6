"""Low-level helpers of the surgery modules: module paths, index checks, and shrinking one layer.

Layers are shrunk in place (their parameters are replaced by smaller copies, their size
attributes updated), so a layer keeps its class, its hooks and its place in the model. The
public surgery functions work on a deep copy unless asked to work in place, so these helpers
never touch a user's model by themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError


# ---------------------------------------------------------------------------------------- paths
def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at `path` ("" is the model itself), or a UsageError naming the path."""
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise UsageError(f"the model has no submodule {path!r}") from None


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at `path` (which must not be "") by `module`."""
    if path == "":
        raise UsageError("cannot replace the model itself")
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path)
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
        parent[int(name)] = module
    else:
        setattr(parent, name, module)


def join(*parts: str) -> str:
    """Join path components, skipping empty ones ("" is the root)."""
    return ".".join(p for p in parts if p)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, tied parameters counted once."""
    return sum(p.numel() for p in model.parameters())


def working_copy(model: nn.Module, inplace: bool) -> nn.Module:
    """The model itself when `inplace`, else a deep copy (the user's model stays untouched)."""
    return model if inplace else copy.deepcopy(model)


# -------------------------------------------------------------------------------------- indices
def check_indices(indices: Iterable[Any], size: int, what: str, where: str) -> tuple[int, ...]:
    """Sorted unique indices, each an int in [0, size); a UsageError otherwise."""
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        raise UsageError(f"{what} indices for {where} must be a sequence of ints, got {indices!r}")
    out: set[int] = set()
    for raw in indices:
        if isinstance(raw, torch.Tensor) and raw.numel() == 1:
            raw = raw.item()
        if isinstance(raw, bool) or not isinstance(raw, int) and not hasattr(raw, "__index__"):
            raise UsageError(f"{what} index {raw!r} for {where} is not an integer")
        index = int(raw)
        if not 0 <= index < size:
            raise UsageError(f"{what} index {index} for {where} is out of range: it has {size} {what}s")
        out.add(index)
    return tuple(sorted(out))


def kept(size: int, removed: Sequence[int]) -> list[int]:
    """The indices in range(size) that are not in `removed`."""
    gone = set(removed)
    return [i for i in range(size) if i not in gone]


# ------------------------------------------------------------------------------- layer shrinking
def _param_like(old: nn.Parameter, data: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(data.detach().clone().contiguous(), requires_grad=old.requires_grad)


def _select(t: torch.Tensor, dim: int, keep: Sequence[int]) -> torch.Tensor:
    return t.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=t.device))


def is_conv1d_hf(module: nn.Module) -> bool:
    """True for transformers' `Conv1D` (GPT-2's linear layer with a transposed (in, out) weight)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d_hf(module)


def out_size(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_conv1d_hf(module):
        return int(module.nf)
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    raise UsageError(f"{type(module).__name__} is not a Linear, Conv1D or convolution")


def in_size(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    if is_conv1d_hf(module):
        return int(module.nx)
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels
    raise UsageError(f"{type(module).__name__} is not a Linear, Conv1D or convolution")


def shrink_outputs(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the output features/channels `keep` of a Linear, HF Conv1D or (groups=1) conv."""
    if isinstance(module, nn.Linear):
        module.weight = _param_like(module.weight, _select(module.weight, 0, keep))
        if module.bias is not None:
            module.bias = _param_like(module.bias, _select(module.bias, 0, keep))
        module.out_features = len(keep)
    elif is_conv1d_hf(module):  # weight is (in, out)
        module.weight = _param_like(module.weight, _select(module.weight, 1, keep))
        if getattr(module, "bias", None) is not None:
            module.bias = _param_like(module.bias, _select(module.bias, 0, keep))
        module.nf = len(keep)
    elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        if module.groups != 1:
            raise UsageError(f"cannot shrink the outputs of a grouped convolution ({module})")
        module.weight = _param_like(module.weight, _select(module.weight, 0, keep))
        if module.bias is not None:
            module.bias = _param_like(module.bias, _select(module.bias, 0, keep))
        module.out_channels = len(keep)
    else:
        raise UsageError(f"cannot shrink the outputs of {type(module).__name__}")


def shrink_inputs(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the input features/channels `keep` of a Linear, HF Conv1D or (groups=1) conv."""
    if isinstance(module, nn.Linear):
        module.weight = _param_like(module.weight, _select(module.weight, 1, keep))
        module.in_features = len(keep)
    elif is_conv1d_hf(module):  # weight is (in, out)
        module.weight = _param_like(module.weight, _select(module.weight, 0, keep))
        module.nx = len(keep)
    elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        if module.groups != 1:
            raise UsageError(f"cannot shrink the inputs of a grouped convolution ({module})")
        module.weight = _param_like(module.weight, _select(module.weight, 1, keep))
        module.in_channels = len(keep)
    else:
        raise UsageError(f"cannot shrink the inputs of {type(module).__name__}")


def shrink_depthwise(conv: nn.modules.conv._ConvNd, keep_groups: Sequence[int]) -> list[int]:
    """Keep the groups `keep_groups` of a depthwise conv (groups == in_channels, out_channels =
    k * in_channels). Returns the output channels kept, in order."""
    k = conv.out_channels // conv.groups
    keep_out = [g * k + j for g in keep_groups for j in range(k)]
    conv.weight = _param_like(conv.weight, _select(conv.weight, 0, keep_out))
    if conv.bias is not None:
        conv.bias = _param_like(conv.bias, _select(conv.bias, 0, keep_out))
    conv.in_channels = len(keep_groups)
    conv.groups = len(keep_groups)
    conv.out_channels = len(keep_out)
    return keep_out


def shrink_batchnorm(bn: nn.modules.batchnorm._NormBase, keep: Sequence[int]) -> None:
    """Keep the features `keep` of a BatchNorm: affine parameters and running statistics."""
    if bn.weight is not None:
        bn.weight = _param_like(bn.weight, _select(bn.weight, 0, keep))
    if bn.bias is not None:
        bn.bias = _param_like(bn.bias, _select(bn.bias, 0, keep))
    if bn.running_mean is not None:
        bn.running_mean = _select(bn.running_mean, 0, keep).clone()
    if bn.running_var is not None:
        bn.running_var = _select(bn.running_var, 0, keep).clone()
    bn.num_features = len(keep)


def shrink_per_channel(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep the channels `keep` of a layer with one entry per channel: a BatchNorm (or another
    `_NormBase`: affine parameters and running statistics), or a depthwise conv with one filter
    per channel (groups == in_channels == out_channels)."""
    if isinstance(module, nn.modules.batchnorm._NormBase):
        shrink_batchnorm(module, keep)
    elif (isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
          and module.groups == module.in_channels == module.out_channels):
        shrink_depthwise(module, keep)
    else:
        raise UsageError(
            f"{type(module).__name__} is not a per-channel layer (a BatchNorm, or a depthwise convolution with "
            "groups == in_channels == out_channels)")


def weight_by_output(module: nn.Module, values: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as (output units, elements): row j holds every weight that makes output j. Linear
    (out, in); HF Conv1D transposed; a conv's (out, in / groups, *kernel) flattened per channel.
    `values`, shaped like the weight (its gradient, weight × gradient), is arranged the same way."""
    weight = module.weight if values is None else values
    if isinstance(module, nn.Linear):
        return weight
    if is_conv1d_hf(module):
        return weight.t()
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return weight.reshape(weight.shape[0], -1)
    raise UsageError(f"{type(module).__name__} is not a Linear, Conv1D or convolution")


def weight_by_input(module: nn.Module, values: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as (input units, elements): row j holds every weight that reads input j. Linear
    columns; HF Conv1D rows; for a conv with groups == 1, (out, in, *kernel) -> (in, out · kernel).
    `values`, shaped like the weight, is arranged the same way."""
    weight = module.weight if values is None else values
    if isinstance(module, nn.Linear):
        return weight.t()
    if is_conv1d_hf(module):
        return weight
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        if module.groups != 1:
            raise UsageError(f"the inputs of a grouped convolution ({module}) do not each own whole filters")
        return weight.transpose(0, 1).reshape(weight.shape[1], -1)
    raise UsageError(f"{type(module).__name__} is not a Linear, Conv1D or convolution")


def linear_weight_bias(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) of a Linear or HF Conv1D in the nn.Linear convention: W is (out, in)."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if is_conv1d_hf(module):
        return module.weight.t(), getattr(module, "bias", None)
    raise UsageError(f"{type(module).__name__} is not a Linear or Conv1D")
