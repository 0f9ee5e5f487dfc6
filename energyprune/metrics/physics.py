"""One measured energy per inference against the physical bounds: Landauer and the hardware floor.

:func:`physics_summary` takes a meter result for ``model(inputs)`` (one call = one inference = one
batch) and puts its joules next to

- the **Landauer bound** E_L = N_bits · k_B · T · ln 2 with both bit counts of
  :mod:`energyprune.metrics.landauer` (operational: one accumulator word per multiply-accumulate;
  informational: the ON/OFF entropy of the activations), reported as "times above Landauer"
  E / E_L and its log10. T is the caller's ``temperature_k`` when given, else the mean of the
  device temperatures the meter recorded with its windows (a GPU's sensor), else 300 K; the source
  is always stated;
- the **hardware floor** FLOPs × the device's best measured J/FLOP
  (:mod:`energyprune.metrics.hardware_floor`), when a floor is given.

Everything is returned as a JSON-able dict in which every number carries its provenance and the
assumptions behind it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from energyprune.errors import UsageError
from energyprune.measure.results import Measurement
from energyprune.torch_io import model_device
from energyprune.metrics.flops import count_flops, fused_kernels_visible
from energyprune.metrics.hardware_floor import FloorResult, hardware_floor_ratio
from energyprune.metrics.landauer import (
    informational_bound,
    landauer_j_per_bit,
    operational_bound,
    temperature_of,
)
from energyprune.torch_io import Inputs

SCHEMA = "energyprune.physics/1"

__all__ = ["SCHEMA", "finite_or_none", "measurement_temperature", "physics_summary"]


def finite_or_none(value: Any) -> Any:
    """The same structure with every infinite or NaN float replaced by None: strict JSON has no
    Infinity, and an undefined ratio must read as "no value", never as a number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def measurement_temperature(measurement: Measurement) -> tuple[float, str]:
    """(T in kelvin, its source) from the device states of the measurement's windows, else 300 K."""
    readings = [s.temperature_c for w in measurement.windows for s in w.states if s.temperature_c is not None]
    temperature_k, source = temperature_of(readings)
    if readings:
        domains = sorted({s.domain for w in measurement.windows for s in w.states if s.temperature_c is not None})
        source += f": {len(readings)} reading(s) of {', '.join(domains)}"
    return temperature_k, source


def physics_summary(
    model: nn.Module,
    inputs: Inputs,
    measurement: Measurement,
    *,
    floor: FloorResult | None = None,
    temperature_k: float | None = None,
    accumulator_bits: int = 32,
) -> dict[str, Any]:
    """The measured J per inference of ``model(inputs)`` against Landauer and the hardware floor.

    `measurement` must be of this very call (same model and inputs): the FLOPs and bit counts
    are taken on one call of ``model(inputs)``, and the energy is the meter's median per call."""
    if temperature_k is not None:
        if not (isinstance(temperature_k, (int, float)) and math.isfinite(temperature_k) and temperature_k > 0):
            raise UsageError(f"temperature_k must be a positive number of kelvin, got {temperature_k!r}")
        temperature, source = float(temperature_k), "given by the caller"
    else:
        temperature, source = measurement_temperature(measurement)
    energy_j = measurement.per_inference_j
    provenance = measurement.provenance.value
    with fused_kernels_visible():
        flops = count_flops(model, inputs)
        operational = operational_bound(model, inputs, accumulator_bits=accumulator_bits,
                                        temperature_k=temperature, temperature_source=source)
        informational = informational_bound(model, inputs, temperature_k=temperature, temperature_source=source)
    energy_assumptions = sorted({f"[{d.name}] {a}" for d in measurement.domains for a in d.assumptions})

    def landauer(bound: Any) -> dict[str, Any]:
        data = bound.to_dict(energy_j)
        data["provenance"] = (
            f"bound: computed (k_B exact, T {source}); measured_j: {provenance} ({', '.join(measurement.backends)})")
        if bound.n_bits <= 0:
            data["note"] = "no bits counted (no MAC, or no activation module seen): the ratio is undefined"
        return data

    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "label": measurement.label,
        "energy": {
            "per_inference_j": energy_j,
            "per_inference_dynamic_j": measurement.per_inference_dynamic_j,
            "ci95_j": list(measurement.ci95_j),
            "provenance": provenance,
            "backends": list(measurement.backends),
            "batch_size": measurement.batch_size,
            "what": "median over the meter's windows of the energy of one call model(inputs) (one batch), "
                    "idle power included; per_inference_dynamic_j is the same above idle",
            "assumptions": energy_assumptions,
        },
        "flops": {
            "value": flops,
            "macs": flops // 2,
            "source": "torch.utils.flop_counter.FlopCounterMode on one call (2 FLOPs per multiply-accumulate; "
                      "elementwise work not counted), with PyTorch's fused transformer fast path off while "
                      "counting so its matmuls are seen (the energy was measured with it on); attention kernels "
                      "FlopCounterMode has no formula for (the CPU flash-attention op of PyTorch 2.13) are not "
                      "counted, so on CPU the figure is a lower bound",
        },
        "temperature": {"temperature_k": temperature, "source": source,
                        "j_per_bit": landauer_j_per_bit(temperature)},
        "landauer": {
            "operational": landauer(operational),
            "informational": landauer(informational),
        },
        "hardware_floor": None,
        "assumptions": [
            "Landauer: E_L = N_bits * k_B * T * ln 2, the least energy to erase N_bits bits at temperature T; "
            "what a real inference erases is unknown, so two bit counts are given with their assumption",
            "the energy compared is the total per inference (idle included), as a bill sees it",
        ],
    }
    if floor is not None:
        device = model_device(model)
        if torch.device(floor.device).type != device.type:
            raise UsageError(f"the hardware floor was measured on {floor.device} ({floor.device_name}) but the "
                             f"model runs on {device}: measure the floor of {device.type}")
        summary["hardware_floor"] = hardware_floor_ratio(energy_j, flops, floor, energy_provenance=provenance)
    else:
        summary["hardware_floor_note"] = "no hardware floor was given (measure one with energyprune.metrics.hardware_floor)"
    return finite_or_none(summary)
