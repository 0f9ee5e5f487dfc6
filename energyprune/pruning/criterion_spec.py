"""A criterion named with its options, as a run or a benchmark row names it. Free of torch, so
that the command line can hold one without importing the criteria."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CriterionSpec:
    """A criterion by name with its options, as a run or a benchmark row names it.

    `label` is the row name (default: `name:key=value:...`); `family` groups variants of one
    criterion, the seeds of `random` say (default: the name)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    row: str = ""
    group: str = ""

    @property
    def label(self) -> str:
        if self.row:
            return self.row
        if not self.options:
            return self.name
        return self.name + ":" + ":".join(f"{k}={v}" for k, v in sorted(self.options.items()))

    @property
    def family(self) -> str:
        return self.group or self.name
