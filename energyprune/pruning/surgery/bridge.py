"""Block removal with a linear bridge: what the removed blocks did, approximated by one least-squares
linear map and folded into weights that stay (ReplaceMe, Shopkhoev et al. 2025, arXiv 2505.02819).

Removing a run of blocks i..j of a pre-norm residual stack hands block j+1 the hidden state after
block i-1 instead of after block j. Block i-1 ends with `out = h + m`, the residual `h` plus its MLP's
output `m`. On calibration tokens we fit the map T that best turns `m` into what blocks i..j would
have added:

    T = argmin ||(y_j - h) - m T||^2 + alpha * n * s * ||T - I||^2

(y_j is block j's output, n the number of tokens, s the mean of m^2: the ridge pulls T toward the
identity, i.e. toward plain removal, in proportion to the data, so few tokens cannot overfit). Then
`m T` is computed by the MLP's own output projection with its weight replaced by W T (in the row
convention): the bridged model has exactly the shapes and the cost of the plainly pruned one, saves and
reloads like it, and replays from the same `PruneRecord`, since only weight values differ.

A run that starts at block 0 has no block before it to fold into and is removed plainly; so is every
run when the block before it is not pre-norm residual around an MLP whose output projection is a
Linear or Conv1D. The first is recorded in the op's detail; the second is refused with the block
named, because the caller asked for a bridge. The fit reads the model before removal on the
calibration batches, tokens masked out by an `attention_mask` excluded, in float64 on the CPU
(three tokens x hidden-size matrices per run: 8,192 tokens of SmolLM2's 576 take 113 MB).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.surgery.blocks import remove_blocks
from energyprune.pruning.surgery.discovery import find_block_stack
from energyprune.pruning.surgery.neurons import MLPSpec, find_mlps
from energyprune.pruning.surgery.record import PruneRecord
from energyprune.pruning.surgery.slicing import check_indices, get_module, is_conv1d_hf, working_copy
from energyprune.torch_io import forward_batch

logger = logging.getLogger(__name__)

#: The ridge toward the identity, relative to the data (see the module docstring).
DEFAULT_RIDGE = 1e-3


def runs_of(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive indices: [3, 5, 6, 9] -> [(3, 3), (5, 6), (9, 9)]."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(a, b) for a, b in runs]


def _block_mlp(model: nn.Module, block_path: str) -> MLPSpec:
    for spec in find_mlps(model):
        if spec.path == block_path or spec.path.startswith(block_path + "."):
            return spec
    raise UsageError(f"cannot bridge over the blocks after {block_path}: it has no MLP of a known layout whose "
                     f"output could carry the bridge; remove blocks without --bridge")


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _token_mask(batch: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Which rows of the flattened (batch * seq, d) hidden state are real tokens."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if isinstance(mask, torch.Tensor) and mask.shape == hidden.shape[:-1]:
        return mask.reshape(-1).to(hidden.device).bool()
    return torch.ones(hidden.shape[:-1].numel(), dtype=torch.bool, device=hidden.device)


def _capture(model: nn.Module, modules: dict[str, nn.Module], batches: Sequence[Any],
             perturb: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Float64 (tokens, d) outputs of `modules` over `batches`; `perturb` adds a vector to a
    module's output (the residual check)."""
    got: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    current: dict[str, Any] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = _hidden(output)
            if perturb is not None and name in perturb:
                hidden = hidden + perturb[name].to(hidden.device, hidden.dtype)
                output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            keep = _token_mask(current["batch"], hidden)
            got[name].append(hidden.detach().reshape(-1, hidden.shape[-1])[keep].double().cpu())
            return output
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                current["batch"] = batch
                forward_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in got.items()}


def _check_residual(model: nn.Module, block_path: str, consumer: str, batch: Any) -> None:
    """Refuse unless the block's output moves by exactly what is added to its MLP's output (pre-norm
    residual: out = h + m); a post-norm block (BERT) normalises after the sum and cannot carry it.
    Element by element, within the rounding of the model's own dtype (so a bf16 model is not refused
    for its rounding); a post-norm block moves almost every element by something else."""
    block, projection = get_module(model, block_path), get_module(model, consumer)
    m = _capture(model, {"m": projection}, [batch])["m"]
    scale = float(m.pow(2).mean().sqrt()) or 1.0
    generator = torch.Generator().manual_seed(0)
    delta = 0.1 * scale * torch.randn(m.shape[1], generator=generator, dtype=torch.float64)
    base = _capture(model, {"out": block}, [batch])["out"]
    moved = _capture(model, {"out": block, "m": projection}, [batch], perturb={"m": delta})["out"]
    eps = torch.finfo(projection.weight.dtype).eps
    tolerance = 0.05 * delta.abs() + 4 * eps * (base.abs() + delta.abs()) + 1e-6 * scale
    wrong = float(((moved - base - delta).abs() > tolerance).double().mean())
    if wrong > 0.01:
        raise UsageError(f"cannot bridge over the blocks after {block_path}: its output is not its residual plus "
                         f"its MLP's output (a post-norm block?); remove blocks without --bridge")


