"""`energyprune report` and energyprune.reporting: every schema in Markdown, HTML and CSV.

Measurement, comparison and scores fixtures come from the real code (estimated backend, tiny
models); prune_result and bench fixtures are hand-written dicts following the agreed schemas,
labelled FIXTURE so that nobody mistakes their numbers for results.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from energyprune.errors import EnergyPruneError
from energyprune.cli.report import add_parser as add_report_parser
from energyprune.cli.report import run as run_report
from energyprune.reporting import (
    SCHEMAS,
    ResultFileError,
    document,
    load_result,
    pareto_front,
    plots_available,
    render,
)
from energyprune.reporting.plots import INSTALL_HINT

PNG = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.skipif(not plots_available(), reason="matplotlib is not installed")


# ---- fixtures ------------------------------------------------------------------------------------
def _config() -> Any:
    from energyprune.measure.meter import MeterConfig

    return MeterConfig(window_s=0.05, repeats=3, precision=0, idle_s=0.05, min_warmup_s=0, max_warmup_s=0.2)


@pytest.fixture(scope="module")
def measurement() -> dict[str, Any]:
    from energyprune.measure.api import measure

    torch.manual_seed(0)
    data = measure(nn.Linear(16, 16), torch.randn(4, 16), backend="estimated", config=_config(),
                   label="linear-16").to_dict()
    data["model"] = "nn.Linear(16, 16)"
    return data


@pytest.fixture(scope="module")
def comparison() -> dict[str, Any]:
    from energyprune.measure.api import compare

    torch.manual_seed(0)
    return compare(nn.Linear(32, 32), nn.Linear(32, 8), torch.randn(4, 32), inputs_b=torch.randn(4, 32),
                   backend="estimated", config=_config(), labels=("wide", "narrow")).to_dict()


@pytest.fixture(scope="module")
def scores() -> dict[str, Any]:
    from energyprune.models.demo import DemoTransformer
    from energyprune.pruning.scores import score_model

    torch.manual_seed(0)
    model = DemoTransformer(vocab_size=50, d_model=16, n_heads=2, n_layers=4, d_ff=32, max_seq_len=16).eval()
    calibration = [model.example_inputs(2, 8, seed=i) for i in range(2)]
    result = score_model(model, "entropy-block", calibration, None, "knn", stage="all")
    result["model"] = "tiny demo transformer"
    result["calibration"] = "random inputs, 2 batches of 2"
    return result


@pytest.fixture(scope="module")
def prune_result(measurement: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
    """FIXTURE: a hand-written energyprune.prune_result/1 (the numbers are made up, the original
    measurement and the final comparison are real estimated ones)."""
    original_j = measurement["per_inference_j"]

    def step(index: int, path: str, ratio: float, fidelity: float, accepted: bool, note: str) -> dict[str, Any]:
        return {"index": index, "removed": [{"kind": "block", "path": path, "index": int(path[-1])}],
                "n_removed_total": index if accepted else index - 1, "n_params": 3_800_000 - 400_000 * index,
                "flops": 2_000_000 - 300_000 * index, "step_ratio": 0.9, "step_ratio_ci95": [0.87, 0.93],
                "energy_ratio": ratio, "energy_ratio_ci95": [ratio - 0.02, ratio + 0.02],
                "per_inference_j": ratio * original_j, "latency_s": 0.002 * ratio, "quality": None,
                "fidelity": fidelity, "accepted": accepted, "note": note, "duration_s": 4.5}

    return {
        "schema": "energyprune.prune_result/1", "model": "FIXTURE demo <model>", "criterion": "cosine-block",
        "unit_kind": "block",
        "target": {"text": "-30%", "kind": "fraction", "value": -0.3, "target_j": 0.7 * original_j},
        "reached": True, "stop_reason": "target-reached", "message": "FIXTURE: reached -30% in 3 steps",
        "provenance": "estimated",
        "original": {"per_inference_j": original_j, "ci95_j": measurement["ci95_j"], "latency_s": 0.002,
                     "mean_power_w": measurement["mean_power_w"], "n_params": 3_800_000, "flops": 2_000_000,
                     "quality": None, "measurement": measurement},
        "steps": [step(1, "layers.2", 0.81, 0.97, True, "kept"),
                  step(2, "layers.1", 0.74, 0.52, False, "FIXTURE rejected: fidelity fell below 0.6"),
                  step(3, "layers.3", 0.68, 0.91, True, "target reached")],
        "final": {"energy_ratio": 0.68, "energy_ratio_ci95": [0.66, 0.70], "per_inference_j": 0.68 * original_j,
                  "n_params": 3_000_000, "flops": 1_400_000, "quality": None, "comparison": comparison},
        "record": {"removed": ["layers.2", "layers.3"]}, "duration_s": 13.5,
        "warnings": ["FIXTURE warning: <b>not bold</b>"],
        "metrics": {"efficiency": {"relative": 1.9, "definition": "fidelity x compression / energy"}},
    }


def _bench_run(model: str, criterion: str, points: list[tuple[float, float, float]]) -> dict[str, Any]:
    pts = [{"energy_ratio": r, "energy_ratio_ci95": [r - 0.01, r + 0.01], "per_inference_j": j, "fidelity": f,
            "quality": None, "n_params": 1000, "flops": 2000} for r, j, f in points]
    return {"model": model, "criterion": criterion, "criterion_label": criterion, "reached": True,
            "message": "FIXTURE", "points": pts, "final": pts[-1], "prune_result": {"provenance": "measured"}}


@pytest.fixture(scope="module")
def bench() -> dict[str, Any]:
    """FIXTURE: a hand-written energyprune.bench/1 with two models and three criteria."""
    return {
        "schema": "energyprune.bench/1",
        "device": {"torch_device": "cuda:0", "name": "FIXTURE GPU", "slug": "fixture-gpu"},
        "floor": {"j_per_flop": 1.1e-12, "pj_per_flop": 1.1, "provenance": "measured",
                  "best": {"dtype": "bfloat16", "size": 8192}, "points": [], "source": "FIXTURE"},
        "models": [{"name": "demo", "measurement": {"per_inference_j": 0.02, "ci95_j": [0.019, 0.021],
                                                    "provenance": "measured", "latency_s": {"median": 0.001}},
                    "flops": 2e9, "n_params": 3_800_000, "physics": {}}],
        "criteria_runs": [
            _bench_run("demo", "magnitude", [(0.9, 0.018, 0.95), (0.8, 0.016, 0.80), (0.7, 0.014, 0.60)]),
            _bench_run("demo", "cosine-block", [(0.85, 0.017, 0.97), (0.75, 0.015, 0.93), (0.72, 0.0144, 0.94)]),
            _bench_run("minilm", "random", [(0.9, 0.0045, 0.7), (0.8, 0.004, 0.5)]),
        ],
        "target": "-30%",
        "provenance": {"energy": "measured", "energy_note": "FIXTURE: every energy figure from counters",
                       "backends_used": ["nvml"], "date": "2025-01-01T00:00:00+00:00"},
        "assumptions": ["FIXTURE assumption"],
        "skipped": [{"what": "model smollm2", "reason": "FIXTURE: transformers missing"}],
        "a_new_field": {"nested": 1},
    }


@pytest.fixture(scope="module")
def advice() -> dict[str, Any]:
    from energyprune.levers import lever_named
    from energyprune.levers.advise import advise

    torch.manual_seed(0)
    levers = [lever_named("threads:1"), lever_named("sdpa:efficient")]  # measured where it applies; skipped
    return advise(nn.Linear(16, 16), torch.randn(4, 16), levers=levers, backend="estimated",
                  config=_config(), label="linear-16").to_dict()


def _all(measurement, comparison, scores, prune_result, bench, advice) -> dict[str, dict[str, Any]]:
    return {"measurement": measurement, "comparison": comparison, "scores": scores, "prune_result": prune_result,
            "bench": bench, "advice": advice}


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _external_links(html: str) -> list[str]:
    """Every src/href that points outside the file."""
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html, flags=re.I)
    return [link for link in links if not link.startswith(("data:", "#"))]


# ---- the Pareto front ----------------------------------------------------------------------------
def test_pareto_front_of_a_known_point_set():
    points = [(1.0, 0.5), (2.0, 0.9), (1.5, 0.4), (3.0, 0.95), (2.5, 0.8), (2.0, 0.9), (0.5, 0.1),
              (1.0, 0.45), (None, 1.0), (math.nan, 1.0), (4.0, 0.95), "junk"]
    assert pareto_front(points) == [(0.5, 0.1), (1.0, 0.5), (2.0, 0.9), (3.0, 0.95)]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5), (1.0, 0.6)]) == [(1.0, 0.6)]  # same energy: the better fidelity only


@needs_matplotlib
def test_pareto_plot_is_callable_by_others():
    from energyprune.reporting import pareto_plot

    png = pareto_plot({"a": [(1.0, 0.5), (2.0, 0.9)], "b": [(1.5, 0.7)], "empty": []}, reference=(3.0, 1.0))
    assert png.startswith(PNG) and len(png) > 5000


# ---- every schema, every format ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["md", "html", "csv"])
def test_every_schema_renders_in_every_format(fmt, measurement, comparison, scores, prune_result, bench, advice):
    fixtures = _all(measurement, comparison, scores, prune_result, bench, advice)
    assert {f["schema"] for f in fixtures.values()} == set(SCHEMAS)
    for name, result in fixtures.items():
        text = render(result, fmt)
        assert text.strip(), name
        if fmt == "html":
            assert _external_links(text) == [], name
            assert "<script" not in text.lower(), name


@needs_matplotlib
def test_every_figure_draws_a_png(measurement, comparison, scores, prune_result, bench, advice):
    counts = {}
    for name, result in _all(measurement, comparison, scores, prune_result, bench, advice).items():
        figures = document(result).figures()
        counts[name] = len(figures)
        for figure in figures:
            assert figure.draw().startswith(PNG), (name, figure.caption)
    # trace; windows + trace; scores and entropy; steps + final comparison + original trace; one Pareto per model
    assert counts == {"measurement": 1, "comparison": 2, "scores": 1, "prune_result": 3, "bench": 2, "advice": 1}


# ---- measurement ----------------------------------------------------------------------------------------
@needs_matplotlib
def test_measurement_html_is_self_contained_with_banner_and_plot(measurement):
    from energyprune.units import format_energy

    html = render(measurement, "html")
    assert html.startswith("<!DOCTYPE html>")
    banner = html.index('class="banner estimated"')
    assert banner < html.index("<h1>")  # provenance before any number
    assert "ESTIMATED: energy figures come from a power model" in html
    assert "estimated:cpu" in html and "backends: estimated" in html
    assert format_energy(measurement["per_inference_j"]) in html
    assert html.count('src="data:image/png;base64,') == 1
    assert _external_links(html) == []
    assert "Window positions are approximate" in html


def test_measurement_csv_has_one_row_per_window_with_units_and_provenance(measurement):
    rows = _csv(render(measurement, "csv"))
    assert len(rows) == measurement["n_windows"] == len(measurement["windows"])
    assert {"window_index", "duration_s", "per_inference_j", "energy_j", "provenance"} <= set(rows[0])
    assert {f"energy_j[{d['name']}]" for d in measurement["domains"]} <= set(rows[0])
    assert {r["provenance"] for r in rows} == {"estimated"}
    for row, window in zip(rows, measurement["windows"]):
        assert float(row["per_inference_j"]) == window["per_inference_j"]  # full precision
        assert int(row["n_inferences"]) == window["n_inferences"]


def test_measurement_markdown_reuses_the_report_and_lists_figures(measurement):
    md = render(measurement, "md")
    assert md.startswith("# energyprune measurement: nn.Linear(16, 16)")
    assert "(ESTIMATED)" in md
    assert "## Figures (in the HTML report)" in md
    assert "1 of them from ESTIMATED energy figures" in md
    assert "data:image" not in md


def test_a_result_without_a_trace_says_why(measurement):
    html = render(dict(measurement, power_trace=None), "html")
    assert "No power trace in this result" in html


# ---- comparison ------------------------------------------------------------------------------------------
def test_comparison_csv_rows_are_windows_in_time_order_with_ratios(comparison):
    rows = _csv(render(comparison, "csv"))
    assert len(rows) == len(comparison["a"]["windows"]) + len(comparison["b"]["windows"])
    assert [int(r["window_index"]) for r in rows] == sorted(int(r["window_index"]) for r in rows)
    assert [r["run"] for r in rows][:3] == ["A", "B", "A"]
    ratios = [float(r["ratio_b_over_a"]) for r in rows if r["run"] == "B" and r["ratio_b_over_a"]]
    assert ratios == comparison["ratios"]
    assert {r["provenance"] for r in rows} == {"estimated"}


def test_comparison_html_and_markdown_give_the_ratio(comparison):
    ratio = f"{comparison['ratio_b_over_a']:.4f}"
    assert ratio in render(comparison, "html")
    md = render(comparison, "md")
    assert ratio in md and "## Figures (in the HTML report)" in md


# ---- scores ----------------------------------------------------------------------------------------------------
def test_scores_csv_has_one_row_per_unit_and_inf_for_protected(scores):
    rows = _csv(render(scores, "csv"))
    assert len(rows) == len(scores["scores"])
    by_path = {r["path"]: r for r in rows}
    for unit in scores["scores"]:
        row = by_path[unit["path"]]
        expected = math.inf if unit["score"] is None else unit["score"]
        assert float(row["score"]) == expected
    delta = scores["entropy_profile"]["delta"]
    assert float(by_path["layers.2"]["entropy_delta_nats"]) == delta[2]
    assert {r["provenance"] for r in rows} == {"computed (no energy)"}


def test_scores_html_says_no_energy_and_shows_the_profile(scores):
    html = render(scores, "html")
    assert 'class="banner none"' in html and "No energy figure in this result" in html
    assert f"{scores['entropy_profile']['entropies'][0]:.6g}" in html
    md = render(scores, "md")
    assert "**No energy figure in this result**" in md and "| layers.2 | block |" in md


def test_thousands_of_units_still_plot(scores):
    many = dict(scores, scores=[{"kind": "neuron", "path": "mlp", "index": i, "score": (i % 97) / 97.0,
                                 "removal_rank": None} for i in range(3000)] + [
        {"kind": "neuron", "path": "mlp", "index": 3000, "score": None, "removal_rank": None}])
    if plots_available():
        assert document(many).figures()[0].draw().startswith(PNG)
    assert len(_csv(render(many, "csv"))) == 3001


# ---- prune result ----------------------------------------------------------------------------------------------
def test_prune_result_renders_steps_target_and_labels(prune_result):
    html = render(prune_result, "html")
    assert "FIXTURE rejected: fidelity fell below 0.6" in html
    assert "-30%" in html and "0.6800" in html
    assert "energy ratio (ESTIMATED) (95%)" in html
    assert "Final check: original (A) against pruned (B), interleaved" in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html
    assert "FIXTURE demo &lt;model&gt;" in html
    rows = _csv(render(prune_result, "csv"))
    assert len(rows) == len(prune_result["steps"])
    assert [r["accepted"] for r in rows] == ["true", "false", "true"]
    assert float(rows[2]["energy_ratio_ci95_high"]) == pytest.approx(0.70)
    assert {r["provenance"] for r in rows} == {"estimated"}
    md = render(prune_result, "md")
    assert "**Provenance: ESTIMATED**" in md and "ESTIMATED: figure 1, 2, 3." in md


def test_prune_target_line_is_the_target_over_the_original(prune_result):
    from energyprune.reporting.prune_doc import target_ratio

    assert target_ratio(prune_result) == pytest.approx(0.7)
    latency = dict(prune_result, target={"text": "2 ms", "kind": "latency_s", "value": 0.002, "target_j": None})
    assert target_ratio(latency) is None
    assert "no target line" not in render(latency, "md")  # a latency target gets its own panel
    if plots_available():
        assert document(latency).figures()[0].draw().startswith(PNG)


# ---- bench ----------------------------------------------------------------------------------------------------------
def test_bench_csv_has_one_row_per_point(bench):
    rows = _csv(render(bench, "csv"))
    assert len(rows) == sum(len(r["points"]) for r in bench["criteria_runs"]) == 8
    assert rows[0]["model"] == "demo" and float(rows[0]["per_inference_j"]) == 0.018
    assert {r["provenance"] for r in rows} == {"measured"}


def test_bench_pareto_series_per_model_and_unknown_fields_kept(bench):
    from energyprune.reporting.bench_doc import pareto_series

    series, key, dropped = pareto_series(bench, "demo")
    assert key == "per_inference_j" and dropped == 0
    assert pareto_front(series["magnitude"]) == [(0.014, 0.6), (0.016, 0.8), (0.018, 0.95)]
    assert pareto_front(series["cosine-block"]) == [(0.0144, 0.94), (0.017, 0.97)]  # (0.015, 0.93) dominated
    html = render(bench, "html")
    assert "Pareto front of the criteria" in html and "a_new_field.nested" in html
    assert "FIXTURE: transformers missing" in html
    assert 'class="banner measured"' in html


def test_a_bare_bench_renders_without_crashing():
    bare = {"schema": "energyprune.bench/1"}
    for fmt in ("md", "html", "csv"):
        assert render(bare, fmt)
    assert len(_csv(render(bare, "csv"))) == 0


# ---- without matplotlib ---------------------------------------------------------------------------------------------
def test_html_without_matplotlib_keeps_tables_and_says_how_to_get_plots(monkeypatch, prune_result):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    html = render(prune_result, "html")
    assert html.count(INSTALL_HINT.replace("'", "&#x27;")) == 3
    assert "<img" not in html
    assert "FIXTURE rejected: fidelity fell below 0.6" in html


# ---- bad input: one clear line ----------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "holds a JSON list"),
    ('{"per_inference_j": 1}', 'has no "schema" field'),
    ('{"schema": "energyprune.floor/1"}', "energyprune.measurement/1"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ResultFileError, match=re.escape(message)) as info:
        load_result(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_folder_are_clear(tmp_path):
    with pytest.raises(ResultFileError, match="no such file"):
        load_result(tmp_path / "nope.json")
    (tmp_path / "bench.json").write_text("{}")
    with pytest.raises(ResultFileError, match=r"is a folder.*bench\.json"):
        load_result(tmp_path)


def test_a_truncated_result_is_a_clear_error(measurement):
    broken = {k: v for k, v in measurement.items() if k != "windows"}
    with pytest.raises(ResultFileError, match="not a complete energyprune.measurement/1 result"):
        render(broken, "md")
    with pytest.raises(EnergyPruneError, match="unknown report format"):
        render(measurement, "pdf")


# ---- the command -------------------------------------------------------------------------------
def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="energyprune")
    add_report_parser(parser.add_subparsers(dest="command"))
    return run_report(parser.parse_args(argv))


def test_report_command_formats_out_and_force(tmp_path, measurement, capsys):
    source = tmp_path / "m.json"
    source.write_text(json.dumps(measurement))
    assert _run(["report", str(source)]) == 0
    assert capsys.readouterr().out.startswith("# energyprune measurement")  # md on stdout by default
    out = tmp_path / "m.csv"
    assert _run(["report", str(source), "--out", str(out)]) == 0  # format from the extension
    assert len(_csv(out.read_text())) == len(measurement["windows"])
    with pytest.raises(EnergyPruneError, match="already exists"):
        _run(["report", str(source), "--out", str(out)])
    out.write_text("old")
    assert _run(["report", str(source), "--out", str(out), "--force"]) == 0
    assert out.read_text() != "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.json"]  # no temporary file left
    html = tmp_path / "m.html"
    assert _run(["report", str(source), "--out", str(html)]) == 0
    assert html.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("extra, message", [
    (["--out", "r.md", "--format", "html"], "make them agree"),
    (["--out", "r.txt"], "name it .md, .html or .csv"),
    (["--out", "no/such/folder/r.md"], "does not exist"),
])
def test_report_command_refuses_bad_outputs(tmp_path, monkeypatch, measurement, extra, message):
    monkeypatch.chdir(tmp_path)
    Path("m.json").write_text(json.dumps(measurement))
    with pytest.raises(EnergyPruneError, match=message):
        _run(["report", "m.json", *extra])


def test_cli_exit_code_2_without_traceback(tmp_path, capsys):
    from energyprune.cli.main import build_parser

    try:
        build_parser().parse_args(["report", "x.json"])
    except SystemExit:
        pytest.skip("energyprune.cli.main does not wire `report` yet")
    from energyprune.cli.main import main

    assert main(["report", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err and err.count("\n") == 1
