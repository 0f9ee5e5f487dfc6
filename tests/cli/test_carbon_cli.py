"""CO2e and exports on the command line: --country / --region / ENERGYPRUNE_COUNTRY /
--carbon-intensity in measure, compare, prune and report; no figure without a grid; one-line
refusals before measuring; --prometheus and --emissions-csv files. The CO2e asserted is always
computed from the energy the same run printed, so nothing here depends on the machine's speed."""

from __future__ import annotations

import csv
import io
import json

import pytest

from energyprune import codecarbon_data
from energyprune.reporting.to_emissions_csv import CODECARBON_COLUMNS, COLUMNS
from tests.cli.test_cli import QUICK, run_cli, write_trace
from tests.cli.test_prune_cli import DEMO, cli, judges  # noqa: F401 - the fixture

needs_codecarbon = pytest.mark.skipif(codecarbon_data.installed() is None,
                                      reason="codecarbon (the carbon extra) is not installed")
FRANCE_G_PER_KWH = 56.039  # codecarbon 3.3.2, global_energy_mix.json, 2023


def kg(energy_j: float, g_per_kwh: float) -> float:
    return energy_j / 3.6e6 * g_per_kwh / 1000.0


@pytest.fixture
def trace(tmp_path):
    return write_trace(tmp_path / "trace.csv")


@needs_codecarbon
def test_measure_with_a_country_gives_co2e_with_its_source_and_year(trace, capsys):
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--country", "FRA", "--json", *QUICK], capsys)
    assert code == 0, err
    data = json.loads(out)
    co2 = data["co2"]
    assert co2["intensity"]["g_per_kwh"] == FRANCE_G_PER_KWH and co2["intensity"]["year"] == 2023
    assert co2["intensity"]["country_iso3"] == "FRA" and "global_energy_mix.json" in co2["intensity"]["source"]
    assert co2["per_inference_kg"] == pytest.approx(kg(data["per_inference_j"], FRANCE_G_PER_KWH), rel=1e-12)
    assert co2["per_million_inferences_kg"] == pytest.approx(1e6 * co2["per_inference_kg"], rel=1e-12)
    assert co2["provenance"] == "measured" and data["run_id"] and data["finished_at"]

    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--region", "california", *QUICK], capsys)
    assert code == 0, err
    assert "CO2e per million inferences" in out and "california" in out and "eGRID2023" in out


