"""CO2e of an energy figure, from codecarbon's offline grid data, the way codecarbon computes it.

    >>> from energyprune.metrics.carbon import lookup_intensity, co2_kg
    >>> france = lookup_intensity("FRA")           # codecarbon's global_energy_mix.json
    >>> co2_kg(3.6e6, france)                      # 1 kWh in France: 0.056039 kg CO2e

The intensity comes from the data files of an installed codecarbon (the `carbon` extra), read
without importing codecarbon (`energyprune.codecarbon_data`): a country's average intensity from
`global_energy_mix.json`, or for a region the file codecarbon itself uses (US states: EPA eGRID,
Canadian provinces: their generation mix, Chinese provinces: MEE/NBS factors, Nordic bidding
zones). The arithmetic is the offline tracker's: kg = kWh x g/kWh / 1000 with kWh = J / 3.6e6 and
no PUE (a PUE of 1: what the counters saw, not the building around them). Where codecarbon falls
back silently on the world average (an unknown country or region), this module refuses with one
line instead. `given_intensity` takes an intensity the user knows better (a supplier's figure).

A CO2e figure inherits the provenance of the energy it is made from: from an ESTIMATED energy it
is ESTIMATED too. The intensity is an annual average of the grid (location-based), not the
marginal intensity of the hour the model ran.

The `*_co2` functions build the `co2` block that the command line adds to a result's JSON.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from energyprune.codecarbon_data import CodecarbonData, require
from energyprune.errors import UsageError

JOULES_PER_KWH = 3.6e6
#: 1 lb/MWh in g/kWh (codecarbon's EmissionsPerKWh.LBS_MWH_TO_KG_KWH x 1000).
G_PER_KWH_PER_LB_PER_MWH = 0.45359237
#: Emission factors of fossil sources, kg CO2e/kWh, that codecarbon applies to a Canadian province's
#: generation mix (codecarbon.core.emissions, from github.com/responsibleproblemsolving/energy-usage).
#: They live in codecarbon's code, not its data files, so they are repeated here.
CANADA_FACTORS_KG_PER_KWH = {"coal": 0.995725971, "petroleum": 0.8166885263, "naturalGas": 0.7438415916}
#: Above this a "g/kWh" figure is a unit mistake: the most carbon-intensive grids are near 1,100.
MAX_G_PER_KWH = 2000.0
COUNTRY_ENV = "ENERGYPRUNE_COUNTRY"
INTENSITY_OPTIONS = "--country ISO3 (or ENERGYPRUNE_COUNTRY), --region NAME or --carbon-intensity G_PER_KWH"
#: What a result without a CO2e figure says instead (one line).
NO_CO2_HINT = ("no CO2e figure: give the grid with --country ISO3 (e.g. FRA; or set ENERGYPRUNE_COUNTRY), "
               "--region (US states, Canadian and Chinese provinces, Nordic bidding zones) or --carbon-intensity "
               "G_PER_KWH; `energyprune report RESULT.json --country ISO3` adds it to a saved result")
METHOD = ("kg CO2e = J / 3.6e6 x g CO2e/kWh / 1000, as codecarbon's offline tracker computes it (PUE 1); the "
          "intensity is the grid's annual average, not the marginal intensity of the hour")

MIX_FILE = "private_infra/global_energy_mix.json"
USA_FILE = "private_infra/2023/usa_emissions.json"
CANADA_FILE = "private_infra/2023/canada_energy_mix.json"
CHINA_FILE = "private_infra/2023/china_provincial_emissions.json"
NORDIC_FILE = "private_infra/nordic_emissions.json"
NORDIC_COUNTRIES = {"SE": "SWE", "NO": "NOR", "FI": "FIN"}
_CHINA_SUFFIX = re.compile(r"\s+(autonomous region|municipality|province|sheng|shi|zizhiqu)$")


@dataclass(frozen=True)
class CarbonIntensity:
    """Grams of CO2e per kWh of electricity, where it comes from, and for where and when."""

    g_per_kwh: float
    source: str  # the data it was read from, e.g. "codecarbon 3.3.2, global_energy_mix.json"
    year: int | None  # the year the figure describes, when the source says
    where: str  # "France (FRA)", "california, USA", "given by the user"
    country_iso3: str | None = None
    country_name: str | None = None
    region: str | None = None
    note: str = ""  # a caveat travelling with the figure ("CO2 only, not CO2e")

    @property
    def label(self) -> str:
        """One line naming the figure, its place, source and year."""
        year = f", {self.year}" if self.year is not None else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.g_per_kwh:.4g} g CO2e/kWh, {self.where} ({self.source}{year}{note})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


def co2_kg(energy_j: float, intensity: CarbonIntensity) -> float:
    """kg CO2e of `energy_j` joules drawn from the grid `intensity` describes."""
    return energy_j / JOULES_PER_KWH * intensity.g_per_kwh / 1000.0


def given_intensity(g_per_kwh: float, option: str = "--carbon-intensity") -> CarbonIntensity:
    """An intensity the user gives (a supplier's or an hourly figure), checked for a unit mistake."""
    if isinstance(g_per_kwh, bool) or not isinstance(g_per_kwh, (int, float)) or not math.isfinite(g_per_kwh):
        raise UsageError(f"{option} must be a number of g CO2e per kWh, not {g_per_kwh!r}")
    if g_per_kwh < 0:
        raise UsageError(f"{option} cannot be negative (got {g_per_kwh:g} g/kWh)")
    if g_per_kwh > MAX_G_PER_KWH:
        raise UsageError(f"{option} {g_per_kwh:g} g CO2e/kWh is above any grid's (coal is about 1,000): the figure "
                         "is in grams per kWh (0.4 kg/kWh is 400)")
    return CarbonIntensity(float(g_per_kwh), "given by the user", None, "given by the user")


def _number(value: Any, data: CodecarbonData, relative: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise data.format_error(relative, f"{what} is {value!r}, not a number")
    return float(value)


def _year(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _region_key(region: str) -> str:
    return " ".join(region.replace("_", " ").lower().split())


def _country_mix(data: CodecarbonData) -> Mapping[str, Any]:
    mix = data.read_json(MIX_FILE)
    if not isinstance(mix, Mapping):
        raise data.format_error(MIX_FILE, "not an object of countries")
    return mix


def _country(iso3: str, data: CodecarbonData, option: str) -> CarbonIntensity:
    mix = _country_mix(data)
    row = mix.get(iso3)
    if not isinstance(row, Mapping):
        raise UsageError(f"{option} {iso3} is not in codecarbon's {MIX_FILE.rsplit('/', 1)[1]} ({len(mix)} countries "
                         "by three-letter ISO 3166-1 code, e.g. FRA, DEU, USA); codecarbon would use the world "
                         "average there without saying so: check the code, or give --carbon-intensity G_PER_KWH")
    value = _number(row.get("carbon_intensity"), data, MIX_FILE, f"{iso3}'s carbon_intensity")
    name = str(row.get("country_name") or iso3)
    return CarbonIntensity(value, f"codecarbon {data.version}, global_energy_mix.json", _year(row.get("year")),
                           f"{name} ({iso3})", iso3, name)


def _usa(region: str, data: CodecarbonData, name: str) -> CarbonIntensity | None:
    states = data.read_json(USA_FILE)
    key = _region_key(region)
    by_code = {str(v.get("regionCode", "")).lower(): k for k, v in states.items()
               if isinstance(v, Mapping) and not k.startswith("_")}
    key = key if key in states and not key.startswith("_") else by_code.get(key, "")
    if not key:
        return None
    value = _number(states[key].get("emissions"), data, USA_FILE, f"{key}'s emissions") * G_PER_KWH_PER_LB_PER_MWH
    source = states.get("_source") if isinstance(states.get("_source"), Mapping) else {}
    origin = str(source.get("name") or "EPA eGRID").split(",")[0]
    return CarbonIntensity(value, f"{origin} via codecarbon {data.version}, usa_emissions.json", _year(source.get("year")),
                           f"{key}, {name} (USA)", "USA", name, key)


def _canada(region: str, data: CodecarbonData, name: str) -> CarbonIntensity | None:
    provinces = data.read_json(CANADA_FILE)
    key = _region_key(region)
    mix = provinces.get(key) if isinstance(provinces, Mapping) else None
    if not isinstance(mix, Mapping):
        return None
    total = _number(mix.get("total"), data, CANADA_FILE, f"{key}'s total")
    kg = sum(_number(mix.get(source, 0.0), data, CANADA_FILE, f"{key}'s {source}") / total * factor
             for source, factor in CANADA_FACTORS_KG_PER_KWH.items()) if total > 0 else 0.0
    return CarbonIntensity(kg * 1000.0, f"codecarbon {data.version}, canada_energy_mix.json (generation mix x "
                           "codecarbon's coal, oil and gas factors)", int(CANADA_FILE.split("/")[1]), f"{key}, {name} (CAN)", "CAN", name, key)


def _china(region: str, data: CodecarbonData, name: str) -> CarbonIntensity | None:
    table = data.read_json(CHINA_FILE)
    wanted = _CHINA_SUFFIX.sub("", _region_key(region))
    for province in (table.get("data") or {}).values():
        if isinstance(province, Mapping) and wanted in (province.get("names") or []):
            value = _number(province.get("emission_factor"), data, CHINA_FILE, f"{wanted}'s emission_factor")
            return CarbonIntensity(value, f"MEE/NBS provincial factors via codecarbon {data.version}, "
                                   "china_provincial_emissions.json", _year(province.get("year")),
                                   f"{province.get('description') or wanted}, {name} (CHN)", "CHN", name, wanted,
                                   note="CO2 only, not CO2e (the official Chinese factors)")
    return None


def _nordic(region: str, iso3: str, data: CodecarbonData, name: str) -> CarbonIntensity | None:
    zones = (data.read_json(NORDIC_FILE).get("data") or {})
    zone = region.strip().upper()
    row = zones.get(zone)
    if not isinstance(row, Mapping) or NORDIC_COUNTRIES.get(zone[:2]) != iso3:
        return None
    value = _number(row.get("emission_factor"), data, NORDIC_FILE, f"{zone}'s emission_factor")
    return CarbonIntensity(value, f"codecarbon {data.version}, nordic_emissions.json", _year(row.get("year")),
                           f"bidding zone {zone}, {name} ({iso3})", iso3, name, zone)


REGIONAL = {"USA": "US states (california, new york, ... or their two-letter codes)",
            "CAN": "Canadian provinces (quebec, ontario, ...)",
            "CHN": "Chinese provinces (beijing, guangdong, ...)",
            "SWE": "bidding zones SE1-SE4", "NOR": "bidding zones NO1-NO5", "FIN": "bidding zone FI"}


def _region(iso3: str, region: str, data: CodecarbonData, option: str) -> CarbonIntensity | None:
    name = str((_country_mix(data).get(iso3) or {}).get("country_name") or iso3)
    if iso3 == "USA":
        return _usa(region, data, name)
    if iso3 == "CAN":
        return _canada(region, data, name)
    if iso3 == "CHN":
        return _china(region, data, name)
    if iso3 in NORDIC_COUNTRIES.values():
        return _nordic(region, iso3, data, name)
    raise UsageError(f"--region: codecarbon's data has regions only for {', '.join(REGIONAL)}, not {iso3}: drop "
                     f"--region to use {iso3}'s national figure")


def lookup_intensity(country: str | None, region: str | None = None, *, data: CodecarbonData | None = None,
                     option: str = "--country") -> CarbonIntensity:
    """The intensity of a country's grid (ISO 3166-1 alpha-3, e.g. "FRA"), or of a region of it
    (a US state, a Canadian or Chinese province, a Nordic bidding zone); a region alone is enough
    when only one country has it. An unknown code or region is refused, never averaged."""
    data = require(option if country else "--region", data)
    if country is not None:
        iso3 = country.strip().upper()
        if not re.fullmatch(r"[A-Z]{3}", iso3):
            raise UsageError(f"{option} takes a three-letter ISO 3166-1 code such as FRA, DEU or USA, not {country!r}")
    else:
        iso3 = ""
    if region is None or not region.strip():
        if not iso3:
            raise UsageError(f"no country given: {INTENSITY_OPTIONS}")
        return _country(iso3, data, option)
    if iso3:
        if iso3 not in _country_mix(data):
            _country(iso3, data, option)  # raises: the code is unknown
        found = _region(iso3, region, data, option)
        if found is None:
            raise UsageError(f"--region {region!r} is not in codecarbon's data for {iso3} ({REGIONAL.get(iso3, '')}); "
                             "codecarbon would use the national figure without saying so: check the name, or drop "
                             "--region")
        return found
    matches = [m for m in (_region(code, region, data, option) for code in REGIONAL) if m is not None]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"--region {region!r} is not a region codecarbon has data for ({'; '.join(REGIONAL.values())}): "
                         "check the name, or give --country ISO3")
    raise UsageError(f"--region {region!r} names a region in {', '.join(m.country_iso3 or '?' for m in matches)}: "
                     "add --country ISO3")


def resolve_intensity(country: str | None = None, region: str | None = None, g_per_kwh: float | None = None,
                      environ: Mapping[str, str] | None = None, *,
                      data: CodecarbonData | None = None) -> CarbonIntensity | None:
    """The intensity the options ask for: `--carbon-intensity`, else `--country` / `--region`, else
    the country in ENERGYPRUNE_COUNTRY; None when none of them is given (no figure is made up)."""
    environ = os.environ if environ is None else environ
    if g_per_kwh is not None:
        if country or region:
            raise UsageError("--carbon-intensity is the intensity itself: give it, or --country/--region, not both")
        return given_intensity(g_per_kwh)
    if country or region:
        return lookup_intensity(country, region, data=data)
    from_env = (environ.get(COUNTRY_ENV) or "").strip()
    if from_env:
        return lookup_intensity(from_env, data=data, option=COUNTRY_ENV)
    return None


# ---- the `co2` block of a result's JSON -------------------------------------------------------
def _kg(energy_j: Any, intensity: CarbonIntensity, scale: float = 1.0) -> float | None:
    if isinstance(energy_j, bool) or not isinstance(energy_j, (int, float)) or not math.isfinite(energy_j):
        return None
    return co2_kg(float(energy_j) * scale, intensity)


def _pair(values: Any, intensity: CarbonIntensity, scale: float = 1.0) -> list[float | None] | None:
    if isinstance(values, (list, tuple)) and len(values) == 2:
        return [_kg(v, intensity, scale) for v in values]
    return None


def _header(intensity: CarbonIntensity, provenance: Any) -> dict[str, Any]:
    return {"intensity": intensity.to_dict(), "provenance": str(provenance or "unknown"), "method": METHOD}


def measurement_co2(result: Mapping[str, Any], intensity: CarbonIntensity) -> dict[str, Any]:
    """The `co2` block of a measurement dict (`Measurement.to_dict()` or its saved JSON)."""
    million = 1e6
    duration_s, mean_w = result.get("duration_s"), result.get("mean_power_w")
    windows_j = duration_s * mean_w if all(isinstance(v, (int, float)) for v in (duration_s, mean_w)) else None
    return {
        **_header(intensity, result.get("provenance")),
        "per_inference_kg": _kg(result.get("per_inference_j"), intensity),
        "per_inference_ci95_kg": _pair(result.get("ci95_j"), intensity),
        "per_inference_dynamic_kg": _kg(result.get("per_inference_dynamic_j"), intensity),
        "per_sample_kg": _kg(result.get("per_sample_j"), intensity),
        "per_million_inferences_kg": _kg(result.get("per_inference_j"), intensity, million),
        "per_million_inferences_ci95_kg": _pair(result.get("ci95_j"), intensity, million),
        "estimate_band_kg": _pair(result.get("estimate_band_j"), intensity),
        "measured_windows_kg": _kg(windows_j, intensity),
    }


def _saving(original_j: Any, ratio: Any, ratio_ci95: Any, intensity: CarbonIntensity) -> dict[str, Any]:
    """CO2e saved per million inferences: the original's J per inference x (1 - the energy ratio)."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (original_j, ratio))
    saved = _kg(original_j * (1.0 - ratio), intensity, 1e6) if ok else None
    interval = None
    if ok and isinstance(ratio_ci95, (list, tuple)) and len(ratio_ci95) == 2 and None not in ratio_ci95:
        low, high = ratio_ci95
        interval = [_kg(original_j * (1.0 - high), intensity, 1e6), _kg(original_j * (1.0 - low), intensity, 1e6)]
    return {"saved_per_million_inferences_kg": saved, "saved_per_million_inferences_ci95_kg": interval,
            "saving_basis": "the original's median J per inference x (1 - the interleaved energy ratio); the "
                            "interval is the ratio's 95% interval (the original's own interval is not added)"}


def comparison_co2(result: Mapping[str, Any], intensity: CarbonIntensity) -> dict[str, Any]:
    """The `co2` block of a comparison dict: each model per million inferences, and what B saves."""
    a, b = result.get("a") or {}, result.get("b") or {}
    return {
        **_header(intensity, result.get("provenance")),
        "a_per_million_inferences_kg": _kg(a.get("per_inference_j"), intensity, 1e6),
        "b_per_million_inferences_kg": _kg(b.get("per_inference_j"), intensity, 1e6),
        **_saving(a.get("per_inference_j"), result.get("ratio_b_over_a"), result.get("ratio_ci95"), intensity),
    }


def prune_co2(result: Mapping[str, Any], intensity: CarbonIntensity) -> dict[str, Any]:
    """The `co2` block of a prune result: the original and the pruned model per million
    inferences, and the CO2e the pruning saves per million inferences."""
    original, final = result.get("original") or {}, result.get("final") or {}
    return {
        **_header(intensity, result.get("provenance")),
        "original_per_million_inferences_kg": _kg(original.get("per_inference_j"), intensity, 1e6),
        "final_per_million_inferences_kg": _kg(final.get("per_inference_j"), intensity, 1e6),
        **_saving(original.get("per_inference_j"), final.get("energy_ratio"), final.get("energy_ratio_ci95"),
                  intensity),
    }


def bench_co2(bench: Mapping[str, Any], intensity: CarbonIntensity) -> dict[str, Any]:
    """The `co2` block of a bench result: each reference model per million inferences, and what
    each criterion's pruned model saves per million inferences."""
    models = []
    for model in bench.get("models") or []:
        measurement = model.get("measurement") or {}
        models.append({"name": model.get("name"), "provenance": measurement.get("provenance"),
                       "per_inference_kg": _kg(measurement.get("per_inference_j"), intensity),
                       "per_million_inferences_kg": _kg(measurement.get("per_inference_j"), intensity, 1e6),
                       "per_million_inferences_ci95_kg": _pair(measurement.get("ci95_j"), intensity, 1e6)})
    runs = []
    for run in bench.get("criteria_runs") or []:
        result = run.get("prune_result") or {}
        block = prune_co2(result, intensity) if result else {}
        runs.append({"model": run.get("model"), "criterion_label": run.get("criterion_label") or run.get("criterion"),
                     "provenance": result.get("provenance"),
                     "saved_per_million_inferences_kg": block.get("saved_per_million_inferences_kg"),
                     "saved_per_million_inferences_ci95_kg": block.get("saved_per_million_inferences_ci95_kg")})
    provenance = (bench.get("provenance") or {}).get("energy") if isinstance(bench.get("provenance"), Mapping) else None
    return {**_header(intensity, provenance), "models": models, "runs": runs,
            "saving_basis": "the original's median J per inference x (1 - the final interleaved energy ratio)"}


def add_co2(result: Mapping[str, Any], intensity: CarbonIntensity | None) -> dict[str, Any]:
    """A copy of a result dict with its `co2` blocks: on the result, and on the measurements it
    holds (a comparison's A and B, a prune result's original). With no intensity the result gets
    `"co2": null` (the renderings then say how to get one) and nothing is made up."""
    out = dict(result)
    schema = str(result.get("schema"))
    if intensity is None:
        out["co2"] = None
        return out
    if schema == "energyprune.comparison/1":
        out["a"] = {**result["a"], "co2": measurement_co2(result["a"], intensity)}
        out["b"] = {**result["b"], "co2": measurement_co2(result["b"], intensity)}
        out["co2"] = comparison_co2(out, intensity)
    elif schema == "energyprune.prune_result/1":
        original = dict(result.get("original") or {})
        if isinstance(original.get("measurement"), Mapping):
            original["measurement"] = {**original["measurement"],
                                       "co2": measurement_co2(original["measurement"], intensity)}
        out["original"] = original
        out["co2"] = prune_co2(out, intensity)
    elif schema == "energyprune.bench/1":
        out["co2"] = bench_co2(out, intensity)
    elif schema == "energyprune.measurement/1":
        out["co2"] = measurement_co2(result, intensity)
    else:
        raise UsageError(f"a result of schema {schema} holds no energy figure to give a CO2e for")
    return out
