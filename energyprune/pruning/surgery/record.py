"""What a pruning run removed, in order, so that it can be saved as JSON and replayed.

Every surgery function returns a `PruneRecord` of one operation; records add up with `+`. Indices
are those of the model *at the time of each operation* (removing block 2 renumbers block 3 to 2),
so `apply_record` (in `replay`) replays the operations in the same order on a fresh copy of the original model
and gets the same architecture, parameter shape for parameter shape. `map_path` translates a path
of the original model to its path after the record's block removals.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from energyprune.errors import UsageError

logger = logging.getLogger(__name__)

FORMAT = "energyprune.prune-record/1"

#: The operation kinds, each the name of the surgery function that performs it.
KINDS = ("remove_blocks", "remove_attention", "prune_mlp_neurons", "prune_channels", "fold_activation",
         "prune_heads", "prune_hidden", "prune_channel_groups")


@dataclass(frozen=True)
class PruneOp:
    """One surgery operation.

    kind: one of `KINDS`. paths: the modules acted on (the block stack for remove_blocks and
    remove_attention, the MLP containers for prune_mlp_neurons and fold_activation, the producer
    layers for prune_channels, the groups' root layers for prune_channel_groups). indices: per path, what was removed (block indices, neuron or
    channel indices; empty for fold_activation), as numbered in the model at that moment.
    sizes_before / sizes_after: per path, the size that changed (blocks in the stack, attention
    sub-blocks present, hidden neurons, output channels). params_before / params_after: parameter
    elements of the whole model. detail: JSON-able facts (config fields changed, consumers shrunk,
    what "removed attention" meant per block).
    """

    kind: str
    paths: tuple[str, ...]
    indices: tuple[tuple[int, ...], ...]
    sizes_before: tuple[int, ...]
    sizes_after: tuple[int, ...]
    params_before: int
    params_after: int
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown prune operation {self.kind!r}; known: {', '.join(KINDS)}")
        if not (len(self.paths) == len(self.indices) == len(self.sizes_before) == len(self.sizes_after)):
            raise UsageError(f"prune operation {self.kind}: paths, indices and sizes differ in length")
        try:  # JSON-normal from the start, so a record equals itself after a JSON round trip
            detail = json.loads(json.dumps(dict(self.detail)))
        except (TypeError, ValueError) as error:
            raise UsageError(f"prune operation {self.kind}: detail is not JSON-serialisable ({error})") from None
        object.__setattr__(self, "detail", detail)

    @property
    def params_removed(self) -> int:
        return self.params_before - self.params_after

    def same_structure(self, other: PruneOp) -> bool:
        """Same operation on the same parts with the same sizes (parameters and detail aside)."""
        return (self.kind, self.paths, self.indices, self.sizes_before, self.sizes_after) == (
            other.kind, other.paths, other.indices, other.sizes_before, other.sizes_after)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["paths"] = list(self.paths)
        d["indices"] = [list(ix) for ix in self.indices]
        d["sizes_before"] = list(self.sizes_before)
        d["sizes_after"] = list(self.sizes_after)
        d["detail"] = dict(self.detail)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneOp:
        try:
            return cls(
                kind=str(d["kind"]),
                paths=tuple(str(p) for p in d["paths"]),
                indices=tuple(tuple(int(i) for i in ix) for ix in d["indices"]),
                sizes_before=tuple(int(s) for s in d["sizes_before"]),
                sizes_after=tuple(int(s) for s in d["sizes_after"]),
                params_before=int(d["params_before"]),
                params_after=int(d["params_after"]),
                detail=dict(d.get("detail", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"not a prune operation: {error}") from None


@dataclass(frozen=True)
class PruneRecord:
    """Every surgery operation applied to a model, in order. `model_class` names the class of the
    model the first operation was applied to (checked by `apply_record`)."""

    ops: tuple[PruneOp, ...] = ()
    model_class: str = ""

    def __add__(self, other: PruneRecord) -> PruneRecord:
        if not isinstance(other, PruneRecord):
            return NotImplemented
        if self.model_class and other.model_class and self.model_class != other.model_class:
            raise UsageError(
                f"cannot chain a record of a {other.model_class} after one of a {self.model_class}")
        return PruneRecord(self.ops + other.ops, self.model_class or other.model_class)

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def params_before(self) -> int | None:
        return self.ops[0].params_before if self.ops else None

    @property
    def params_after(self) -> int | None:
        return self.ops[-1].params_after if self.ops else None

    def map_path(self, path: str) -> str | None:
        """The path, in the model after this record, of what was at `path` in the model before it;
        None where it lies in a removed block. Only block removals move paths."""
        current: str | None = path
        for op in self.ops:
            if op.kind != "remove_blocks" or current is None:
                continue
            stack = op.paths[0]
            prefix = stack + "." if stack else ""
            if not current.startswith(prefix):
                continue
            head, _, tail = current[len(prefix):].partition(".")
            if not head.isdigit():
                continue
            index = int(head)
            removed = op.indices[0]
            if index in removed:
                current = None
            else:
                new = index - sum(1 for r in removed if r < index)
                current = prefix + str(new) + ("." + tail if tail else "")
        return current

    def original_unit(self, unit: Any) -> Any:
        """The unit of the model *before* this record that `unit` (of the model after it) is: a
        block, attention module, neuron or channel, with its original index and path. Reports use
        it, so that step 2 of a run names the block it removed as the original model numbered it,
        not as the model renumbered after step 1."""
        from energyprune.pruning.base import Unit

        kind, path, index = unit.kind, unit.path, unit.index
        for op in reversed(self.ops):
            if op.kind == "remove_blocks":
                stack = op.paths[0]
                survivors = [i for i in range(op.sizes_before[0]) if i not in set(op.indices[0])]
                prefix = stack + "." if stack else ""
                if path.startswith(prefix):
                    head, _, tail = path[len(prefix):].partition(".")
                    if head.isdigit() and int(head) < len(survivors):
                        path = prefix + str(survivors[int(head)]) + ("." + tail if tail else "")
                if kind in ("block", "attention") and path.startswith(prefix) and 0 <= index < len(survivors):
                    index = survivors[index]
            elif op.kind in ("prune_mlp_neurons", "prune_channels", "prune_heads", "prune_hidden", "prune_channel_groups"):
                wanted = {"prune_mlp_neurons": "neuron", "prune_channels": "channel", "prune_heads": "head",
                          "prune_hidden": "hidden", "prune_channel_groups": "channel"}[op.kind]
                if kind != wanted or path not in op.paths:
                    continue
                k = op.paths.index(path)
                gone = set(op.indices[k])
                kept = [i for i in range(op.sizes_before[k]) if i not in gone]
                if 0 <= index < len(kept):
                    index = kept[index]
        return Unit(kind, path, index)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model_class": self.model_class, "ops": [op.to_dict() for op in self.ops]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneRecord:
        if d.get("format") != FORMAT:
            raise UsageError(f"not a prune record (format {d.get('format')!r}, expected {FORMAT!r})")
        return cls(tuple(PruneOp.from_dict(op) for op in d.get("ops", [])), str(d.get("model_class", "")))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> PruneRecord:
        return cls.from_dict(json.loads(text))
