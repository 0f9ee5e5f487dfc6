"""What a target costs before pruning (issue 12, item 0): the share of one inference's FLOPs in the
units a kind can remove, what it cannot touch (embeddings, `lm_head`, norms, other sub-blocks),
and whether the target asks for more of the removable units than `warn_share`.

FLOPs stand in for energy here because energy per module cannot be measured separately; the
budget loop measures the real energy of every step afterwards. The counts come from PyTorch's
FlopCounterMode (`metrics.flops`), attention counted as its matrix products.

| kind | FLOPs a kind's units hold |
| --- | --- |
| block | each block of the stack |
| attention | each block's attention module (projections and attention products) |
| head | each attention module, (groups − 1) / groups of it (one group stays) |
| neuron | each MLP's producers, consumer and per-channel layers, (h − 1) / h of them (one neuron stays) |
| hidden | every layer reading or writing the hidden size (q/k/v/o, MLP, lm_head), (H − 1) / H of them |

`channel` and `activation` are not previewed (their FLOPs depend on what follows each layer).
Removing a unit is assumed to save its FLOPs in proportion: true for the matrix products of MLP
neurons and head projections, an upper bound for heads' attention products with short sequences.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from energyprune.errors import UsageError
from energyprune.metrics.flops import flops_by_module
from energyprune.pruning.kinds import units_for
from energyprune.pruning.surgery.heads import find_attention_heads
from energyprune.pruning.surgery.neurons import find_mlp
from energyprune.torch_io import Inputs

logger = logging.getLogger(__name__)

#: Kinds whose removable FLOPs can be previewed, in the order suggestions are listed.
PREVIEW_KINDS = ("neuron", "head", "hidden", "attention", "block")
#: A target that needs more than this share of the removable units' FLOPs is flagged.
WARN_SHARE = 0.5


@dataclass(frozen=True)
class KindCost:
    """FLOPs of one inference in the units of `kind`: `removable_flops` may go (what must stay,
    one unit per group, excluded), `held_flops` is everything the units hold."""

    kind: str
    n_units: int
    held_flops: int
    removable_flops: int
    total_flops: int

    @property
    def removable_share(self) -> float:
        return self.removable_flops / self.total_flops if self.total_flops else 0.0


@dataclass(frozen=True)
class CostPreview:
    """The cost of `target_ratio` (energy as a share of the original, FLOPs as its proxy) for
    pruning `kind`. `needed_share`: the share of the removable FLOPs the target needs (> 1: the
    kind cannot reach it). `fixed_parts`: the largest FLOPs outside every unit of the kind, as
    shares of the total. `suggestions`: kinds that would reach it with at most `warn_share`."""

    kind: str
    target_ratio: float
    total_flops: int
    costs: Mapping[str, KindCost]
    fixed_parts: tuple[tuple[str, float], ...]
    warn_share: float = WARN_SHARE
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cost(self) -> KindCost | None:
        return self.costs.get(self.kind)

    @property
    def needed_share(self) -> float | None:
        cost = self.cost
        if cost is None:
            return None
        need = (1 - self.target_ratio) * self.total_flops
        return need / cost.removable_flops if cost.removable_flops else float("inf")

    @property
    def too_costly(self) -> bool:
        share = self.needed_share
        return share is not None and share > self.warn_share

    @property
    def suggestions(self) -> tuple[str, ...]:
        need = (1 - self.target_ratio) * self.total_flops
        return tuple(k for k, c in self.costs.items()
                     if k != self.kind and c.removable_flops and need / c.removable_flops <= self.warn_share)

    def message(self) -> str:
        """One line for the CLI: what the kind holds, what the target needs of it."""
        cost = self.cost
        target = f"-{(1 - self.target_ratio) * 100:.0f}%"
        if cost is None:
            return f"cost preview: {self.kind} units are not previewed ({'; '.join(self.notes) or 'no FLOPs model'})"
        fixed = ", ".join(f"{name} {share:.0%}" for name, share in self.fixed_parts[:3]) or "none"
        share = self.needed_share
        needs = "more than all of them" if share is None or share > 1 else f"~{share:.0%} of them"
        line = (f"cost preview (FLOPs as the energy proxy): {cost.n_units} {self.kind} units hold "
                f"{cost.held_flops / self.total_flops:.0%} of the FLOPs ({cost.removable_share:.0%} removable); "
                f"outside them: {fixed}. Target {target} needs {needs}")
        if self.too_costly:
            better = ", ".join(f"{k} (~{(1 - self.target_ratio) * self.total_flops / self.costs[k].removable_flops:.0%}"
                               " of theirs)" for k in self.suggestions)
            line += (f" - more than {self.warn_share:.0%}: expect a large loss of quality"
                     + (f"; kinds that could reach it: {better}" if better else
                        "; no single kind reaches it within that share: combine kinds or relax the target"))
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "target_ratio": self.target_ratio, "total_flops": self.total_flops,
            "costs": {k: {"n_units": c.n_units, "held_flops": c.held_flops, "removable_flops": c.removable_flops,
                          "removable_share": c.removable_share} for k, c in self.costs.items()},
            "fixed_parts": [list(p) for p in self.fixed_parts], "needed_share": self.needed_share,
            "warn_share": self.warn_share, "too_costly": self.too_costly, "suggestions": list(self.suggestions),
            "notes": list(self.notes), "proxy": "FLOPs (FlopCounterMode), not measured energy",
        }


def _strip(name: str) -> str:
    # FlopCounterMode names a module "<ModelClass>.<path>"; the model itself is "<ModelClass>".
    return name.partition(".")[2]


def _sum(flops: Mapping[str, int], paths: Iterable[str]) -> int:
    return sum(flops.get(p, 0) for p in paths)


def _regions(model: nn.Module, kind: str) -> tuple[list[tuple[list[str], int]], int]:
    """(module paths of each group's FLOPs, units in the group) and the units that must stay per
    group, for the kinds of `PREVIEW_KINDS`."""
    units = units_for(model, kind)
    if kind == "hidden":
        from energyprune.pruning.surgery.hidden import find_hidden

        spec = find_hidden(model)
        return [(list(dict.fromkeys((*spec.readers, *spec.writers))), spec.size)], 1
    if kind in ("block", "attention"):
        return [([u.path], 1) for u in units], 1
    groups: dict[str, int] = {}
    for unit in units:
        groups[unit.path] = groups.get(unit.path, 0) + 1
    out = []
    for path, size in groups.items():
        if kind == "neuron":
            spec = find_mlp(model, path)
            assert spec is not None
            layers = [spec.full(n) for n in (*spec.producers, *spec.per_channel, *spec.readers, spec.consumer)]
        else:
            spec_h = find_attention_heads(model, path)
            assert spec_h is not None
            layers = [path]
        out.append((layers, size))
    return out, 1


def preview_cost(model: nn.Module, inputs: Inputs, kind: str, target_ratio: float, *,
                 warn_share: float = WARN_SHARE) -> CostPreview:
    """The cost preview of pruning `kind` units of `model` until one inference on `inputs` takes
    `target_ratio` of the original's energy (FLOPs as the proxy); see the module note."""
    if not 0 < target_ratio < 1:
        raise UsageError(f"target_ratio must lie in (0, 1), got {target_ratio!r}")
    if not 0 < warn_share <= 1:
        raise UsageError(f"warn_share must lie in (0, 1], got {warn_share!r}")
    raw = flops_by_module(model, inputs, depth=64)
    total = int(raw.get("Global", 0))
    flops = {_strip(k): v for k, v in raw.items() if "." in k}
    if total <= 0:
        raise UsageError("the model performs no counted FLOPs on these inputs: nothing to preview")
    costs: dict[str, KindCost] = {}
    notes: list[str] = []
    covered: dict[str, list[str]] = {}
    for name in PREVIEW_KINDS:
        try:
            regions, keep = _regions(model, name)
        except UsageError as error:
            notes.append(f"{name}: {error}")
            continue
        if not regions:
            continue
        held = sum(_sum(flops, paths) for paths, _ in regions)
        if name in ("block", "attention"):
            smallest = min(_sum(flops, paths) for paths, _ in regions)
            removable = held - smallest * keep
        else:
            removable = sum(_sum(flops, paths) * (size - keep) / size for paths, size in regions)
        costs[name] = KindCost(name, sum(size for _, size in regions), int(held), int(removable), total)
        covered[name] = [p for paths, _ in regions for p in paths]
    if kind not in PREVIEW_KINDS:
        notes.append(f"{kind}: the FLOPs of these units depend on what follows each layer")
    fixed_parts: list[tuple[str, float]] = []
    inside = covered.get(kind, [])
    if inside:
        # Leaf-most modules outside every unit of the kind, largest first (lm_head, attention...).
        outside = {p: v for p, v in flops.items() if v and not any(p == q or p.startswith(q + ".") or
                                                                  q.startswith(p + ".") for q in inside)}
        leaves = {p: v for p, v in outside.items() if not any(o.startswith(p + ".") for o in outside)}
        fixed_parts = sorted(((p, v / total) for p, v in leaves.items()), key=lambda x: -x[1])
        # Name repeated sub-blocks once: the self_attn of every block as one figure.
        merged: dict[str, float] = {}
        for path, share in fixed_parts:
            parts = path.split(".")
            digit = next((i for i, p in enumerate(parts) if p.isdigit()), None)
            if digit is not None:
                parts = parts[:digit] + ["*"] + parts[digit + 1:digit + 2]
            key = ".".join(parts)
            merged[key] = merged.get(key, 0.0) + share
        fixed_parts = sorted(merged.items(), key=lambda x: -x[1])
    return CostPreview(kind, float(target_ratio), total, costs, tuple(fixed_parts), warn_share, tuple(notes))
