"""The command line: exit codes, one-line errors, and the JSON contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from energyprune.cli.main import main

QUICK = ["--duration", "0.1", "--repeats", "2", "--precision", "0", "--idle", "0.1"]

REQUIRED_KEYS = {
    "per_inference_j", "per_inference_dynamic_j", "ci95_j", "provenance", "backends", "latency_s",
    "n_inferences", "duration_s", "batch_size", "idle_power_w", "device", "domains",
}


def write_trace(path: Path, power_w: float = 100.0, seconds: float = 60.0, step_s: float = 0.001) -> Path:
    rows = ["t_s,cpu_energy_j"]
    n = int(seconds / step_s)
    rows += [f"{i * step_s:.6f},{power_w * i * step_s:.9f}" for i in range(n + 1)]
    path.write_text("\n".join(rows) + "\n")
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_measure_demo_json_has_the_contract_keys(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace.csv")
    code, out, err = run_cli(["measure", "--backend", f"replay:{trace}", "--json", *QUICK], capsys)
    assert code == 0, err
    data = json.loads(out)  # stdout holds the JSON alone
    assert REQUIRED_KEYS <= set(data)
    assert data["provenance"] == "measured" and data["backends"] == ["replay"]
    assert data["batch_size"] == 1 and data["n_inferences"] >= 2
    # A constant 100 W trace: J per inference is 100 W times the latency of one call.
    assert data["per_inference_j"] == pytest.approx(100.0 * data["latency_s"]["median"], rel=0.05)
    assert data["idle_power_w"] == pytest.approx(100.0, rel=0.02)
    assert abs(data["per_inference_dynamic_j"]) < 0.05 * data["per_inference_j"]
    assert data["domains"][0]["name"] == "replay:cpu"
    low, high = data["ci95_j"]
    assert low <= high


def test_measure_estimated_is_labelled_everywhere(tmp_path, capsys):
    out_md = tmp_path / "r.md"
    code, out, err = run_cli(["measure", "--backend", "estimated", *QUICK, "--out", str(out_md)], capsys)
    assert code == 0, err
    assert "ESTIMATED" in out
    assert "ESTIMATED" in out_md.read_text()
    assert "assumptions" in out.lower()


def test_out_json_is_written_and_never_silently_replaced(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace.csv")
    target = tmp_path / "result.json"
    code, _, err = run_cli(["measure", "--backend", f"replay:{trace}", *QUICK, "--out", str(target)], capsys)
    assert code == 0, err
    first = json.loads(target.read_text())
    assert first["schema"] == "energyprune.measurement/1"
    code, _, err = run_cli(["measure", "--backend", f"replay:{trace}", *QUICK, "--out", str(target)], capsys)
    assert code == 2 and "--force" in err
    assert json.loads(target.read_text()) == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["measure", "no/such/model"], "no model at"),
        (["measure", "--backend", "bogus"], "unknown backend"),
        (["measure", "--backend", "rapl"], "unavailable"),
        (["measure", "--backend", "replay:/no/such/trace.csv"], "replay"),
        (["measure", "--input-shape", "7,7"], "rejected inputs of shape"),
        (["measure", "os:getcwd"], "not a torch.nn.Module"),
        (["measure", "no_such_module_xyz:factory"], "could not import"),
        (["measure", "--out", "result.txt"], ".json or .md"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ENERGYPRUNE_POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    code, out, err = run_cli(args + QUICK, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert out == ""


@pytest.mark.parametrize("flag", ["--duration", "--max-duration"])
def test_zero_duration_is_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["measure", flag, "0"])
    assert exit_info.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_malformed_replay_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,cpu_energy_j\n0,0\n0.5,abc\n")
    code, _, err = run_cli(["measure", "--backend", f"replay:{bad}", *QUICK], capsys)
    assert code == 2 and "replay" in err and "Traceback" not in err


def test_replay_trace_too_short_is_a_clear_error(tmp_path, capsys):
    trace = write_trace(tmp_path / "short.csv", seconds=0.3)
    code, _, err = run_cli(["measure", "--backend", f"replay:{trace}", *QUICK], capsys)
    assert code == 2 and "ends at" in err


def test_factory_model_with_input_shape(tmp_path, capsys, monkeypatch):
    (tmp_path / "tiny_model.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))\n"
    )
    trace = write_trace(tmp_path / "trace.csv")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["measure", "tiny_model:build", "--batch-size", "8", "--backend",
                              f"replay:{trace}", "--json", *QUICK], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["batch_size"] == 8 and data["inputs"] == "8x16"
    assert data["per_sample_j"] == pytest.approx(data["per_inference_j"] / 8)


def test_compare_reports_a_ratio(tmp_path, capsys, monkeypatch):
    (tmp_path / "pair.py").write_text(
        "import torch\n"
        "def small():\n    return torch.nn.Linear(64, 64)\n"
        "def large():\n    return torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(8)])\n"
    )
    monkeypatch.chdir(tmp_path)
    trace = write_trace(tmp_path / "trace.csv")
    code, out, err = run_cli(["compare", "pair:small", "pair:large", "--backend", f"replay:{trace}",
                              "--json", *QUICK], capsys)
    assert code == 0, err
    data = json.loads(out)
    # Under constant power the energy ratio is the latency ratio: eight layers cost more than one.
    assert data["ratio_b_over_a"] > 1.5
    assert len(data["ratios"]) >= 2


def test_backends_lists_every_backend_with_reason(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ENERGYPRUNE_POWERCAP_ROOT", str(tmp_path / "absent"))
    code, out, _ = run_cli(["backends", "--json"], capsys)
    assert code == 0
    entries = {b["name"]: b for b in json.loads(out)["backends"]}
    assert set(entries) == {"nvml", "rapl", "estimated"}
    assert entries["rapl"]["ok"] is False and entries["rapl"]["reason"] and entries["rapl"]["fix"]
    assert entries["estimated"]["ok"] is True


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "energyprune", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "energyprune" in result.stdout


def test_score_prints_scores_and_the_entropy_profile(capsys):
    code, out, err = run_cli(["score", "--criterion", "cosine-block", "--json", "--calibration-batches", "2",
                              "--batch-size", "2", "--seq-len", "16"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["unit_kind"] == "block" and len(data["scores"]) == 4
    ranks = sorted(r["removal_rank"] for r in data["scores"] if r["removal_rank"] is not None)
    assert ranks == list(range(1, len(ranks) + 1))
    profile = data["entropy_profile"]
    assert len(profile["entropies"]) == 5 and len(profile["delta"]) == 4
    assert profile["delta"][0] == pytest.approx(profile["entropies"][1] - profile["entropies"][0])


def test_score_stage_all_makes_unprotected_blocks_candidates(capsys):
    code, out, err = run_cli(["score", "--stage", "all", "--json", "--calibration-batches", "2",
                              "--batch-size", "2", "--seq-len", "16"], capsys)
    assert code == 0, err
    scores = {r["index"]: r["score"] for r in json.loads(out)["scores"]}
    assert scores[0] is None and scores[1] is None and scores[3] is None  # protected by default
    assert scores[2] is not None


def test_score_unknown_criterion_lists_the_known_ones(capsys):
    code, _, err = run_cli(["score", "--criterion", "bogus"], capsys)
    assert code == 2 and "cosine-block" in err and "Traceback" not in err


def test_reports_are_written_with_ordinary_permissions(tmp_path):
    import os
    import stat

    from energyprune.files import write_atomic

    target = tmp_path / "r.json"
    write_atomic(target, "{}\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_join_dash_values_keeps_a_negative_target_a_value():
    from energyprune.cli.options import join_dash_values

    assert join_dash_values(["prune", "--target", "-30%", "--out", "d"]) == ["prune", "--target=-30%", "--out", "d"]
    assert join_dash_values(["--target", "-.5"]) == ["--target=-.5"]
    assert join_dash_values(["--target", "0.7x"]) == ["--target", "0.7x"]  # nothing to join
    assert join_dash_values(["--target", "--force"]) == ["--target", "--force"]  # an option stays an option
    assert join_dash_values(["--target"]) == ["--target"]


def test_measure_takes_lockstep_for_torchrun():
    from energyprune.cli.main import build_parser

    assert build_parser().parse_args(["measure", "--lockstep"]).lockstep is True
    assert build_parser().parse_args(["measure"]).lockstep is False
