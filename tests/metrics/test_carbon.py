"""CO2e from codecarbon's offline data: the same kilograms as codecarbon's own tracker arithmetic
for the same energy and place, refusals where codecarbon would silently average, and no import of
codecarbon (its import initialises NVML and adds a logging handler)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from energyprune import codecarbon_data
from energyprune.codecarbon_data import CodecarbonData, CodecarbonMissing
from energyprune.errors import UsageError
from energyprune.metrics.carbon import (
    NO_CO2_HINT,
    co2_kg,
    comparison_co2,
    given_intensity,
    lookup_intensity,
    measurement_co2,
    prune_co2,
    resolve_intensity,
)

REPO = Path(__file__).resolve().parents[2]
needs_codecarbon = pytest.mark.skipif(codecarbon_data.installed() is None,
                                      reason="codecarbon (the carbon extra) is not installed")

#: Places checked against codecarbon: (country, region).
PLACES = [("FRA", None), ("DEU", None), ("USA", None), ("GBR", None), ("IND", None), ("USA", "california"),
          ("USA", "texas"), ("CAN", "quebec"), ("CAN", "alberta"), ("CHN", "beijing"), ("SWE", "SE3"),
          ("NOR", "NO4"), ("FIN", "FI")]
ENERGY_J = 1234.5


@pytest.fixture(scope="module")
def codecarbon_kg():
    """kg CO2e by codecarbon's own API (`Emissions.get_private_infra_emissions`, what its offline
    tracker calls), computed in a child process so its import-time side effects stay there."""
    if codecarbon_data.installed() is None:
        pytest.skip("codecarbon (the carbon extra) is not installed")
    script = textwrap.dedent(f"""
        import json, logging
        logging.disable(logging.CRITICAL)
        from codecarbon.core.emissions import Emissions
        from codecarbon.core.units import Energy
        from codecarbon.external.geography import GeoMetadata
        from codecarbon.input import DataSource
        emissions = Emissions(DataSource())
        out = {{}}
        for country, region in {PLACES!r} + [("FRA", "kwh"), ("DEU", "kwh"), ("USA", "kwh")]:
            kwh = 1.0 if region == "kwh" else {ENERGY_J!r} / 3.6e6
            geo = GeoMetadata(country_iso_code=country, region=None if region == "kwh" else region)
            out[f"{{country}}/{{region}}"] = emissions.get_private_infra_emissions(Energy.from_energy(kWh=kwh), geo)
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("country,region", PLACES)
def test_co2_equals_codecarbons_for_the_same_energy_and_place(codecarbon_kg, country, region):
    ours = co2_kg(ENERGY_J, lookup_intensity(country, region))
    assert ours == pytest.approx(codecarbon_kg[f"{country}/{region}"], rel=1e-12)


def test_one_kwh_in_france_germany_and_the_usa(codecarbon_kg):
    expected = {"FRA": 0.056039, "DEU": 0.38095, "USA": 0.369473}  # kg CO2e per kWh, codecarbon 3.3.2
    for country, kg in expected.items():
        assert codecarbon_kg[f"{country}/kwh"] == pytest.approx(kg, rel=1e-9)
        assert co2_kg(3.6e6, lookup_intensity(country)) == pytest.approx(kg, rel=1e-9)


@needs_codecarbon
def test_the_intensity_names_its_source_and_year():
    france = lookup_intensity("fra")
    assert france.country_iso3 == "FRA" and france.country_name == "France" and france.year == 2023
    assert "global_energy_mix.json" in france.source and "codecarbon" in france.source
    assert "France (FRA)" in france.label and "2023" in france.label
    california = lookup_intensity(None, "CA")  # a region alone names its country; US state codes work
    assert california.country_iso3 == "USA" and california.region == "california"
    assert "eGRID2023" in california.source and california.year == 2023
    assert "CO2 only" in lookup_intensity("CHN", "guangdong").note


