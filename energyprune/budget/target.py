"""Energy targets: what "prune until it costs at most X" means, parsed from one short string.

| text | kind | value | reached when |
| --- | --- | --- | --- |
| `0.5J`, `500mJ`, `20uJ`, `0.5 J/inference` | `energy_j` | joules per inference | E0 x energy ratio <= value |
| `-30%` (30% less), `0.7x` (70% of the original) | `fraction` | 0.7 | energy ratio <= value |
| `latency<=10ms` | `latency_s` | seconds per inference | L0 x latency ratio <= value |
| `power<=150W` | `power_w` | watts while inferring | P0 x power ratio <= value |

E0, L0 and P0 come from the one measurement of the original model; every later figure is a ratio
to it taken by interleaved windows, because the device drifts more between two separate
measurements than a pruning step is worth. A bare Python number is joules per inference (the one
unit inside energyprune); a bare string such as "0.5" is refused, since "0.5" could mean joules or
a fraction and guessing wrong prunes a model to the wrong size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from energyprune.errors import UsageError

KINDS = ("energy_j", "fraction", "latency_s", "power_w")

VALID_FORMS = ("joules per inference (0.5J, 500mJ), a fraction of the original (-30% or 0.7x), "
               "latency<=10ms or power<=150W")

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_ENERGY = re.compile(rf"^{_NUMBER}\s*(kJ|J|mJ|uJ|µJ|μJ|nJ)(?:\s*/\s*inf(?:erence)?)?$")
_REDUCTION = re.compile(rf"^-\s*{_NUMBER}\s*%$")
_FACTOR = re.compile(rf"^{_NUMBER}\s*x$", re.IGNORECASE)
_LATENCY = re.compile(rf"^latency\s*<=\s*{_NUMBER}\s*(s|ms|us|µs|μs)$", re.IGNORECASE)
_POWER = re.compile(rf"^power\s*<=\s*{_NUMBER}\s*(kW|W|mW)$", re.IGNORECASE)

# Powers of ten, so that 20 uJ is 20 / 1e6 = 2e-05 exactly rather than 20 * 1e-6 = 1.9999999999999998e-05.
_JOULES = {"kJ": 3, "J": 0, "mJ": -3, "uJ": -6, "µJ": -6, "μJ": -6, "nJ": -9}
_SECONDS = {"s": 0, "ms": -3, "us": -6, "µs": -6, "μs": -6}
_WATTS = {"kw": 3, "w": 0, "mw": -3}


@dataclass(frozen=True)
class EnergyTarget:
    """A parsed target. `value` is in SI units for its kind (J, s, W), or a fraction in (0, 1)."""

    text: str
    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown target kind {self.kind!r}; known: {', '.join(KINDS)}")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise UsageError(f"target {self.text!r}: the value must be a positive number; valid forms: {VALID_FORMS}")
        if self.kind == "fraction" and not self.value < 1:
            raise UsageError(f"target {self.text!r} asks for {self.value:g}x the original, which is not less: "
                             f"valid forms: {VALID_FORMS}")

    @property
    def quantity(self) -> str:
        """Which figure the target bounds: "energy", "latency" or "power"."""
        return {"energy_j": "energy", "fraction": "energy", "latency_s": "latency", "power_w": "power"}[self.kind]

    def target_j(self, original_j: float) -> float | None:
        """Joules per inference the target allows, where it is an energy target; None otherwise."""
        if self.kind == "energy_j":
            return self.value
        if self.kind == "fraction":
            return self.value * original_j
        return None

    def goal_ratio(self, original: float) -> float:
        """The ratio to the original's figure (energy, latency or power) the target asks for."""
        if self.kind == "fraction":
            return self.value
        return self.value / original

    def check_original(self, energy_j: float, latency_s: float, power_w: float | None) -> None:
        """Refuse a target the original model already meets (nothing to prune)."""
        if self.kind == "energy_j" and energy_j <= self.value:
            raise UsageError(
                f"the original already costs {_fmt(energy_j, 'J')} per inference, at or below the target "
                f"{self.text}: nothing to prune (ask for less, e.g. -30%)")
        if self.kind == "latency_s" and latency_s <= self.value:
            raise UsageError(
                f"the original already takes {_fmt(latency_s, 's')} per inference, at or below the target "
                f"{self.text}: nothing to prune")
        if self.kind == "power_w":
            if power_w is None:
                raise UsageError(f"target {self.text}: the meter gave no mean power for the original")
            if power_w <= self.value:
                raise UsageError(
                    f"the original already draws {_fmt(power_w, 'W')} while inferring, at or below the target "
                    f"{self.text}: nothing to prune")

    def to_dict(self, original_j: float | None = None) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "value": self.value,
                "target_j": self.target_j(original_j) if original_j is not None else
                (self.value if self.kind == "energy_j" else None)}

    @classmethod
    def from_dict(cls, d: Any) -> EnergyTarget:
        try:
            return cls(str(d["text"]), str(d["kind"]), float(d["value"]))
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"not a target: {error}") from None


