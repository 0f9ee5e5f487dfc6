"""Exact physical constants and the unit conversions done at the edges of the system.

Inside energyprune every energy is in joules, every power in watts, every time in seconds and every
temperature in kelvin; vendor units (mJ, uJ, mW, degrees Celsius) are converted here, once.
"""

from __future__ import annotations

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