def test_an_explicit_intensity_needs_no_codecarbon_and_estimates_stay_estimated(capsys, monkeypatch):
    monkeypatch.setattr(codecarbon_data, "installed", lambda: None)
    code, out, err = run_cli(["measure", "--backend", "estimated", "--carbon-intensity", "400", "--json", *QUICK],
                             capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["co2"]["per_inference_kg"] == pytest.approx(kg(data["per_inference_j"], 400.0), rel=1e-12)
    assert data["co2"]["provenance"] == "estimated"
    band = data["co2"]["estimate_band_kg"]
    assert band == pytest.approx([kg(v, 400.0) for v in data["estimate_band_j"]], rel=1e-12)
    code, out, err = run_cli(["measure", "--backend", "estimated", "--carbon-intensity", "400", *QUICK], capsys)
    assert "CO2e per inference (ESTIMATED)" in out and "given by the user" in out


def test_without_a_grid_no_co2e_is_made_up_and_the_output_says_how(trace, capsys, monkeypatch):
    monkeypatch.delenv("ENERGYPRUNE_COUNTRY", raising=False)
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--json", *QUICK], capsys)
    assert code == 0 and json.loads(out)["co2"] is None
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", *QUICK], capsys)
    assert "no CO2e figure: give the grid with --country ISO3" in out and " g CO2e/kWh" not in out


@needs_codecarbon
def test_the_country_can_come_from_the_environment(trace, capsys, monkeypatch):
    monkeypatch.setenv("ENERGYPRUNE_COUNTRY", "deu")
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--json", *QUICK], capsys)
    assert code == 0, err
    assert json.loads(out)["co2"]["intensity"]["where"] == "Germany (DEU)"


@pytest.mark.parametrize("flags,words", [
    (["--carbon-intensity", "5000"], "grams per kWh"),
    (["--carbon-intensity", "300", "--country", "FRA"], "not both"),
])
def test_bad_carbon_options_fail_in_one_line_before_measuring(tmp_path, capsys, flags, words):
    # The trace does not exist: had the command measured anything it would have said so instead.
    code, out, err = run_cli(["measure", "--backend", f"replay:{tmp_path / 'absent.csv'}", *flags, *QUICK], capsys)
    assert code == 2 and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@needs_codecarbon
def test_an_unknown_country_is_refused_before_measuring(tmp_path, capsys):
    code, out, err = run_cli(["measure", "--backend", f"replay:{tmp_path / 'absent.csv'}", "--country", "XYZ",
                              *QUICK], capsys)
    assert code == 2 and "--country XYZ is not in codecarbon's global_energy_mix.json" in err


def test_without_codecarbon_the_country_flag_says_how_to_install_it(trace, capsys, monkeypatch):
    monkeypatch.setattr(codecarbon_data, "installed", lambda: None)
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--country", "FRA", *QUICK], capsys)
    assert code == 2 and "pip install 'energyprune[carbon]'" in err and len(err.strip().splitlines()) == 1


def test_compare_gives_the_co2e_b_saves_per_million_inferences(tmp_path, capsys, monkeypatch):
    (tmp_path / "pair.py").write_text(
        "import torch\n"
        "def small():\n    return torch.nn.Linear(64, 64)\n"
        "def large():\n    return torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(8)])\n")
    monkeypatch.chdir(tmp_path)
    trace = write_trace(tmp_path / "trace.csv")
    code, out, err = run_cli(["compare", "pair:large", "pair:small", "--backend", f"replay:{trace}",
                              "--carbon-intensity", "300", "--json", *QUICK], capsys)
    assert code == 0, err
    data = json.loads(out)
    a_j = data["a"]["per_inference_j"]
    saved = data["co2"]["saved_per_million_inferences_kg"]
    assert saved == pytest.approx(kg(1e6 * a_j * (1 - data["ratio_b_over_a"]), 300.0), rel=1e-12)
    low, high = data["co2"]["saved_per_million_inferences_ci95_kg"]
    assert low <= saved <= high
    assert data["a"]["co2"]["per_inference_kg"] == pytest.approx(kg(a_j, 300.0), rel=1e-12)
    (tmp_path / "c.json").write_text(out)
    code, out, err = run_cli(["report", str(tmp_path / "c.json"), "--format", "emissions-csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["label"] for r in rows] == ["pair:large", "pair:small"] and rows[0]["run_id"].endswith("-a")


def test_prune_gives_the_co2e_saved_per_million_inferences(tmp_path, judges, capsys):
    out = tmp_path / "pruned"
    code = cli(["prune", "--target", "-30%", "--criterion", "magnitude", "--out", str(out), "--carbon-intensity",
                "250", *DEMO])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "result.json").read_text())
    original_j, ratio = result["original"]["per_inference_j"], result["final"]["energy_ratio"]
    assert result["co2"]["saved_per_million_inferences_kg"] == pytest.approx(
        kg(1e6 * original_j * (1 - ratio), 250.0), rel=1e-12)
    assert "CO2e saved per million inferences" in captured.out
    assert "CO2e saved per million inferences" in (out / "report.md").read_text()
    assert "CO2e saved per million inferences" in (out / "report.html").read_text()


def test_report_adds_co2e_to_a_saved_result_in_every_format(trace, tmp_path, capsys):
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--json", *QUICK], capsys)
    saved = tmp_path / "m.json"
    saved.write_text(out)
    per_inference_j = json.loads(out)["per_inference_j"]
    for fmt in ("md", "html"):
        code, text, err = run_cli(["report", str(saved), "--format", fmt, "--carbon-intensity", "100"], capsys)
        assert code == 0 and "CO2e per million inferences" in text and "given by the user" in text
    code, text, err = run_cli(["report", str(saved), "--format", "csv", "--carbon-intensity", "100"], capsys)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert all(float(r["carbon_intensity_g_per_kwh"]) == 100.0 for r in rows)
    assert rows[0]["co2e_per_inference_kg"] and list(rows[0])[-1] == "provenance"
    code, text, err = run_cli(["report", str(saved), "--format", "csv"], capsys)
    assert list(csv.DictReader(io.StringIO(text)))[0]["co2e_per_inference_kg"] == ""  # no grid: empty, not 0
    code, text, err = run_cli(["report", str(saved), "--format", "prometheus", "--carbon-intensity", "100"], capsys)
    line = next(l for l in text.splitlines() if l.startswith("energyprune_co2e_per_inference_grams{"))
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(kg(per_inference_j, 100.0) * 1000.0, rel=1e-12)


# ---- exports ------------------------------------------------------------------------------------
def test_prometheus_file_is_written_and_replaced_by_the_next_run_only(trace, tmp_path, capsys):
    prom = tmp_path / "energy.prom"
    for _ in range(2):  # the second run replaces the first run's file without --force
        code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--prometheus", str(prom),
                                  "--carbon-intensity", "200", *QUICK], capsys)
        assert code == 0, err
    text = prom.read_text()
    assert text.startswith("# energyprune metrics")
    assert "# TYPE energyprune_energy_per_inference_joules gauge" in text
    assert 'provenance="measured"' in text and "energyprune_co2e_per_inference_grams{" in text
    assert "energyprune_energy_per_inference_ci95_low_joules{" in text
    for line in text.splitlines():
        if not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            float(value)  # every sample line ends with a number
    other = tmp_path / "other.prom"
    other.write_text("node_load1 0.5\n")
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--prometheus", str(other), *QUICK], capsys)
    assert code == 2 and "already exists" in err and other.read_text() == "node_load1 0.5\n"


