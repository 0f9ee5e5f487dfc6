"""Landauer's bound: the least energy any computer spends to erase one bit, k_B·T·ln 2.

How many bits one inference erases is an assumption, so two counts are offered and the one used
always travels with the figure (DESIGN.md §5):

- operational: one accumulator word overwritten per multiply-accumulate (MACs from
  `FlopCounterMode` × the accumulator width in bits, 32 by default: fp32 accumulation, as in
  tensor-core matmuls of fp16/bf16 and in fp32 CPU kernels);
- informational: the entropy, in bits, of the ON/OFF states of the nonlinear activations in one
  inference (arXiv 2503.09980 places the unavoidable cost in the nonlinearities): for each
  activation module, its number of output elements × the binary entropy of the fraction of them
  that are positive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from energyprune.metrics.flops import count_macs
from energyprune.torch_io import call_model, Inputs
from energyprune.units import BOLTZMANN_J_PER_K, celsius_to_kelvin

DEFAULT_TEMPERATURE_K = 300.0
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.ReLU6, nn.Hardswish)


def landauer_j_per_bit(temperature_k: float = DEFAULT_TEMPERATURE_K) -> float:
    if not temperature_k > 0:
        raise ValueError(f"a temperature must be positive, got {temperature_k} K")
    return BOLTZMANN_J_PER_K * temperature_k * math.log(2)


@dataclass(frozen=True)
class LandauerBound:
    n_bits: float
    bit_count: str  # "operational" or "informational"
    bit_assumption: str
    temperature_k: float
    temperature_source: str

    @property
    def energy_j(self) -> float:
        return self.n_bits * landauer_j_per_bit(self.temperature_k)

    def times_above(self, measured_j: float) -> float:
        """How many times the bound a measured energy is (E / E_L)."""
        return measured_j / self.energy_j if self.energy_j > 0 else math.inf

    def log10_times_above(self, measured_j: float) -> float:
        ratio = self.times_above(measured_j)
        return math.log10(ratio) if 0 < ratio < math.inf else math.nan

    def to_dict(self, measured_j: float | None = None) -> dict[str, Any]:
        data = asdict(self) | {"energy_j": self.energy_j, "j_per_bit": landauer_j_per_bit(self.temperature_k)}
        if measured_j is not None:
            data |= {"measured_j": measured_j, "times_above": self.times_above(measured_j),
                     "log10_times_above": self.log10_times_above(measured_j)}
        return data


def temperature_of(device_temperatures_c: list[float] | None) -> tuple[float, str]:
    """The temperature to use: the mean of the device's sensor readings, else 300 K (stated)."""
    readings = [t for t in (device_temperatures_c or []) if t is not None]
    if readings:
        return celsius_to_kelvin(sum(readings) / len(readings)), "device sensor (mean over windows)"
    return DEFAULT_TEMPERATURE_K, "assumed 300 K (no temperature sensor reading)"


def operational_bound(model: nn.Module, inputs: Inputs, *, accumulator_bits: int = 32,
                      temperature_k: float = DEFAULT_TEMPERATURE_K,
                      temperature_source: str = "assumed 300 K") -> LandauerBound:
    macs = count_macs(model, inputs)
    return LandauerBound(
        n_bits=float(macs * accumulator_bits), bit_count="operational",
        bit_assumption=f"one {accumulator_bits}-bit accumulator word overwritten per multiply-accumulate "
                       f"({macs} MACs counted by torch FlopCounterMode)",
        temperature_k=temperature_k, temperature_source=temperature_source)


def activation_entropy_bits(model: nn.Module, inputs: Inputs) -> float:
    """Bits of ON/OFF state in the nonlinear activations of one call (see the module note)."""
    totals: list[float] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        tensor = output[0] if isinstance(output, tuple) else output
        if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
            return
        p = float((tensor > 0).float().mean())
        h = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        totals.append(tensor.numel() * h)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ACTIVATIONS)]
    try:
        with torch.inference_mode():
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return float(sum(totals))


def informational_bound(model: nn.Module, inputs: Inputs, *, temperature_k: float = DEFAULT_TEMPERATURE_K,
                        temperature_source: str = "assumed 300 K") -> LandauerBound:
    bits = activation_entropy_bits(model, inputs)
    return LandauerBound(
        n_bits=bits, bit_count="informational",
        bit_assumption="binary entropy of the ON/OFF state of every output element of the activation "
                       "modules (nn.ReLU, nn.GELU, ...) in one call; functional activations are not seen",
        temperature_k=temperature_k, temperature_source=temperature_source)
