"""One pass over calibration data, watching the hidden state enter and leave every block.

`collect_block_states` registers forward hooks on each block of the model's block stack (and,
if asked, on each block's attention module), runs the calibration batches once under
`torch.inference_mode()` with the model in eval mode, and keeps, with bounded memory:

* a **sample of token vectors** at every block boundary: at most `max_tokens` rows per boundary,
  whatever the amount of data. The sample is a reservoir (Vitter's algorithm R) over the stream of
  tokens, decided once per token and shared by every boundary, so row j of the states entering
  block i and row j of the states leaving it are the same token: paired, as the entropy
  difference ΔH = H(out) − H(in) needs. Padding tokens (where a dict batch's `attention_mask`
  is 0) are not part of the stream.
* **running sums** for ShortGPT's Block Influence: Σ cos(x_in, x_out) over *every* token (not just
  the sample) and the token count, per block (and per attention sub-block).

What is "the state after the attention sub-block" depends on where a family puts its residual:

* pre-LN blocks whose attention module returns `(output, ...)` and whose block adds it to the
  residual stream (Llama, Qwen2, Mistral, GPT-2, OPT, GPT-NeoX): `x_in + attention output`, with
  `x_in` the hidden state entering the block - the residual stream right after the attention
  sub-block, without per-family code. (GPT-NeoX's parallel residual adds both sub-blocks to `x_in`:
  the state is then "the block without its MLP".)
* BERT-style encoders, whose attention module holds the residual and its LayerNorm
  (`BertAttention.output.LayerNorm`): the attention module's output itself.
This is the same split `energyprune.pruning.surgery.blocks` uses to remove attention ("zero" / "skip").

Memory: (2·L [+ L with attention]) × `max_tokens` × d values in `dtype` (float32 by default), on
the device the hidden states are on. The state entering block i+1 is usually the very tensor
leaving block i; such boundaries share one buffer (it is split only if a batch ever shows them to
differ), so a Llama-style stack stores L + 1 buffers, not 2L. Lower `max_tokens` or pass
`dtype=torch.float16` for very large models.

Convolutional stacks (EfficientNet's MBConv blocks, ResNet stages): a 4-D or 5-D hidden state
is a channels-first feature map (N, C, H, W[, D]), so its feature axis is the channels (axis 1)
and every spatial position of every image is a "token" (`feature_axis` overrides the choice).
Such stacks change their resolution and width on the way (strided blocks), so the token stream
is split into **stages**: within one forward pass, the k-th distinct number of token rows met at
a boundary is stage k, and each stage has its own reservoir. Boundaries of one stage are paired
exactly as above; a block whose output has another shape than its input (`shape_preserving[i]`
is False) has no paired in/out sample and no Block Influence (NaN): it cannot be removed without
breaking the model, and the block criteria score it +inf. A transformer has one stage, and all
of this reduces to the single stream described first.

Assumptions: a block's first positional argument (or its `hidden_states` keyword) is the hidden
state, its output is that tensor or a tuple/list whose first element is; the feature axis is the
last one (or the channels of a 4-D/5-D map) and all others index tokens; every forward pass
meets its stages in the same order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.pruning.base import Batch
from energyprune.pruning.surgery.discovery import BlockStack, find_block_stack
from energyprune.torch_io import call_model, model_device, to_device

logger = logging.getLogger(__name__)

#: Names under which a block holds its self-attention module (as in `pruning.blocks`).
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


@dataclass(frozen=True)
class BlockStates:
    """What `collect_block_states` saw. Per block i (tuples of length `n_blocks`):

    inputs[i], outputs[i]: (m, d) token vectors entering / leaving block i, row j the same token
      everywhere (m ≤ max_tokens). `inputs[i + 1]` may be the same tensor as `outputs[i]`.
    attention[i]: (m, d) state after the attention sub-block (see the module note), or None for
      a block without a recognised attention module; the whole field is None when not hooked.
    cos_mean[i]: mean over all tokens of cos(x_in, x_out); attention_cos_mean[i] likewise for the
      attention sub-block (None where not hooked / no attention). NaN where block i changes shape.
    shape_preserving[i]: block i returned a tensor of its input's shape in every batch, so that
      removing it leaves a runnable model (empty: not recorded, taken as all True).
    tokens_seen, tokens_kept: of the first stage (the tokens entering block 0).
    """

    stack_path: str
    block_paths: tuple[str, ...]
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    cos_mean: tuple[float, ...]
    attention_paths: tuple[str | None, ...] | None
    attention: tuple[torch.Tensor | None, ...] | None
    attention_cos_mean: tuple[float | None, ...] | None
    tokens_seen: int
    tokens_kept: int
    batches: int
    max_tokens: int
    shape_preserving: tuple[bool, ...] = ()

    @property
    def n_blocks(self) -> int:
        return len(self.block_paths)

    def preserves_shape(self, i: int) -> bool:
        return not self.shape_preserving or self.shape_preserving[i]

    @property
    def block_influence(self) -> tuple[float, ...]:
        """ShortGPT Block Influence per block: 1 − mean cos(x_in, x_out)."""
        return tuple(1.0 - c for c in self.cos_mean)

    @property
    def attention_influence(self) -> tuple[float | None, ...] | None:
        """Block Influence of each attention sub-block (LLM-Drop): 1 − mean cos(x_in, x_after_attn)."""
        if self.attention_cos_mean is None:
            return None
        return tuple(None if c is None else 1.0 - c for c in self.attention_cos_mean)

    def boundaries(self) -> tuple[torch.Tensor, ...]:
        """The L + 1 states along depth: entering block 0, then leaving each block."""
        return (self.inputs[0], *self.outputs)


# ------------------------------------------------------------------------------- the reservoir
class _Reservoir:
    """Decides, token by token, which slot of a `capacity`-row sample each token takes (or none):
    Vitter's algorithm R, vectorised per batch, seeded. The decision is the same for every
    boundary, which is what keeps the boundaries paired."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    @property
    def filled(self) -> int:
        return min(self.seen, self.capacity)

    def plan(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """For the next n tokens of the stream: (token indices kept, the slot each one takes).
        Where two tokens of the batch take the same slot the later one wins, as if sequential."""
        position = np.arange(self.seen, self.seen + n)
        slot = np.where(position < self.capacity, position, -1)
        late = position >= self.capacity
        if late.any():
            draw = np.floor(self._rng.random(int(late.sum())) * (position[late] + 1)).astype(np.int64)
            slot[late] = np.where(draw < self.capacity, draw, -1)
        self.seen += n
        rows = np.nonzero(slot >= 0)[0]
        slot = slot[rows]
        # keep the last token written to each slot
        _, last_from_end = np.unique(slot[::-1], return_index=True)
        keep = np.sort(len(slot) - 1 - last_from_end)
        return rows[keep], slot[keep]


class _Buffer:
    """One boundary's sample: a (capacity, d) tensor allocated on first write, filled under the
    plan of one stage's reservoir (`stage`, set on first write)."""

    def __init__(self, capacity: int, dtype: torch.dtype) -> None:
        self.capacity = capacity
        self.dtype = dtype
        self.data: torch.Tensor | None = None
        self.stage: int | None = None

    def write(self, rows: torch.Tensor, slots: torch.Tensor, stage: int) -> None:
        if self.stage is None:
            self.stage = stage
        elif self.stage != stage:
            raise UsageError(
                f"a block boundary was in resolution stage {self.stage} in one batch and {stage} in another: "
                "collect_block_states needs every batch to pass through the same stages (same input sizes)")
        if self.data is None:
            self.data = torch.zeros(self.capacity, rows.shape[1], dtype=self.dtype, device=rows.device)
        elif self.data.shape[1] != rows.shape[1]:
            raise UsageError(
                f"hidden states changed width from {self.data.shape[1]} to {rows.shape[1]} between batches")
        self.data[slots] = rows.to(self.dtype)

    def copy(self) -> _Buffer:
        clone = _Buffer(self.capacity, self.dtype)
        clone.data = None if self.data is None else self.data.clone()
        clone.stage = self.stage
        return clone


# ------------------------------------------------------------------------------ the collector
def _hidden_of_input(args: tuple[Any, ...], kwargs: Mapping[str, Any], where: str) -> torch.Tensor:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise UsageError(
            f"{where}: expected the hidden state as the first positional argument or `hidden_states`, "
            f"got {type(hidden).__name__}")
    return hidden


def _hidden_of_output(output: Any, where: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise UsageError(f"{where}: expected a tensor or a tuple whose first element is one, got {type(output).__name__}")


def _includes_residual(attention: nn.Module) -> bool:
    """True where the attention module adds the residual and applies a LayerNorm itself (BERT's
    BertAttention -> BertSelfOutput.LayerNorm); the rule of `pruning.blocks._attention_mode`."""
    output = getattr(attention, "output", None)
    return isinstance(output, nn.Module) and any(isinstance(m, nn.LayerNorm) for m in output.modules())


def _find_attention(block: nn.Module) -> tuple[str, nn.Module] | None:
    for name in ATTENTION_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return name, module
    return None


def feature_axis_of(hidden: torch.Tensor, feature_axis: int | None) -> int:
    """The axis holding the features: `feature_axis` when given, else the channels (1) of a
    channels-first 4-D/5-D feature map and the last axis of anything else."""
    if feature_axis is not None:
        return feature_axis
    return 1 if hidden.ndim in (4, 5) else -1


def token_rows(hidden: torch.Tensor, feature_axis: int | None = None) -> torch.Tensor:
    """(tokens, features): every index but the feature axis's is one token (one position of one
    sequence, or one pixel of one image)."""
    axis = feature_axis_of(hidden, feature_axis)
    if axis not in (-1, hidden.ndim - 1):
        hidden = hidden.movedim(axis, -1)
    return hidden.reshape(-1, hidden.shape[-1])


@dataclass
class _Plan:
    """One stage's sampling decision for the current batch."""

    stage: int
    n: int  # token rows at this stage's boundaries
    valid: torch.Tensor | None  # rows that are real tokens (padding excluded), None: all
    rows: torch.Tensor  # rows sampled into the reservoir
    slots: torch.Tensor  # the slot each sampled row takes


class _Collector:
    def __init__(self, n_blocks: int, max_tokens: int, seed: int, dtype: torch.dtype, attention: bool,
                 feature_axis: int | None = None) -> None:
        self.n = n_blocks
        self.max_tokens = max_tokens
        self.seed = seed
        self.feature_axis = feature_axis
        self.reservoirs: list[_Reservoir] = []  # one per resolution stage, in the order a pass meets them
        self.dtype = dtype
        self.inputs: list[_Buffer | None] = [_Buffer(max_tokens, dtype)] + [None] * (n_blocks - 1)  # None: same as outputs[i-1]
        self.outputs = [_Buffer(max_tokens, dtype) for _ in range(n_blocks)]
        self.attention = [_Buffer(max_tokens, dtype) for _ in range(n_blocks)] if attention else None
        self.calls = [0] * n_blocks
        self.cos_sum = [0.0] * n_blocks
        self.cos_count = [0] * n_blocks
        self.attn_cos_sum = [0.0] * n_blocks
        self.attn_cos_count = [0] * n_blocks
        self.shape_preserving = [True] * n_blocks
        self.batches = 0
        # per forward pass
        self._mask: torch.Tensor | None = None
        self._plans: dict[int, _Plan] = {}  # by token-row count
        self._current_in: dict[int, torch.Tensor] = {}
        self._prev_out: tuple[int, torch.Tensor] | None = None

    # -- per batch
    def begin(self, mask: torch.Tensor | None) -> None:
        self._mask = mask
        self._plans = {}
        self._current_in.clear()
        self._prev_out = None
        self.batches += 1

    def end(self) -> None:
        self._current_in.clear()
        self._prev_out = None
        self._mask = None

    @property
    def first_reservoir(self) -> _Reservoir:
        return self.reservoirs[0] if self.reservoirs else _Reservoir(self.max_tokens, self.seed)

    def _flat(self, hidden: torch.Tensor) -> torch.Tensor:
        return token_rows(hidden, self.feature_axis)

    def _plan_for(self, flat: torch.Tensor) -> _Plan:
        """The plan of the stage with this many token rows, made on its first boundary in the pass."""
        n = flat.shape[0]
        plan = self._plans.get(n)
        if plan is None:
            stage = len(self._plans)
            if stage == len(self.reservoirs):
                self.reservoirs.append(_Reservoir(self.max_tokens, self.seed + stage))
            valid = None
            if self._mask is not None and self._mask.numel() == n:
                valid = torch.nonzero(self._mask.reshape(-1).to(flat.device) != 0).squeeze(1)
            count = n if valid is None else int(valid.numel())
            rows, slots = self.reservoirs[stage].plan(count)
            rows_t = torch.as_tensor(rows, dtype=torch.long, device=flat.device)
            if valid is not None:
                rows_t = valid[rows_t]
            plan = _Plan(stage, n, valid, rows_t, torch.as_tensor(slots, dtype=torch.long, device=flat.device))
            self._plans[n] = plan
        return plan

    def _valid(self, flat: torch.Tensor) -> torch.Tensor:
        valid = self._plan_for(flat).valid
        return flat if valid is None else flat.index_select(0, valid)

    def _write(self, buffer: _Buffer, flat: torch.Tensor) -> None:
        plan = self._plan_for(flat)
        if plan.rows.numel():
            buffer.write(flat.index_select(0, plan.rows), plan.slots, plan.stage)

    @staticmethod
    def _cos_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
        if a.shape != b.shape or a.shape[0] == 0:
            return 0.0, 0
        cos = nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
        return float(cos.double().sum().item()), int(cos.numel())

    # -- hooks
    def block_pre(self, i: int, hidden: torch.Tensor) -> None:
        flat = self._flat(hidden)
        self._current_in[i] = hidden
        if i == 0:
            self._write(self.inputs[0], flat)  # type: ignore[arg-type]
            return
        buffer = self.inputs[i]
        if buffer is None:  # still sharing the previous block's output buffer
            prev = self._prev_out
            if prev is not None and prev[0] == i - 1 and (
                    prev[1] is hidden or (prev[1].shape == hidden.shape and torch.equal(prev[1], hidden))):
                return
            logger.debug("the state entering block %d differs from the one leaving block %d: stored apart", i, i - 1)
            previous = self.outputs[i - 1]
            same_kind = (previous.data is not None and previous.data.shape[1] == flat.shape[1]
                         and previous.stage == self._plan_for(flat).stage)
            # Until now the two were the same tensor, so the earlier rows are the input's too; a
            # layer between the blocks that pools or widens the map (a ResNet-style loop) makes
            # another kind of state, which starts a buffer of its own.
            buffer = previous.copy() if same_kind else _Buffer(previous.capacity, previous.dtype)
            self.inputs[i] = buffer
        self._write(buffer, flat)

    def block_post(self, i: int, output: torch.Tensor) -> None:
        flat = self._flat(output)
        self.calls[i] += 1
        self._write(self.outputs[i], flat)
        x_in = self._current_in.pop(i, None)
        if x_in is not None and x_in.shape != output.shape:
            self.shape_preserving[i] = False
        if x_in is not None and self.shape_preserving[i]:
            total, count = self._cos_sum(self._valid(self._flat(x_in)), self._valid(flat))
            self.cos_sum[i] += total
            self.cos_count[i] += count
        self._prev_out = (i, output)

    def attention_post(self, i: int, output: torch.Tensor, includes_residual: bool) -> None:
        assert self.attention is not None
        x_in = self._current_in.get(i)
        if x_in is None:
            raise UsageError(f"the attention module of block {i} ran outside its block")
        if includes_residual:
            state = output
        else:
            if output.shape != x_in.shape:
                raise UsageError(
                    f"the attention output of block {i} has shape {tuple(output.shape)}, its block input "
                    f"{tuple(x_in.shape)}: cannot form the post-attention residual")
            state = x_in + output
        flat = self._flat(state)
        self._write(self.attention[i], flat)
        total, count = self._cos_sum(self._valid(self._flat(x_in)), self._valid(flat))
        self.attn_cos_sum[i] += total
        self.attn_cos_count[i] += count


# ------------------------------------------------------------------------------- running it
def _attention_mask_of(batch: Batch) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            return mask
    return None


def collect_block_states(
    model: nn.Module,
    calibration: Iterable[Batch],
    stack: BlockStack | None = None,
    max_tokens: int = 2048,
    *,
    attention: bool = False,
    max_batches: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    feature_axis: int | None = None,
) -> BlockStates:
    """Run `calibration` through `model` once and return what entered and left each block.

    stack: the blocks to watch (default: `find_block_stack(model)`).
    max_tokens: at most this many token vectors are kept per block boundary (a reservoir sample
      over all tokens seen, the same tokens at every boundary); the cosine means use every token.
      0 keeps no samples (cosine means only; the samples are then empty (0, 0) tensors).
    attention: also hook each block's attention module (`self_attn`, `attn`, `attention`,
      `self_attention`) for the attention-only variants.
    max_batches: stop after this many batches (default: all of `calibration`).
    seed: seeds the reservoir, so the same data gives the same sample.
    dtype: dtype of the stored samples.
    feature_axis: the axis of a hidden state that holds its features (default: the channels of a
      4-D/5-D feature map, else the last axis).

    Batches are moved to the model's device. The model runs in eval mode under
    `torch.inference_mode()` and is put back in its previous mode; hooks are always removed.
    """
    if stack is None:
        stack = find_block_stack(model)
        if stack is None:
            raise UsageError(
                f"{type(model).__name__} has no stack of repeated blocks (no nn.ModuleList of two or more "
                "same-class modules): block criteria need one; score neurons or channels instead")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise UsageError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    if max_batches is not None and max_batches < 1:
        raise UsageError(f"max_batches must be >= 1, got {max_batches}")
    blocks = list(stack.blocks)
    n = len(blocks)
    attention_modules: list[tuple[str, nn.Module] | None] = [_find_attention(b) for b in blocks] if attention else []
    if attention and not any(attention_modules):
        raise UsageError(
            f"no block of {stack.path} has an attention module named one of {', '.join(ATTENTION_NAMES)}")
    collector = _Collector(n, max_tokens, seed, dtype, attention, feature_axis)
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def pre_hook(i: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            collector.block_pre(i, _hidden_of_input(args, kwargs, stack.block_path(i)))
        return hook

    def post_hook(i: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            collector.block_post(i, _hidden_of_output(output, stack.block_path(i)))
        return hook

    def attention_hook(i: int, includes_residual: bool, where: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            collector.attention_post(i, _hidden_of_output(output, where), includes_residual)
        return hook

    was_training = model.training
    device = model_device(model)
    try:
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(block.register_forward_hook(post_hook(i)))
            if attention and attention_modules[i] is not None:
                name, module = attention_modules[i]  # type: ignore[misc]
                where = f"{stack.block_path(i)}.{name}"
                handles.append(module.register_forward_hook(attention_hook(i, _includes_residual(module), where)))
        model.eval()
        with torch.inference_mode():
            for number, batch in enumerate(calibration):
                if max_batches is not None and number >= max_batches:
                    break
                batch = to_device(batch, device)
                collector.begin(_attention_mask_of(batch))
                try:
                    call_model(model, batch)
                finally:
                    collector.end()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    if collector.first_reservoir.seen == 0:
        raise UsageError("the calibration data gave no tokens: pass at least one non-empty batch")
    if not all(collector.calls):
        idle = [i for i, c in enumerate(collector.calls) if not c]
        raise UsageError(f"blocks {idle} of {stack.path} never ran: does the model's forward use them?")
    kept = collector.first_reservoir.filled

    def final(buffer: _Buffer) -> torch.Tensor:
        if buffer.data is None or buffer.stage is None:  # max_tokens == 0
            return torch.empty(0, 0, dtype=dtype)
        filled = collector.reservoirs[buffer.stage].filled
        return buffer.data[:filled].clone()  # a normal tensor, outside inference mode

    outputs = tuple(final(b) for b in collector.outputs)
    inputs = tuple(final(b) if b is not None else outputs[i - 1] for i, b in enumerate(collector.inputs))

    def mean(total: float, count: int) -> float:
        return total / count if count else float("nan")

    attention_states = attention_cos = attention_paths = None
    if attention:
        assert collector.attention is not None
        attention_paths = tuple(None if a is None else f"{stack.block_path(i)}.{a[0]}"
                                for i, a in enumerate(attention_modules))
        attention_states = tuple(None if a is None else final(b)
                                 for a, b in zip(attention_modules, collector.attention))
        attention_cos = tuple(None if a is None else mean(collector.attn_cos_sum[i], collector.attn_cos_count[i])
                              for i, a in enumerate(attention_modules))
    states = BlockStates(
        stack_path=stack.path,
        block_paths=tuple(stack.block_path(i) for i in range(n)),
        inputs=inputs,
        outputs=outputs,
        cos_mean=tuple(mean(s, c) for s, c in zip(collector.cos_sum, collector.cos_count)),
        attention_paths=attention_paths,
        attention=attention_states,
        attention_cos_mean=attention_cos,
        tokens_seen=collector.first_reservoir.seen,
        tokens_kept=kept,
        batches=collector.batches,
        max_tokens=max_tokens,
        shape_preserving=tuple(collector.shape_preserving),
    )
    logger.info("calibration: %d batches, %d tokens seen, %d kept per boundary, %d blocks, %d resolution stage(s)",
                states.batches, states.tokens_seen, states.tokens_kept, n, len(collector.reservoirs))
    return states



def shape_changing_blocks(model: nn.Module, batch: Batch, stack: BlockStack | None = None) -> tuple[int, ...]:
    """Indices of the blocks whose output has another shape than their input on `batch` (strided
    or widening CNN blocks): removing one would break the model, so they are not block units.
    One forward pass in eval mode under `torch.inference_mode()`; hooks always removed."""
    if stack is None:
        stack = find_block_stack(model)
        if stack is None:
            return ()
    changing: set[int] = set()
    seen: dict[int, torch.Size] = {}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def pre_hook(i: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen[i] = _hidden_of_input(args, kwargs, stack.block_path(i)).shape
        return hook

    def post_hook(i: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if i in seen and _hidden_of_output(output, stack.block_path(i)).shape != seen[i]:
                changing.add(i)
        return hook

    was_training = model.training
    try:
        for i, block in enumerate(stack.blocks):
            handles.append(block.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(block.register_forward_hook(post_hook(i)))
        model.eval()
        with torch.inference_mode():
            call_model(model, to_device(batch, model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return tuple(sorted(changing))