def parse_target(target: str | float | int | EnergyTarget) -> EnergyTarget:
    """An `EnergyTarget` from its text ("0.5J", "500mJ", "-30%", "0.7x", "latency<=10ms",
    "power<=150W") or from a number of joules per inference; UsageError naming the valid forms."""
    if isinstance(target, EnergyTarget):
        return target
    if isinstance(target, bool):
        raise UsageError(f"target {target!r} is not a target: valid forms: {VALID_FORMS}")
    if isinstance(target, (int, float)):
        if not math.isfinite(target) or target <= 0:
            raise UsageError(f"target {target!r}: joules per inference must be positive; valid forms: {VALID_FORMS}")
        return EnergyTarget(f"{target:g}J", "energy_j", float(target))
    if not isinstance(target, str):
        raise UsageError(f"target {target!r} is not a target: valid forms: {VALID_FORMS}")
    text = target.strip()
    compact = text.replace(" ", "")
    if match := _ENERGY.match(text) or _ENERGY.match(compact):
        return EnergyTarget(text, "energy_j", _scaled(_positive(text, match.group(1)), _JOULES[match.group(2)]))
    if match := _REDUCTION.match(compact):
        percent = _positive(text, match.group(1))
        if percent >= 100:
            raise UsageError(f"target {text!r} removes {percent:g}% or more of the energy, which no model does; "
                             f"valid forms: {VALID_FORMS}")
        return EnergyTarget(text, "fraction", 1.0 - percent / 100.0)
    if match := _FACTOR.match(compact):
        factor = _positive(text, match.group(1))
        if factor >= 1:
            raise UsageError(f"target {text!r} asks for {factor:g}x the original energy, which is not less "
                             f"(0.7x means 70% of it); valid forms: {VALID_FORMS}")
        return EnergyTarget(text, "fraction", factor)
    if match := _LATENCY.match(compact):
        unit = match.group(2).lower().replace("μ", "u").replace("µ", "u")
        return EnergyTarget(text, "latency_s", _scaled(_positive(text, match.group(1)), _SECONDS[unit]))
    if match := _POWER.match(compact):
        return EnergyTarget(text, "power_w", _scaled(_positive(text, match.group(1)), _WATTS[match.group(2).lower()]))
    hint = ""
    if re.fullmatch(rf"\+?{_NUMBER}\s*%", compact):
        hint = " (a percentage needs its sign: -30% means 30% less energy)"
    elif re.fullmatch(rf"[-+]?{_NUMBER}", compact):
        hint = " (a bare number is ambiguous: add J for joules or x for a fraction)"
    elif compact.startswith("-") and _ENERGY.match(compact[1:]):
        hint = " (an energy cannot be negative)"
    raise UsageError(f"cannot read the target {text!r}{hint}: write {VALID_FORMS}")


def _positive(text: str, number: str) -> float:
    value = float(number)
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"target {text!r}: the value must be positive; valid forms: {VALID_FORMS}")
    return value


def _scaled(value: float, exponent: int) -> float:
    return value * 10.0**exponent if exponent >= 0 else value / 10.0**-exponent


def _fmt(value: float, unit: str) -> str:
    from energyprune.units import format_energy, format_power, format_time

    return {"J": format_energy, "s": format_time, "W": format_power}[unit](value)
