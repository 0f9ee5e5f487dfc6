"""Exact physical constants, the unit conversions done at the edges of the system, and how a
figure in SI units is written for people.

Inside energyprune every energy is in joules, every power in watts, every time in seconds and every
temperature in kelvin; vendor units (mJ, uJ, mW, degrees Celsius) are converted here, once.
"""

from __future__ import annotations

import math

#: Boltzmann constant, exact since the 2019 SI redefinition (J/K).
BOLTZMANN_J_PER_K = 1.380649e-23
#: 0 degrees Celsius in kelvin, exact.
ZERO_CELSIUS_K = 273.15


def millijoules_to_joules(value_mj: float) -> float:
    return value_mj * 1e-3


def microjoules_to_joules(value_uj: float) -> float:
    return value_uj * 1e-6


def milliwatts_to_watts(value_mw: float) -> float:
    return value_mw * 1e-3


def celsius_to_kelvin(value_c: float) -> float:
    return value_c + ZERO_CELSIUS_K


def format_energy(value_j: float | None) -> str:
    return _si(value_j, "J")


def format_power(value_w: float | None) -> str:
    return _si(value_w, "W")


def format_time(value_s: float | None) -> str:
    return _si(value_s, "s")


def format_mass(value_kg: float | None) -> str:
    """A mass given in kilograms (CO2e), written in grams with an SI prefix: "0.35 g", "2.1 ug"."""
    return _si(None if value_kg is None else value_kg * 1000.0, "g")


def _si(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    magnitude = abs(value)
    for factor, prefix in ((1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if magnitude >= factor:
            return f"{value / factor:.4g} {prefix}{unit}"
    return f"{value:.3g} {unit}"
