"""`prune --levers` and `advise` from the command line: the levers found worth it are applied before
pruning, saved as names in the pruned folder, and re-applied (from the registry) when it is loaded."""

from __future__ import annotations

import json

import pytest
import torch

import energyprune.budget
from energyprune.cli.main import main
from energyprune.levers.builtin import _Around
from energyprune.models import load_model
from tests.budget.scripted import FlopsJudge

DEMO = ["--seq-len", "8", "--backend", "estimated"]
QUICK = ["--duration", "0.05", "--repeats", "3", "--precision", "0", "--idle", "0.05"]
needs_threads = pytest.mark.skipif(torch.get_num_threads() < 2, reason="threads:1 is the setting already")


class WrapperHalvesJudge(FlopsJudge):
    """Energy per parameter, halved for a model run inside a context lever (threads)."""

    def _measurement(self, model, inputs):
        m = super()._measurement(model, inputs)
        scale = 0.5 if isinstance(model, _Around) else 1.0
        return type(m)(m.per_inference_j * scale, m.latency_s, m.mean_power_w,
                        (m.ci95_j[0] * scale, m.ci95_j[1] * scale))


@pytest.fixture
def halving_judge(monkeypatch):
    monkeypatch.setattr(energyprune.budget, "MeterJudge", lambda *a, **k: WrapperHalvesJudge(by="params"))


@needs_threads
def test_levers_reach_the_target_alone_and_travel_with_the_folder(tmp_path, halving_judge, capsys):
    out = tmp_path / "levered"
    code = main(["prune", "--target", "-30%", "--criterion", "magnitude", "--levers", "threads:1", "--out", str(out),
                 *DEMO])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "result.json").read_text())
    assert result["levers"]["applied"] == ["threads:1"] and result["steps"] == []
    assert result["energy_ratio_from_levers"] == pytest.approx(0.5)
    assert "levers    threads:1: energy ratio 0.5000" in captured.out
    assert json.loads((out / "pruned.json").read_text())["levers"] == ["threads:1"]
    assert load_model(str(out)).levers == ("threads:1",)
    code = main(["measure", str(out), *DEMO, *QUICK])
    captured = capsys.readouterr()
    assert code == 0 and "running with the folder's levers: threads:1" in captured.err


def test_a_folder_naming_an_unknown_lever_is_one_clear_line(tmp_path, halving_judge, capsys):
    out = tmp_path / "levered"
    assert main(["prune", "--target", "-30%", "--criterion", "magnitude", "--levers", "none", "--out", str(out),
                 *DEMO]) in (0, 4)
    meta = json.loads((out / "pruned.json").read_text())
    meta["levers"] = ["import os"]
    (out / "pruned.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["measure", str(out), *DEMO, *QUICK]) == 2
    err = capsys.readouterr().err
    assert "lever 'import os', which is not built in" in err and "Traceback" not in err
    meta["levers"] = "compile"
    (out / "pruned.json").write_text(json.dumps(meta))
    assert main(["measure", str(out), *DEMO, *QUICK]) == 2
    assert "'levers' must be a list of lever names" in capsys.readouterr().err


def test_typos_in_levers_cost_nothing(tmp_path, capsys):
    assert main(["prune", "--target", "-30%", "--criterion", "magnitude", "--levers", "compile,turbo",
                 "--out", str(tmp_path / "x"), *DEMO]) == 2
    assert "unknown lever 'turbo'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["advise", "--levers", "threads:x", *DEMO]) == 2
    assert "threads:N needs a whole number" in capsys.readouterr().err


@needs_threads
def test_advise_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "advice.json"
    code = main(["advise", "--levers", "threads:1,sdpa:flash,batch:4", "--out", str(out), *DEMO, *QUICK])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(out.read_text())
    by = {r["name"]: r for r in data["levers"]}
    assert by["threads:1"]["status"] == "measured" and by["threads:1"]["fidelity"]["fidelity"] > 0.999
    assert by["sdpa:flash"]["status"] == "skipped" and "never calls" in by["sdpa:flash"]["reason"]
    assert by["batch:4"]["status"] == "measured" and by["batch:4"]["batch_size"] == 4
    assert data["baseline"]["anatomy"]["idle_share"] >= 0
    assert "ESTIMATED" in captured.out and "skipped:" in captured.out and "sdpa:flash" in captured.out


def test_measure_batch_sizes_shows_joules_per_sample_at_each(capsys):
    code = main(["measure", "--batch-sizes", "1,4", "--json", *DEMO, *QUICK])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    rows = data["batch_sweep"]
    assert [r["batch_size"] for r in rows] == [1, 4] and data["batch_size"] == 1
    for r in rows:
        assert r["per_sample_j"] == pytest.approx(r["per_inference_j"] / r["batch_size"])
        assert r["ci95_per_sample_j"][0] <= r["per_sample_j"] <= r["ci95_per_sample_j"][1]
    from energyprune.reporting.text import render_text

    assert "energy per sample by batch size" in render_text(data)
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error
        main(["measure", "--batch-sizes", "1,0", *DEMO])
    assert exit_.value.code == 2 and "give whole numbers of at least 1" in capsys.readouterr().err