def test_emissions_csv_rows_in_codecarbons_columns_are_appended(trace, tmp_path, capsys):
    path = tmp_path / "emissions.csv"
    for _ in range(2):
        code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--emissions-csv", str(path),
                                  "--carbon-intensity", "400", "--json", *QUICK], capsys)
        assert code == 0, err
    data = json.loads(out)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == 2 and tuple(rows[0]) == COLUMNS and tuple(rows[0])[:len(CODECARBON_COLUMNS)] == CODECARBON_COLUMNS
    row = rows[1]
    energy_j = data["duration_s"] * data["mean_power_w"]
    assert float(row["energy_consumed"]) == pytest.approx(energy_j / 3.6e6, rel=1e-9)  # kWh, as codecarbon
    assert float(row["emissions"]) == pytest.approx(kg(energy_j, 400.0), rel=1e-9)  # kg
    assert float(row["duration"]) == pytest.approx(data["duration_s"])
    assert row["provenance"] == "measured" and row["pue"] == "1.0" and row["codecarbon_version"] == ""
    assert row["run_id"] == data["run_id"] and row["timestamp"] == data["finished_at"]

    # A codecarbon emissions.csv keeps codecarbon's columns, so codecarbon can go on appending to it.
    theirs = tmp_path / "codecarbon.csv"
    theirs.write_text(",".join(CODECARBON_COLUMNS) + "\n")
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--emissions-csv", str(theirs), *QUICK],
                             capsys)
    assert code == 0, err
    lines = theirs.read_text().splitlines()
    assert len(lines) == 2 and len(next(csv.reader([lines[1]]))) == len(CODECARBON_COLUMNS)
    # Any other CSV is refused before measuring.
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    code, out, err = run_cli(["measure", "--backend", f"replay:{tmp_path / 'absent.csv'}", "--emissions-csv",
                              str(foreign), *QUICK], capsys)
    assert code == 2 and "other columns than codecarbon's emissions.csv" in err and foreign.read_text() == "a,b\n1,2\n"


@needs_codecarbon
def test_our_columns_are_codecarbons(tmp_path):
    import subprocess
    import sys

    script = ("import dataclasses, logging; logging.disable(logging.CRITICAL); "
              "from codecarbon.output_methods.emissions_data import EmissionsData; "
              "print(','.join(f.name for f in dataclasses.fields(EmissionsData)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert tuple(done.stdout.strip().splitlines()[-1].split(",")) == CODECARBON_COLUMNS