def _carrier(model: nn.Module, block_path: str, batch: Any) -> str:
    """The path of the projection that will carry a bridge after `block_path`, or UsageError."""
    spec = _block_mlp(model, block_path)
    consumer = spec.full(spec.consumer)
    projection = get_module(model, consumer)
    if not (isinstance(projection, nn.Linear) or is_conv1d_hf(projection)):
        raise UsageError(f"cannot bridge over the blocks after {block_path}: its MLP output projection is a "
                         f"{type(projection).__name__}, not a Linear; remove blocks without --bridge")
    _check_residual(model, block_path, consumer, batch)
    return consumer


def check_bridgeable(model: nn.Module, batch: Any) -> None:
    """Fail now, before any measuring, where the model's blocks cannot carry a bridge (the blocks of
    a stack share one class, so the first one speaks for all)."""
    stack = find_block_stack(model)
    if stack is None:
        raise UsageError(f"{type(model).__name__} has no block stack: there are no blocks to remove or bridge")
    _carrier(model, stack.block_path(0), batch)


def _fit(m: torch.Tensor, target: torch.Tensor, ridge: float) -> torch.Tensor:
    n, d = m.shape
    strength = ridge * n * float((m * m).mean())
    eye = torch.eye(d, dtype=m.dtype)
    return torch.linalg.solve(m.T @ m + strength * eye, m.T @ target + strength * eye)


def _fold(projection: nn.Module, bridge: torch.Tensor) -> None:
    """Make the projection compute (its old output) @ bridge."""
    with torch.no_grad():
        weight = projection.weight
        bridge = bridge.to(weight.device)  # fitted on the CPU; the model may live on a GPU
        if is_conv1d_hf(projection):  # y = x W + b, W (in, out)
            weight.copy_((weight.double() @ bridge).to(weight.dtype))
        else:  # nn.Linear: y = x W^T + b, W (out, in)
            weight.copy_((bridge.T @ weight.double()).to(weight.dtype))
        bias = getattr(projection, "bias", None)
        if bias is not None:
            bias.copy_((bias.double() @ bridge).to(bias.dtype))


def remove_blocks_bridged(
    model: nn.Module, indices: Iterable[int], calibration: Sequence[Any], *,
    ridge: float = DEFAULT_RIDGE, inplace: bool = False,
) -> tuple[nn.Module, PruneRecord]:
    """`remove_blocks`, with each run of removed blocks replaced by a least-squares linear map folded
    into the output projection of the block before it (see the module docstring). The record is
    `remove_blocks`' own, its detail extended with `bridge`: per run, the blocks, the block that
    carries the map and the relative residual error before and after the fit (or why it was not
    bridged)."""
    calibration = list(calibration)
    if not calibration:
        raise UsageError("a bridge is fitted on calibration data: give calibration batches (or remove blocks "
                         "without --bridge)")
    if ridge < 0:
        raise UsageError(f"the bridge's ridge must be >= 0, got {ridge}")
    stack = find_block_stack(model)
    if stack is None:
        raise UsageError(f"{type(model).__name__} has no block stack: there are no blocks to remove or bridge")
    removed = check_indices(indices, len(stack), "block", stack.path or "the block stack")
    runs = runs_of(removed)
    bridged = [(i, j) for i, j in runs if i > 0]

    modules: dict[str, nn.Module] = {}
    consumers: dict[int, str] = {}
    for i, j in bridged:
        consumers[i - 1] = _carrier(model, stack.block_path(i - 1), calibration[0])
        projection = get_module(model, consumers[i - 1])
        modules[f"m{i - 1}"] = projection
        modules[f"out{i - 1}"] = stack.blocks[i - 1]
        modules[f"out{j}"] = stack.blocks[j]
    captured = _capture(model, modules, calibration) if modules else {}

    fits = {}
    report: list[dict[str, Any]] = []
    for i, j in runs:
        if i == 0:
            report.append({"blocks": [i, j], "bridged": False, "why": "no block before it to carry the map"})
            continue
        p = i - 1
        m = captured[f"m{p}"]
        target = captured[f"out{j}"] - (captured[f"out{p}"] - m)
        # Block j+1 sees this state through an RMS/LayerNorm: an error counts relative to the size
        # of the token's state, so each token is weighted by 1 / |y_j|^2 (else a few tokens with
        # massive activations decide the fit).
        weight = 1.0 / captured[f"out{j}"].norm(dim=1, keepdim=True).clamp_min(1e-12)
        m, target = m * weight, target * weight
        bridge = _fit(m, target, ridge)
        # The weighted relative errors: the ridge pulls toward the identity, so the bridged error is
        # never above the plain one on these tokens.
        energy = float((target * target).sum())
        before_error = float(((target - m) ** 2).sum()) / energy
        after_error = float(((target - m @ bridge) ** 2).sum()) / energy
        fits[p] = bridge
        report.append({"blocks": [i, j], "bridged": True, "into": consumers[p], "tokens": int(m.shape[0]),
                       "relative_error_plain": before_error, "relative_error_bridged": after_error})
        logger.info("bridge over blocks %d..%d into %s: relative error %.3f -> %.3f on %d tokens",
                    i, j, consumers[p], before_error, after_error, m.shape[0])

    model = working_copy(model, inplace)
    for p, bridge in fits.items():  # folded before removal: block p keeps its path until then
        _fold(get_module(model, consumers[p]), bridge)
    model, record = remove_blocks(model, removed, inplace=True)
    op = record.ops[0]
    detail = {**op.detail, "bridge": {"ridge": ridge, "runs": report}}
    return model, PruneRecord((replace(op, detail=detail),), record.model_class)
