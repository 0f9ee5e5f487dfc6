from __future__ import annotations

import pytest

from energyprune.budget import EnergyTarget, parse_target
from energyprune.errors import UsageError


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("0.5J", "energy_j", 0.5),
    ("500mJ", "energy_j", 0.5),
    ("20 uJ", "energy_j", 2e-5),
    ("0.5 J/inference", "energy_j", 0.5),
    ("-30%", "fraction", 0.7),
    ("-12.5%", "fraction", 0.875),
    ("0.7x", "fraction", 0.7),
    ("latency<=10ms", "latency_s", 0.01),
    ("latency <= 250us", "latency_s", 0.00025),
    ("power<=150W", "power_w", 150.0),
    ("power<=1.5kW", "power_w", 1500.0),
])
def test_valid_forms(text, kind, value):
    target = parse_target(text)
    assert (target.kind, target.text) == (kind, text)
    assert target.value == pytest.approx(value, rel=1e-12)


def test_a_number_is_joules_and_a_target_passes_through():
    assert parse_target(0.25) == EnergyTarget("0.25J", "energy_j", 0.25)
    target = parse_target("-30%")
    assert parse_target(target) is target


@pytest.mark.parametrize(("text", "hint"), [
    ("30%", "needs its sign"),
    ("0.5", "ambiguous"),
    ("-0.5J", "cannot be negative"),
    ("0J", "positive"),
    ("1.2x", "not less"),
    ("1x", "not less"),
    ("-100%", "100%"),
    ("-0%", "positive"),
    ("fast please", "cannot read"),
    ("power<=0W", "positive"),
    ("latency>=10ms", "cannot read"),
    (-1.0, "positive"),
    (0, "positive"),
    (True, "not a target"),
    (None, "not a target"),
])
def test_invalid_forms_name_the_valid_ones(text, hint):
    with pytest.raises(UsageError) as error:
        parse_target(text)
    message = str(error.value)
    assert hint in message
    assert "-30%" in message and "0.5J" in message and "latency<=10ms" in message


def test_goal_ratio_and_joules():
    assert parse_target("-30%").goal_ratio(2.0) == pytest.approx(0.7)
    assert parse_target("-30%").target_j(2.0) == pytest.approx(1.4)
    assert parse_target("0.5J").goal_ratio(2.0) == pytest.approx(0.25)
    assert parse_target("latency<=10ms").target_j(2.0) is None
    assert parse_target("latency<=10ms").goal_ratio(0.04) == pytest.approx(0.25)


def test_a_target_the_original_already_meets_is_refused():
    with pytest.raises(UsageError, match=r"already costs 300 mJ per inference, at or below the target 0\.5J"):
        parse_target("0.5J").check_original(0.3, 0.01, 20.0)
    with pytest.raises(UsageError, match="already takes"):
        parse_target("latency<=10ms").check_original(1.0, 0.005, 20.0)
    with pytest.raises(UsageError, match="already draws"):
        parse_target("power<=150W").check_original(1.0, 0.01, 120.0)
    parse_target("0.5J").check_original(0.6, 0.01, 20.0)  # above the target: fine


def test_round_trip():
    target = parse_target("latency<=10ms")
    assert EnergyTarget.from_dict(target.to_dict()) == target