@needs_codecarbon
@pytest.mark.parametrize("country,region,words", [
    ("XXX", None, "not in codecarbon's global_energy_mix.json"),  # codecarbon: world average, a log line
    ("FR", None, "three-letter ISO 3166-1 code"),
    ("FRA", "paris", "regions only for USA"),
    ("USA", "narnia", "not in codecarbon's data for USA"),  # codecarbon: the national figure, silently
    (None, "narnia", "not a region codecarbon has data for"),
])
def test_unknown_places_are_refused_in_one_line(country, region, words):
    with pytest.raises(UsageError) as info:
        lookup_intensity(country, region)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_without_codecarbon_the_option_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(codecarbon_data, "installed", lambda: None)
    with pytest.raises(CodecarbonMissing) as info:
        resolve_intensity("FRA", environ={})
    assert "pip install 'energyprune[carbon]'" in str(info.value)
    # An explicit intensity needs no data at all, and no option at all makes no figure.
    assert resolve_intensity(g_per_kwh=300.0, environ={}).g_per_kwh == 300.0
    assert resolve_intensity(environ={}) is None


def fake_tree(tmp_path: Path) -> CodecarbonData:
    """codecarbon's data folder as a temporary tree: two countries."""
    (tmp_path / "private_infra").mkdir()
    (tmp_path / "private_infra" / "global_energy_mix.json").write_text(json.dumps({
        "AAA": {"carbon_intensity": 100.0, "country_name": "Aland", "year": 2022},
        "BBB": {"carbon_intensity": "lots", "country_name": "Broken", "year": 2022},
    }))
    return CodecarbonData(tmp_path, "3.3.2")


def test_env_country_explicit_intensity_and_their_precedence(tmp_path):
    data = fake_tree(tmp_path)
    env = {"ENERGYPRUNE_COUNTRY": "aaa"}
    assert resolve_intensity(environ=env, data=data).where == "Aland (AAA)"
    assert resolve_intensity(g_per_kwh=50.0, environ=env, data=data).source == "given by the user"
    with pytest.raises(UsageError, match="not both"):
        resolve_intensity("AAA", g_per_kwh=50.0, environ={}, data=data)
    with pytest.raises(UsageError, match="ENERGYPRUNE_COUNTRY ZZZ is not in"):
        resolve_intensity(environ={"ENERGYPRUNE_COUNTRY": "ZZZ"}, data=data)
    with pytest.raises(UsageError, match="not in the format energyprune knows"):
        lookup_intensity("BBB", data=data)


@pytest.mark.parametrize("value,words", [(-1.0, "cannot be negative"), (float("nan"), "must be a number"),
                                         (2500.0, "grams per kWh")])
def test_a_given_intensity_is_checked(value, words):
    with pytest.raises(UsageError, match=words):
        given_intensity(value)
    assert co2_kg(3.6e6, given_intensity(0.0)) == 0.0  # a zero-carbon contract is a figure too


