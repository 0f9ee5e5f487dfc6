from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from energyprune.metrics.flops import count_flops, count_macs
from energyprune.metrics.landauer import (
    activation_entropy_bits,
    informational_bound,
    landauer_j_per_bit,
    operational_bound,
    temperature_of,
)


def test_landauer_at_300_kelvin_is_2_87e_21_joules_per_bit():
    assert landauer_j_per_bit(300.0) == pytest.approx(2.8710e-21, rel=1e-4)
    assert landauer_j_per_bit(600.0) == pytest.approx(2 * landauer_j_per_bit(300.0))
    with pytest.raises(ValueError):
        landauer_j_per_bit(0.0)


def test_flops_of_a_linear_layer_are_two_per_mac():
    model = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64)
    assert count_macs(model, x) == 8 * 64 * 32
    assert count_flops(model, x) == 2 * 8 * 64 * 32


def test_operational_bound_counts_accumulator_bits_per_mac():
    model = nn.Linear(10, 10, bias=False)
    bound = operational_bound(model, torch.randn(1, 10), accumulator_bits=32)
    assert bound.n_bits == 100 * 32
    assert bound.energy_j == pytest.approx(3200 * landauer_j_per_bit(300.0))
    assert bound.times_above(1.0) == pytest.approx(1.0 / bound.energy_j)
    assert bound.log10_times_above(1.0) == pytest.approx(math.log10(1.0 / bound.energy_j))
    assert "MAC" in bound.bit_assumption and bound.to_dict(1.0)["times_above"] > 1e15


def test_informational_bits_are_binary_entropy_of_activation_states():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    x = torch.tensor([[1.0, -1.0, 2.0, -2.0]])  # half positive: 1 bit per element
    assert activation_entropy_bits(model, x) == pytest.approx(4.0)
    all_positive = torch.ones(1, 4)
    assert activation_entropy_bits(model, all_positive) == 0.0
    bound = informational_bound(model, x)
    assert bound.n_bits == pytest.approx(4.0) and bound.bit_count == "informational"


def test_temperature_comes_from_the_sensor_or_is_stated():
    kelvin, source = temperature_of([52.0, 54.0])
    assert kelvin == pytest.approx(326.15) and "sensor" in source
    kelvin, source = temperature_of([])
    assert kelvin == 300.0 and "assumed" in source


def test_flops_see_inside_the_fused_transformer_fast_path_and_drop_with_a_block():
    from energyprune.models.demo import build_demo_model
    from energyprune.pruning import remove_units, units_for

    model = build_demo_model().eval()
    x = model.example_inputs(1, 32)
    full = count_flops(model, x)
    pruned, _ = remove_units(model, units_for(model, "block")[:1])
    # Every block is the same size: removing one of four takes a share of the block FLOPs away.
    assert count_flops(pruned, x) < full
    assert torch.backends.mha.get_fastpath_enabled()  # restored after counting
