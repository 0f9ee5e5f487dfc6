"""Removing attention heads: the query, key, value and output projections really shrink.

A unit is one **KV group**: a key/value head together with the query heads that read it
(grouped-query attention). Removing a query head alone would leave its KV head serving a
different number of query heads than the others, which `repeat_kv` cannot express; removing a
KV head alone would orphan its query heads. With plain multi-head attention a group is one head.

| family | attention path (the unit's path) | projections | head counts kept truthful |
| --- | --- | --- | --- |
| Llama / Qwen2 / Mistral | `model.layers.i.self_attn` | `q_proj`, `k_proj`, `v_proj` (rows) and `o_proj` (columns) | `num_heads`, `num_key_value_heads` where the module has them |
| OPT | `model.decoder.layers.i.self_attn` | `q_proj`, `k_proj`, `v_proj`, `out_proj` | `num_heads` |
| GPT-2 (HF `Conv1D`) | `transformer.h.i.attn` | `c_attn` (q, k, v thirds of its outputs), `c_proj` (inputs) | `num_heads`, `split_size` |
| BERT / RoBERTa | `encoder.layer.i.attention` | `self.query/key/value`, `output.dense` | `self.num_attention_heads`, `self.all_head_size` |

Every one of these forwards reshapes with `-1` heads, so fewer heads need no code change. Group g
owns query rows [g·G·d, (g+1)·G·d) (G query heads per KV head, d the head size), key and value
rows [g·d, (g+1)·d) and the output projection's input columns of its query heads.

The config's head counts are set only where the model can be rebuilt from them: the config
holds `head_dim` itself (Llama family) and every layer keeps the same number of heads. GPT-2 and
BERT derive the head size from hidden_size / heads, so there the config is left as it was and the
per-layer counts are in the record (`detail["layer_heads"]`): `apply_record` rebuilds them.
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
    out_size,
    shrink_inputs,
    shrink_outputs,
    working_copy,
)

logger = logging.getLogger(__name__)

#: Names under which a block holds its attention module, tried in order.
ATTENTION_CHILD_NAMES = ("self_attn", "attn", "attention", "self_attention")

#: (query, key, value, output) of attention modules with separate projections, tried in order.
SEPARATE_LAYOUTS = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("q_proj", "k_proj", "v_proj", "out_proj"),
    ("self.query", "self.key", "self.value", "output.dense"),
)
#: A fused q|k|v projection (GPT-2's c_attn: outputs are [q | k | v]) and its output projection.
FUSED_LAYOUTS = (("c_attn", "c_proj"),)


@dataclass(frozen=True)
class AttentionSpec:
    """Where one attention module's heads are. Names are relative to `path`.

    `fused` is "" for separate q/k/v projections, else the name of the one producing [q | k | v].
    """

    path: str
    query: str
    key: str
    value: str
    output: str
    fused: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    counts_on: str  # the submodule (relative) whose attributes hold the head counts

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    @property
    def groups(self) -> int:
        """KV groups: the units of this module."""
        return self.num_kv_heads

    def full(self, name: str) -> str:
        return join(self.path, name)

    def query_columns(self, group: int) -> list[int]:
        width = self.group_size * self.head_dim
        return list(range(group * width, (group + 1) * width))

    def kv_columns(self, group: int) -> list[int]:
        return list(range(group * self.head_dim, (group + 1) * self.head_dim))

    def parts(self, group: int) -> list[tuple[str, str, list[int]]]:
        """(layer, "out" | "in", indices) of everything group `group` owns: output rows of the
        projections that make its q, k, v, input columns of the output projection."""
        q, kv = self.query_columns(group), self.kv_columns(group)
        if self.fused:
            width = self.num_heads * self.head_dim  # GPT-2: q, k and v each this wide
            fused = q + [width + i for i in kv] + [2 * width + i for i in kv]
            return [(self.fused, "out", fused), (self.output, "in", q)]
        return [(self.query, "out", q), (self.key, "out", kv), (self.value, "out", kv), (self.output, "in", q)]


def _lookup(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _head_dim(module: nn.Module, counts: nn.Module, query_width: int) -> int | None:
    for owner in (counts, module):
        for key in ("head_dim", "attention_head_size"):
            value = getattr(owner, key, None)
            if isinstance(value, int) and value > 0:
                return value
    for owner in (counts, module):
        for key in ("num_heads", "num_attention_heads"):
            value = getattr(owner, key, None)
            if isinstance(value, int) and value > 0 and query_width % value == 0:
                return query_width // value
    return None


def find_attention_heads(model: nn.Module, path: str) -> AttentionSpec | None:
    """The heads of the attention module at `path`, or None where its layout is not one of the
    table's (see the module note)."""
    module = get_module(model, path)
    for query, key, value, output in SEPARATE_LAYOUTS:
        layers = [_lookup(module, name) for name in (query, key, value, output)]
        if not all(layer is not None and is_linear_like(layer) for layer in layers):
            continue
        counts_on = query.rpartition(".")[0]  # BERT keeps its counts on `self`
        counts = get_module(module, counts_on) if counts_on else module
        head_dim = _head_dim(module, counts, out_size(layers[0]))
        if head_dim is None:
            return None
        q_width, k_width = out_size(layers[0]), out_size(layers[1])
        if q_width % head_dim or k_width % head_dim or out_size(layers[2]) != k_width:
            return None
        heads, kv_heads = q_width // head_dim, k_width // head_dim
        if heads % kv_heads:
            return None
        return AttentionSpec(path, query, key, value, output, "", heads, kv_heads, head_dim, counts_on)
    for fused, output in FUSED_LAYOUTS:
        layers = [_lookup(module, name) for name in (fused, output)]
        if not all(layer is not None and is_linear_like(layer) for layer in layers):
            continue
        if getattr(module, "is_cross_attention", False):
            return None
        width = out_size(layers[0])
        head_dim = _head_dim(module, module, width // 3)
        if head_dim is None or width % 3 or (width // 3) % head_dim:
            return None
        heads = width // 3 // head_dim
        return AttentionSpec(path, "", "", "", output, fused, heads, heads, head_dim, "")
    return None


def attention_paths(model: nn.Module) -> list[str]:
    """The attention module of every block of the block stack that has one, in depth order."""
    stack = find_block_stack(model)
    if stack is None:
        return []
    out = []
    for i in range(len(stack)):
        for name in ATTENTION_CHILD_NAMES:
            candidate = join(stack.block_path(i), name)
            if _lookup(model, candidate) is not None:
                out.append(candidate)
                break
    return out


def describe_layouts() -> str:
    separate = "; ".join("/".join(names) for names in SEPARATE_LAYOUTS)
    fused = "; ".join(f"{f} (fused q|k|v) + {o}" for f, o in FUSED_LAYOUTS)
    return f"{separate}; {fused}"


def require_attention_heads(model: nn.Module, path: str) -> AttentionSpec:
    spec = find_attention_heads(model, path)
    if spec is None:
        module = get_module(model, path)
        raise UsageError(
            f"{path or 'the model'} ({type(module).__name__}) is not an attention layout this library can split "
            f"into heads: expected projections named {describe_layouts()} with a head size it can read")
    return spec


def find_attentions(model: nn.Module) -> list[AttentionSpec]:
    """One spec per attention module of the stack; a UsageError naming the first module whose
    layout is unknown (pruning some layers' heads and silently not others would mislead)."""
    return [require_attention_heads(model, path) for path in attention_paths(model)]


def _set_counts(model: nn.Module, spec: AttentionSpec, heads: int, kv_heads: int) -> None:
    """Keep the module attributes that mirror the head counts truthful."""
    module = get_module(model, spec.path)
    counts = get_module(module, spec.counts_on) if spec.counts_on else module
    for owner in {id(counts): counts, id(module): module}.values():
        if hasattr(owner, "num_heads"):
            owner.num_heads = heads
        if hasattr(owner, "num_attention_heads"):
            owner.num_attention_heads = heads
        if hasattr(owner, "num_key_value_heads"):
            owner.num_key_value_heads = kv_heads
        if hasattr(owner, "all_head_size"):
            owner.all_head_size = heads * spec.head_dim
        if hasattr(owner, "split_size") and spec.fused:
            owner.split_size = heads * spec.head_dim  # GPT-2 splits c_attn's output by this


def _sync_config(model: nn.Module) -> dict[str, object]:
    specs = find_attentions(model)
    detail: dict[str, object] = {"layer_heads": {s.path: [s.num_heads, s.num_kv_heads] for s in specs}}
    config = getattr(model, "config", None)
    counts = {(s.num_heads, s.num_kv_heads, s.head_dim) for s in specs}
    changed: dict[str, int] = {}
    if config is not None and len(counts) == 1:
        heads, kv_heads, head_dim = counts.pop()
        # Only a config that states its head size rebuilds these shapes; GPT-2 / BERT derive it.
        if getattr(config, "head_dim", None) == head_dim and "num_attention_heads" in config.to_dict():
            if config.num_attention_heads != heads:
                config.num_attention_heads = heads
                changed["num_attention_heads"] = heads
            if getattr(config, "num_key_value_heads", None) not in (None, kv_heads):
                config.num_key_value_heads = kv_heads
                changed["num_key_value_heads"] = kv_heads
    detail["config"] = changed
    return detail


def prune_heads(
    model: nn.Module, groups: Mapping[str, Iterable[int]], *, inplace: bool = False
) -> tuple[nn.Module, PruneRecord]:
    """Remove KV groups of attention heads: `groups` maps an attention path to the group indices
    to remove there (for multi-head attention, head indices). Works on a deep copy unless
    `inplace`. A UsageError for an unknown layout, an index out of range, or every group of a
    module (remove its attention sub-block instead)."""
    if not isinstance(groups, Mapping) or not groups:
        raise UsageError("groups must be a non-empty mapping {attention_path: [group indices]}")
    model = working_copy(model, inplace)
    params_before = count_parameters(model)
    paths, removed_all, before, after = [], [], [], []
    for path, indices in groups.items():
        spec = require_attention_heads(model, path)
        removed = check_indices(indices, spec.groups, "head group", path)
        if len(removed) == spec.groups:
            raise UsageError(f"cannot remove all {spec.groups} head groups of {path}: remove its attention "
                             "sub-block (unit kind `attention`) instead")
        if removed:
            module = get_module(model, path)
            gone: dict[tuple[str, str], set[int]] = {}
            for group in removed:
                for layer, side, columns in spec.parts(group):
                    gone.setdefault((layer, side), set()).update(columns)
            for (layer, side), columns in gone.items():
                target = get_module(module, layer)
                size = out_size(target) if side == "out" else in_size(target)
                keep = [i for i in range(size) if i not in columns]
                (shrink_outputs if side == "out" else shrink_inputs)(target, keep)
            left = spec.groups - len(removed)
            _set_counts(model, spec, left * spec.group_size, left)
        paths.append(path)
        removed_all.append(removed)
        before.append(spec.groups)
        after.append(spec.groups - len(removed))
    detail = _sync_config(model)
    op = PruneOp(kind="prune_heads", paths=tuple(paths), indices=tuple(removed_all), sizes_before=tuple(before),
                 sizes_after=tuple(after), params_before=params_before, params_after=count_parameters(model),
                 detail=detail)
    logger.info("pruned head groups: %s", {p: f"{b} -> {a}" for p, b, a in zip(paths, before, after)})
    return model, PruneRecord((op,), type(model).__name__)