def test_co2_blocks_follow_the_energy_and_its_provenance():
    intensity = given_intensity(400.0)
    per_j = 400.0 / 3.6e6 / 1000.0
    measurement = {"provenance": "estimated", "per_inference_j": 2.0, "ci95_j": [1.5, 2.5],
                   "per_inference_dynamic_j": 1.0, "per_sample_j": 0.5, "estimate_band_j": [1.2, 2.8],
                   "duration_s": 10.0, "mean_power_w": 30.0}
    block = measurement_co2(measurement, intensity)
    assert block["provenance"] == "estimated"  # a CO2e made from an ESTIMATED energy is ESTIMATED
    assert block["per_inference_kg"] == pytest.approx(2.0 * per_j)
    assert block["per_million_inferences_kg"] == pytest.approx(2.0e6 * per_j)
    assert block["per_million_inferences_ci95_kg"] == pytest.approx([1.5e6 * per_j, 2.5e6 * per_j])
    assert block["estimate_band_kg"] == pytest.approx([1.2 * per_j, 2.8 * per_j])
    assert block["measured_windows_kg"] == pytest.approx(300.0 * per_j)
    assert block["intensity"]["g_per_kwh"] == 400.0 and block["intensity"]["source"] == "given by the user"

    comparison = {"provenance": "measured", "ratio_b_over_a": 0.7, "ratio_ci95": [0.6, 0.8],
                  "a": {"per_inference_j": 2.0}, "b": {"per_inference_j": 1.4}}
    saved = comparison_co2(comparison, intensity)
    assert saved["saved_per_million_inferences_kg"] == pytest.approx(2.0e6 * 0.3 * per_j)
    assert saved["saved_per_million_inferences_ci95_kg"] == pytest.approx([2.0e6 * 0.2 * per_j, 2.0e6 * 0.4 * per_j])
    assert saved["b_per_million_inferences_kg"] == pytest.approx(1.4e6 * per_j)

    pruned = prune_co2({"provenance": "measured", "original": {"per_inference_j": 2.0},
                        "final": {"per_inference_j": 1.0, "energy_ratio": 0.5, "energy_ratio_ci95": None}}, intensity)
    assert pruned["saved_per_million_inferences_kg"] == pytest.approx(1.0e6 * per_j)
    assert pruned["saved_per_million_inferences_ci95_kg"] is None
    unknown = prune_co2({"provenance": "measured", "original": {"per_inference_j": 2.0},
                         "final": {"energy_ratio": None}}, intensity)
    assert unknown["saved_per_million_inferences_kg"] is None  # no ratio measured: no saving made up


def test_the_hint_names_every_way_to_get_a_figure():
    for words in ("--country", "ENERGYPRUNE_COUNTRY", "--region", "--carbon-intensity"):
        assert words in NO_CO2_HINT


@needs_codecarbon
def test_looking_up_never_imports_codecarbon():
    script = ("import sys; from energyprune.metrics.carbon import lookup_intensity, co2_kg; "
              "from energyprune.backends.cpu_database import lookup_cpu_tdp; "
              "lookup_intensity('FRA'); lookup_cpu_tdp('AMD EPYC 7763 64-Core Processor'); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('codecarbon', 'pandas', 'rapidfuzz')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_declared_range_is_the_tested_one():
    text = (REPO / "pyproject.toml").read_text()
    assert f'carbon = ["{codecarbon_data.CODECARBON_REQUIREMENT}"]' in text
    assert codecarbon_data.outside_tested_range("3.3.2") is None
    assert "outside the releases" in codecarbon_data.outside_tested_range("3.4.0")
    assert "outside the releases" in codecarbon_data.outside_tested_range("2.8.0")


def test_bench_co2_and_its_rendering():
    from energyprune.metrics.carbon import add_co2
    from energyprune.reporting import render

    bench = {"schema": "energyprune.bench/1", "device": {"slug": "x"}, "provenance": {"energy": "measured"},
             "models": [{"name": "demo", "measurement": {"per_inference_j": 0.02, "ci95_j": [0.019, 0.021],
                                                         "provenance": "measured"}}],
             "criteria_runs": [{"model": "demo", "criterion": "magnitude", "criterion_label": "magnitude",
                                "points": [], "final": {},
                                "prune_result": {"provenance": "measured", "original": {"per_inference_j": 0.02},
                                                 "final": {"energy_ratio": 0.7, "energy_ratio_ci95": [0.68, 0.72]}}}]}
    with_co2 = add_co2(bench, given_intensity(500.0))
    per_j = 500.0 / 3.6e6 / 1000.0
    assert with_co2["co2"]["models"][0]["per_million_inferences_kg"] == pytest.approx(0.02e6 * per_j)
    assert with_co2["co2"]["runs"][0]["saved_per_million_inferences_kg"] == pytest.approx(0.02e6 * 0.3 * per_j)
    markdown = render(with_co2, "md")
    assert "## CO2e" in markdown and "saves" in markdown and "given by the user" in markdown
    assert "no CO2e figure" in render(add_co2(bench, None), "md")
