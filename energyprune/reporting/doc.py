"""The document a result dict becomes before it is written out as HTML or Markdown.

Each schema has a builder that turns its dict into a `Document` (banner, sections of paragraphs,
tables and figures); the HTML and Markdown writers only lay that out. So both formats show the
same figures with the same provenance labels, and a new schema needs one builder, not two writers.
Figures hold a function that draws them, so Markdown (which does not embed plots) never pays for
matplotlib.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from energyprune.units import format_energy, format_power, format_time
from energyprune.backends.base import Provenance

ESTIMATED_TAG = " (ESTIMATED)"


@dataclass(frozen=True)
class Banner:
    """What the reader must know before any number: measured or estimated, by what, on what."""

    provenance: str  # "measured", "estimated", or "none" when the result holds no energy figure
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A plot: `draw()` returns PNG bytes (and raises `PlotsUnavailable` without matplotlib)."""

    caption: str
    draw: Callable[[], bytes]
    estimated: bool = False


@dataclass(frozen=True)
class Code:
    """Preformatted text (a device description as JSON, a pruning record)."""

    text: str
    summary: str = ""  # HTML folds it under this line when given


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


Block = Union[str, Table, Figure, Code, Bullets]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    schema: str
    banner: Banner
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


# ---- formatting helpers shared by the builders ------------------------------------------------
def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def num(value: Any, spec: str = ".4g") -> str:
    """A plain number, or "n/a" for None / non-finite / not a number."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not is_number(value):
        return "n/a" if value is None or isinstance(value, (int, float)) else str(value)
    return format(value, spec)


def energy(value: Any) -> str:
    return format_energy(value) if is_number(value) else "n/a"


def power(value: Any) -> str:
    return format_power(value) if is_number(value) else "n/a"


def seconds(value: Any) -> str:
    return format_time(value) if is_number(value) else "n/a"


def pair(values: Any, fmt: Callable[[Any], str] = num) -> str:
    """A 95% interval [low, high] as "low .. high"."""
    if isinstance(values, (list, tuple)) and len(values) == 2 and all(is_number(v) for v in values):
        return f"{fmt(values[0])} .. {fmt(values[1])}"
    return "n/a"


def tag(provenance: Any) -> str:
    """The label every estimated figure carries, wherever it appears."""
    return ESTIMATED_TAG if str(provenance).lower() == Provenance.ESTIMATED.value else ""


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> Table:
    return Table(tuple(str(h) for h in header), tuple(tuple(str(c) for c in r) for r in rows), caption)


def key_values(data: Mapping[str, Any], caption: str = "", max_items: int = 12) -> Table:
    """Any nested dict as a two-column table of dotted keys: what the bench and the metrics blocks
    hold may grow, and a report should show new fields rather than drop them."""
    return table(("field", "value"), [(k, v) for k, v in flatten(data, max_items=max_items)], caption)


def flatten(data: Any, prefix: str = "", max_items: int = 12) -> list[tuple[str, str]]:
    if isinstance(data, Mapping):
        out: list[tuple[str, str]] = []
        for key, value in data.items():
            out += flatten(value, f"{prefix}.{key}" if prefix else str(key), max_items)
        return out or [(prefix, "{}")]
    if isinstance(data, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in data) and len(data) <= max_items:
            return [(prefix, ", ".join(num(v) if isinstance(v, (int, float)) else str(v) for v in data) or "[]")]
        if len(data) > max_items:
            return [(prefix, f"[{len(data)} items; see the JSON]")]
        out = []
        for i, value in enumerate(data):
            out += flatten(value, f"{prefix}[{i}]", max_items)
        return out
    if isinstance(data, float):
        return [(prefix, num(data))]
    return [(prefix, "n/a" if data is None else num(data) if isinstance(data, bool) else str(data))]


def pretty_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
